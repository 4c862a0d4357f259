"""A bucket that refuses the credentials (moto's S3 server with IAM checks on, wrong keys) is reported as access
denied, naming the bucket and the credentials, never as missing shards with advice to drop them."""

from __future__ import annotations

import pytest

import tools.make_shards as make_shards
from benchmarks.local_servers import s3_server
from data.config import DataConfig
from data.loader import build_train_loader
from data.remote import AccessDenied
from tests.data_fixtures import shards_in_s3, write_shards

pytestmark = pytest.mark.slow


def test_wrong_credentials_name_the_bucket_and_the_credentials(tmp_path, monkeypatch) -> None:
    import s3fs

    write_shards(str(tmp_path / "local"), [6, 5])
    with s3_server() as endpoint:
        shards_in_s3(monkeypatch, endpoint, str(tmp_path / "local"), "lab-bucket")
        make_shards.main(["manifest", "--shards", "s3://lab-bucket/data", "--out", "s3://lab-bucket/index"])
        # From now on the server checks every request's credentials; "testing" is no key it knows.
        from moto import settings  # the server runs in this process (a thread)
        from moto.core.authorization import ActionAuthenticatorMixin

        monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
        s3fs.S3FileSystem.clear_instance_cache()
        for path in ("s3://lab-bucket/data", "s3://lab-bucket/data/{0000..0001}-00.tar"):
            index = {"index": "s3://lab-bucket/index"}
            c = DataConfig(path=path, webdataset=index, batch_size=2, workers=0, image_size=8)
            with pytest.raises(AccessDenied) as err:
                build_train_loader(c, 0, 1)
            message = str(err.value)
            assert message.startswith("access denied to s3://lab-bucket/") and "bucket 'lab-bucket'" in message
            assert "AWS_ACCESS_KEY_ID" in message and "\n" not in message
            assert "allow_missing" not in message and "do not exist" not in message
        s3fs.S3FileSystem.clear_instance_cache()
