"""Files follow the umask: safetensors writes its files 0600 whatever the umask, so a lab's shared folder would hold
exports colleagues cannot read. `follow_umask` gives the files a writer made the mode a plain `open()` gives."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it (Linux's /proc), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(*paths: Path) -> None:
    """Give each file (and each file below each folder) mode 0666 & ~umask, as a newly created file gets."""
    mode = 0o666 & ~current_umask()
    for path in paths:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in files:
            os.chmod(file, mode)
