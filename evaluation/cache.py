"""Results cached per (model, task): an interrupted suite resumes where it stopped, a finished one is not repeated.

The key hashes the model's identity (a checkpoint's meta.json, which records every file's size and CRC; an
export's files), the task's definition, the class names and prompts it renders, its data's file sizes, the
precision and clip_benchmark's version. One JSON file per entry, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from evaluation.report import write_json


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastflip" / "eval"


def cache_key(model_identity: str, definition: dict[str, Any]) -> str:
    text = json.dumps({"model": model_identity, "task": definition}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ResultCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, model_identity: str, task_name: str, key: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", task_name)
        return self.root / model_identity[:16] / f"{slug}.{key[:16]}.json"

    def get(self, model_identity: str, task_name: str, key: str) -> dict[str, Any] | None:
        path = self._path(model_identity, task_name, key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except ValueError:  # never a torn file (written by rename), but a damaged one is recomputed, not trusted
            return None
        return entry["result"] if entry.get("key") == key else None

    def put(self, model_identity: str, task_name: str, key: str, result: dict[str, Any]) -> None:
        write_json({"key": key, "result": result}, self._path(model_identity, task_name, key))
