"""Which remote errors are retried (data/retry.py): an unreachable server is, a missing file or a refusal is not;
past data.remote_retry_s the read ends in DataUnavailable naming what was read."""

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

    with pytest.raises(DataUnavailable, match=r"http://h/0.tar unreachable for 0 s \(data.remote_retry_s=0.2\)"):
        retrying(down, "http://h/0.tar", retry_s=0.2)
    calls = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("http://h/9.tar")

    with pytest.raises(FileNotFoundError):
        retrying(missing, "http://h/9.tar", retry_s=60)
    assert calls == [1]
