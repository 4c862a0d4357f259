"""Which remote errors are retried (data/retry.py): an unreachable server is, a missing file or a refusal is not;
past data.webdataset.remote_retry_s the read ends in DataUnavailable naming what was read."""

from __future__ import annotations

import logging

import pytest

from data.retry import DataUnavailable, is_transient, retrying


def _raised(err: BaseException, cause: BaseException | None = None) -> BaseException:
    try:
        raise err from cause
    except BaseException as caught:  # noqa: BLE001 - builds a chained exception as fsspec raises it
        return caught


class ClientError(Exception):  # botocore's S3 error class, as s3fs chains it under FileNotFoundError (NoSuchKey)
    __module__ = "botocore.exceptions"


def test_only_transient_errors_are_retried() -> None:
    assert is_transient(ConnectionRefusedError("refused")) and is_transient(TimeoutError())
    assert is_transient(_raised(FileNotFoundError("http://h/0.tar"), ConnectionRefusedError("refused")))  # fsspec
    assert not is_transient(_raised(FileNotFoundError("s3://b/0.tar"), ClientError("NoSuchKey")))
    assert not is_transient(FileNotFoundError("gone")) and not is_transient(PermissionError("403"))


def test_a_transient_failure_is_retried_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionResetError("reset by peer")
        return "bytes"

    with caplog.at_level(logging.WARNING, logger="data.retry"):
        assert retrying(flaky, "http://h/0.tar", retry_s=60) == "bytes"
    assert len(calls) == 2
    assert "reading http://h/0.tar failed (ConnectionResetError: reset by peer); retry 1" in caplog.text


def test_past_the_bound_the_read_is_data_unavailable_and_missing_files_are_not_retried() -> None:
    def down() -> None:
        raise ConnectionRefusedError("refused")

    unreachable = r"http://h/0.tar unreachable for 0 s \(data.webdataset.remote_retry_s=0.2\)"
    with pytest.raises(DataUnavailable, match=unreachable):
        retrying(down, "http://h/0.tar", retry_s=0.2)
    calls = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("http://h/9.tar")

    with pytest.raises(FileNotFoundError):
        retrying(missing, "http://h/9.tar", retry_s=60)
    assert calls == [1]


def test_the_transient_errors_are_an_allow_list() -> None:
    """Only connection failures, timeouts and 5xx answers are retried: a full or read-only disk, missing
    credentials or a 403 fail at once (retrying them for data.webdataset.remote_retry_s would only hide the fault)."""
    import errno

    import aiohttp
    from botocore import exceptions as boto

    transient = [
        OSError(errno.ECONNRESET, "reset"),
        OSError(errno.EHOSTUNREACH, "no route"),
        OSError(errno.EPIPE, "pipe"),
        boto.EndpointConnectionError(endpoint_url="https://s3"),
        boto.ConnectTimeoutError(endpoint_url="https://s3"),
        boto.ReadTimeoutError(endpoint_url="https://s3"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientResponseError(None, (), status=503),
        boto.ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject"),
    ]
    lasting = [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EROFS, "Read-only file system"),
        OSError("something else"),
        boto.NoCredentialsError(),
        boto.PartialCredentialsError(provider="env", cred_var="x"),
        aiohttp.ClientResponseError(None, (), status=404),
        boto.ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject"),
    ]
    assert [e for e in transient if not is_transient(e)] == []
    assert [e for e in lasting if is_transient(e)] == []


@pytest.mark.parametrize("name", ["NoCredentialsError", "PartialCredentialsError"])
def test_missing_credentials_are_access_denied_at_once(name: str) -> None:
    from botocore import exceptions as boto

    from data.remote import AccessDenied

    calls = []

    def read() -> bytes:
        calls.append(1)
        raise getattr(boto, name)(provider="env", cred_var="AWS_SECRET_ACCESS_KEY")

    with pytest.raises(AccessDenied, match=r"access denied to s3://bucket/0\.tar .*credentials"):
        retrying(read, "s3://bucket/0.tar", 60.0)
    assert calls == [1]


def test_remote_retries_must_end_before_the_step_timeout(tmp_path) -> None:  # noqa: ANN001
    """Otherwise the other ranks' collectives time out first: "hung rank", never requeued."""
    from tests.tiny_run import tiny_config

    cfg = tiny_config(str(tmp_path), "ddp")
    cfg.data.path = "https://shards.example.org/{0000..0009}.tar"
    cfg.validate()  # the defaults fit: 300 s + the margin < 600 s
    cfg.backend.step_timeout_s = 300.0
    with pytest.raises(
        ValueError,
        match=r"data.webdataset.remote_retry_s \(300 s\) \+ 60 s must stay below "
        r"backend.step_timeout_s \(300 s\)",
    ):
        cfg.validate()
    cfg.data.path = str(tmp_path)  # local shards never retry
    cfg.validate()
