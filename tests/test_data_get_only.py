"""A bucket policy that grants GetObject but not ListBucket: the directory listing is refused, so sizes come from
one request per file (data/remote.py `sizes`); only a refusal of a file itself is access denied."""

from __future__ import annotations

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from data.remote import AccessDenied, sizes


class GetOnlyFS(MemoryFileSystem):
    """In-memory store whose listings are refused (403), as under a GetObject-only policy."""

    protocol = "getonly"

    @classmethod
    def _strip_protocol(cls, path: str) -> str:  # the memory store's paths, whatever the protocol
        return MemoryFileSystem._strip_protocol(path.split("://", 1)[-1])

    def ls(self, path, detail=True, **kwargs):  # noqa: ANN001, ANN201 - fsspec's signature
        raise PermissionError(f"ListBucket denied on {path}")


class NoReadFS(GetOnlyFS):
    """A store that refuses the files too."""

    protocol = "noread"

    def info(self, path, **kwargs):  # noqa: ANN001, ANN201 - fsspec's signature
        raise PermissionError(f"GetObject denied on {path}")


@pytest.fixture(autouse=True)
def _stores() -> None:
    fsspec.register_implementation("getonly", GetOnlyFS, clobber=True)
    fsspec.register_implementation("noread", NoReadFS, clobber=True)
    with fsspec.open("memory://bucket/data/0000.tar", "wb") as file:
        file.write(b"x" * 1234)


def test_a_refused_listing_falls_back_to_one_request_per_file() -> None:
    urls = ["getonly://bucket/data/0000.tar", "getonly://bucket/data/0001.tar"]
    assert sizes(urls) == {urls[0]: 1234, urls[1]: None}


def test_a_refused_file_is_access_denied() -> None:
    with pytest.raises(AccessDenied, match=r"access denied to noread://bucket/data/0000\.tar "):
        sizes(["noread://bucket/data/0000.tar"])
