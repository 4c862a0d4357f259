"""A malformed img2dataset `X_stats.json` never aborts indexing: it is named in a warning and its shard's holes are
left out of the report (data/index_report.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from data.index_report import download_holes


def test_a_malformed_stats_file_is_warned_about_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stats = {
        "0000": "{not json",
        "0001": json.dumps({"count": 10, "successes": 7, "status_dict": {"success": 7, "timeout": 3}}),
        "0002": json.dumps({"count": "many"}),
        "0003": json.dumps([1, 2]),
        "0004": json.dumps({"count": 3, "successes": 1, "status_dict": ["timeout"]}),
    }
    for name, text in stats.items():
        (tmp_path / f"{name}.tar").write_bytes(b"")
        (tmp_path / f"{name}_stats.json").write_text(text)
    with caplog.at_level(logging.WARNING, logger="data.index_report"):
        holes = download_holes(sorted(str(p) for p in tmp_path.glob("*.tar")))
    assert [(Path(h.shard).name, h.failed, dict(h.errors)) for h in holes] == [("0001.tar", 3, {"timeout": 3})]
    warned = sorted(Path(r.getMessage().split()[0]).name for r in caplog.records)
    assert warned == ["0000_stats.json", "0002_stats.json", "0003_stats.json", "0004_stats.json"], caplog.text
    assert "its shard's download holes are not reported" in caplog.text
