"""tools/bench_data.py runs both pipelines on real shards and writes the ratio JSON."""

from __future__ import annotations

import json

import tools.bench_data as bench_data
from tests.data_fixtures import write_shards


def test_bench_data_smoke(tmp_path):
    write_shards(tmp_path / "shards", [40, 40])
    out = tmp_path / "bench.json"
    bench_data.main([
        "--shards", str(tmp_path / "shards"), "--image-size", "16", "--batch-size", "8", "--workers", "0,1",
        "--warmup", "1", "--batches", "2", "--repeats", "1", "--out", str(out),
    ])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["ratio_vs_open_clip"] > 0
    assert set(result["samples_per_s_median"]) == {"ours/workers=0", "ours/workers=1", "open_clip/workers=0",
                                                   "open_clip/workers=1"}  # fmt: skip
    assert result["machine"]["cpu_count"] >= 1
