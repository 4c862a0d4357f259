"""The Hugging Face datasets DataComp's download keeps in `<data root>/hf_cache` (Flickr, MSCOCO, WinoGAViL), read
with pyarrow: no `datasets` loading script runs and nothing is fetched.

`datasets` caches a split as Arrow stream files, `hf_cache/<owner>___<name>/<config>/<version>/<hash>/
<name>-test.arrow` (or `<name>-test-00000-of-0000N.arrow` when sharded). An Image column holds structs of `bytes`
and `path`: the encoded image, or a file (absolute, as `datasets` wrote it; a relative one resolves against the
Arrow file's folder). Files are memory-mapped; image bytes are read per sample.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

PATTERNS = ("*-test.arrow", "*-test-*-of-*.arrow")


def hf_folder(repo: str) -> str:
    """A dataset's folder under the data root, as `load_dataset(repo, cache_dir=<root>/hf_cache)` names it."""
    return "hf_cache/" + repo.replace("/", "___")


def arrow_files(path: Path) -> list[Path]:
    """The test split's Arrow files under a dataset's folder (empty: the task is missing)."""
    if not path.is_dir():
        return []
    return sorted({f for pattern in PATTERNS for f in path.rglob(pattern)})


class ArrowSplit:
    """The test split's rows (these columns only), memory-mapped."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        import pyarrow as pa

        files = arrow_files(path)
        folders = sorted({str(f.parent) for f in files})
        if len(folders) != 1:
            raise ValueError(
                f"{path}: the test split must be cached in one folder, found {len(folders)} "
                f"({folders}); `datasets` keeps one per download: remove the stale ones"
            )
        tables = []
        for file in files:
            table = pa.ipc.open_stream(pa.memory_map(str(file))).read_all()
            missing = [c for c in columns if c not in table.column_names]
            if missing:
                raise ValueError(f"{file}: needs columns {columns}; missing {missing} (has {table.column_names})")
            tables.append(table.select(list(columns)))
        self.table = pa.concat_tables(tables)
        self.root = files[0].parent
        if not len(self.table):
            raise ValueError(f"{path}: the test split has no rows")

    def __len__(self) -> int:
        return len(self.table)

    def values(self, column: str) -> list[Any]:
        """A whole (small) column as Python values."""
        return self.table.column(column).to_pylist()

    def image(self, column: str, row: int, index: int | None = None) -> Image.Image:
        """The image at `row` (the `index`-th of a list of images when given), loaded into memory."""
        cell = self.table.column(column)[row]
        stored = (cell.values[index] if index is not None else cell).as_py()
        if stored.get("bytes"):
            with Image.open(io.BytesIO(stored["bytes"])) as img:
                img.load()
                return img
        path = Path(stored.get("path") or "")
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.root}: image {stored.get('path')!r} has no bytes and no file at {path}; "
                "download the dataset again into this hf_cache"
            )
        with Image.open(path) as img:
            img.load()
            return img
