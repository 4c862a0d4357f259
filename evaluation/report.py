"""Results of an evaluation run as a text table, flat scalars (for TensorBoard) and a JSON file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

Results = Mapping[str, object]


def flatten_results(results: Results, prefix: str = "") -> dict[str, float | int]:
    """Nested {task: {metric: value}} -> {"task/metric": value}, the shape scalar loggers want."""
    flat: dict[str, float | int] = {}
    for key, value in results.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_results(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = value
        else:
            raise TypeError(f"result {name!r} is {type(value).__name__}, expected a number or a mapping")
    return flat


def format_table(results: Results) -> str:
    """A fixed-width task | metric | value table; floats are fractions shown as percentages, ints as counts."""
    rows = [("task", "metric", "value")]
    for name, value in flatten_results(results).items():
        task, _, metric = name.rpartition("/")
        shown = f"{100 * value:.2f}%" if isinstance(value, float) else str(value)
        rows.append((task or "-", metric, shown))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{task:<{widths[0]}}  {metric:<{widths[1]}}  {value:>{widths[2]}}" for task, metric, value in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_json(results: Results, path: str | os.PathLike[str]) -> Path:
    """Write results as indented JSON atomically (temp file + rename), so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)
    return path
