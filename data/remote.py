"""Local paths and fsspec URLs (s3://, gs://, https://, ...) behind one small set of helpers.

Credentials come from the usual fsspec / boto / gcloud environment (AWS_* variables, ~/.aws,
FSSPEC_* settings); nothing here takes or stores a secret.
"""

from __future__ import annotations

import glob
import os
import posixpath

import braceexpand
import fsspec

from data.retry import AccessDenied as AccessDenied  # re-exported: where callers catch it
from data.retry import access_denied, unreachable

BIG_BLOCK = 64 * 2**20  # remote reads are made of ranges this large (never one request per sample)


def is_remote(url: str) -> bool:
    url = str(url)
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def normalize(url: str) -> str:
    """One spelling per location: absolute local paths, URLs without a trailing slash."""
    url = str(url)
    return url.rstrip("/") if is_remote(url) else os.path.abspath(local_path(url))


def join(base: str, name: str) -> str:
    return posixpath.join(base, name) if is_remote(base) else os.path.join(local_path(base), name)


def dirname(url: str) -> str:
    return posixpath.dirname(url) if is_remote(url) else os.path.dirname(os.path.abspath(local_path(url)))


def basename(url: str) -> str:
    return posixpath.basename(url.rstrip("/"))


def filesystem(url: str):
    """(fsspec filesystem, path within it) of a URL or local path."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def isdir(url: str) -> bool:
    if "::" in url or "{" in url:
        return False
    if not is_remote(url):
        return os.path.isdir(local_path(url))
    if url.endswith(".tar") or url.endswith(".json"):
        return False
    fs, path = filesystem(url)
    try:
        return fs.isdir(path)
    except Exception:  # e.g. an HTTP server without directory listings: treat as a directory URL
        return True


def read_bytes(url: str) -> bytes:
    try:
        with fsspec.open(url, "rb") as f:
            return f.read()
    except PermissionError as err:
        raise access_denied(url, err) from None


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file (local: atomically through a temporary name)."""
    if is_remote(url):
        with fsspec.open(url, "wb") as f:
            f.write(data)
        return
    path = local_path(url)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def expand(pattern: str) -> list[str]:
    """Brace pattern (and glob), several joined by "::" as in OpenCLIP -> the named paths in order, existing or not."""
    out: list[str] = []
    parts = [p for piece in pattern.split("::") for p in braceexpand.braceexpand(piece)]
    for part in parts:
        if not is_remote(part) and glob.has_magic(part):
            out += sorted(glob.glob(local_path(part)))
        elif is_remote(part) and glob.has_magic(part):
            fs, path = filesystem(part)
            protocol = part.split("://", 1)[0]
            out += sorted(p if "://" in p else f"{protocol}://{p}" for p in fs.glob(path))
        else:
            out.append(part)
    return list(dict.fromkeys(out))


def list_tars(directory: str) -> list[str]:
    """The .tar files directly in a directory (local or remote), sorted."""
    if not is_remote(directory):
        d = local_path(directory)
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".tar"))
    fs, path = filesystem(directory)
    protocol = directory.split("://", 1)[0]
    names = [p for p in fs.ls(path, detail=False) if p.endswith(".tar")]
    return sorted(p if "://" in p else f"{protocol}://{p}" for p in names)


def sizes(urls: list[str]) -> dict[str, int | None]:
    """url -> size in bytes, None where the file does not exist. Remote: one listing per directory
    where the store lists (s3, gs, local-style HTTP indexes), else one HEAD request per file."""
    out: dict[str, int | None] = {}
    by_dir: dict[str, list[str]] = {}
    for url in urls:
        if is_remote(url):
            by_dir.setdefault(dirname(url), []).append(url)
        else:
            path = local_path(url)
            out[url] = os.path.getsize(path) if os.path.isfile(path) else None
    for directory, members in by_dir.items():
        fs, path = filesystem(directory)
        try:
            listing = {basename(e["name"]): e.get("size") for e in fs.ls(path, detail=True)}
        except Exception:  # a store without listings (plain HTTP), or a policy that grants GetObject but not
            # ListBucket (a PermissionError here): ask for each file below, where a refusal is AccessDenied
            listing = None
        for url in members:
            if listing is not None and listing.get(basename(url)) is not None:
                out[url] = int(listing[basename(url)])
                continue
            try:
                out[url] = int(fs.info(filesystem(url)[1])["size"])
            except PermissionError as err:
                raise access_denied(url, err) from None
            except FileNotFoundError as err:
                if unreachable(err):
                    raise  # fsspec's HTTP names an unreachable server so: data/retry.py retries it
                out[url] = None
            except (KeyError, TypeError):
                out[url] = None
    return out
