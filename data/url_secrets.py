"""Secrets never ride in a URL the project accepts: a config value or tool argument with `user:password@`, a
token or a signed query string is refused, naming the key, because configs are saved with every run
(config.yaml, each checkpoint's meta.json, trackers). Credentials come from the environment instead (AWS_*,
~/.aws, gcloud, FSSPEC_* settings). Torch-free."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# Query keys that carry a secret or a signature: tokens, API keys, S3/GCS/Azure signed-URL fields.
SECRET_QUERY_KEYS = re.compile(
    r"^(.*token.*|.*secret.*|.*password.*|passwd|pwd|.*api[_-]?key.*|key|apikey|sig|signature|"
    r"x-amz-(signature|credential|security-token)|x-goog-(signature|credential)|awsaccesskeyid)$",
    re.IGNORECASE,
)


def url_secret(value: str) -> str | None:
    """What secret `value` carries in a URL ("user:password@", "query key 'token'"), or None. Every URL in it is
    checked: "::"-joined patterns, chained fsspec URLs."""
    for piece in value.split("::"):
        if "://" not in piece:
            continue
        parts = urlsplit(piece.strip())
        if "@" in parts.netloc:
            return "credentials (user[:password]@) in the host part"
        for key, _ in parse_qsl(parts.query, keep_blank_values=True):
            if SECRET_QUERY_KEYS.match(key):
                return f"a secret or signature in its query string ({key}=...)"
    return None


def refuse_url_secrets(values: dict[str, Any]) -> None:
    """ValueError naming the first key (dotted path into `values`) whose value carries a secret in a URL."""
    for key, value in _strings(values, ""):
        problem = url_secret(value)
        if problem is not None:
            scheme = value.split("://")[0].rsplit("::", 1)[-1]
            raise ValueError(
                f"{key} carries {problem} ({scheme}://...); it would be saved in configs, "
                "checkpoints and indexes. Give credentials through the environment instead (AWS_*, "
                "~/.aws, gcloud, FSSPEC_* settings)"
            )


def refuse_argument_secrets(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A tool's `parser.error` naming the first argument (as typed: --flag) whose URL carries a secret."""
    try:
        refuse_url_secrets({"--" + name.replace("_", "-"): value for name, value in vars(args).items()})
    except ValueError as err:
        parser.error(str(err))


def _strings(value: Any, key: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _strings(v, f"{key}[{i}]")
