"""benchmarks/bench_data.py runs both pipelines on real shards and writes a self-consistent ratio JSON."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import pytest

import benchmarks.bench_data as bench_data
from tests.data_fixtures import write_shards
from tests.ranks import REPO


@pytest.mark.slow  # both pipelines start DataLoader worker processes
def test_bench_data_smoke(tmp_path):
    write_shards(tmp_path / "shards", [40, 40])
    out = tmp_path / "bench.json"
    returned = bench_data.main(
        [
            "--shards",
            str(tmp_path / "shards"),
            "--image-size",
            "16",
            "--batch-size",
            "8",
            "--workers",
            "0,1",
            "--warmup",
            "1",
            "--batches",
            "2",
            "--repeats",
            "2",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))  # the file is what main() returned
    runs, med = result["samples_per_s_runs"], result["samples_per_s_median"]
    assert set(runs) == set(med) == {"ours/workers=0", "ours/workers=1", "open_clip/workers=0", "open_clip/workers=1"}
    for key, rates in runs.items():
        assert len(rates) == 2 and all(math.isfinite(r) and r > 0 for r in rates), key
        assert med[key] == statistics.median(rates), key
    best = result["best_workers"]
    for name in ("ours", "open_clip"):
        assert med[f"{name}/workers={best[name]}"] == max(med[f"{name}/workers={w}"] for w in (0, 1))
    assert (
        result["ratio_vs_open_clip"]
        == med[f"ours/workers={best['ours']}"] / med[f"open_clip/workers={best['open_clip']}"]
    )
    for w in (0, 1):
        assert result["ratio_by_workers"][str(w)] == med[f"ours/workers={w}"] / med[f"open_clip/workers={w}"]
    assert result["config"]["batches"] == 2 and result["config"]["image_size"] == 16
    assert result["machine"]["cpu_count"] == os.cpu_count() and len(result["machine"]["loadavg_at_start"]) == 3


@pytest.mark.slow  # starts an HTTP server and an S3 server on 127.0.0.1, and loader workers
def test_bench_data_sources_side_by_side(tmp_path):
    write_shards(tmp_path / "shards", [20, 20])
    # As users run it: a script from the repository root (so it may import only installed packages).
    subprocess.run(
        [
            sys.executable,
            "benchmarks/bench_data.py",
            "--shards",
            str(tmp_path / "shards"),
            "--source",
            "local,http,s3",
            "--image-size",
            "16",
            "--batch-size",
            "8",
            "--workers",
            "1",
            "--warmup",
            "0",
            "--batches",
            "2",
            "--repeats",
            "1",
            "--out",
            str(tmp_path / "b.json"),
        ],
        cwd=REPO,
        check=True,
        timeout=600,
    )
    result = json.loads((tmp_path / "b.json").read_text())
    med = result["samples_per_s_median"]
    assert set(med) == {"local/workers=1", "http/workers=1", "s3/workers=1"} and all(v > 0 for v in med.values())
    assert result["ratio_vs_local"]["s3/workers=1"] == med["s3/workers=1"] / med["local/workers=1"]
    assert set(result["index_samples_per_s"]) == {"local", "http", "s3"}


@pytest.mark.slow  # spawns one process per pipeline (and the peer's, from its own environment)
def test_bench_data_photos_small_mode(tmp_path):
    """`bench_data.py --photos` on tiny photo shards: every pipeline runs pinned to one core, and the ratios and
    cores per GPU are the ones its per-core medians give."""
    from benchmarks.bench_data_photos import DECODERS, MODEL_RATES, OURS
    from benchmarks.photo_shards import build

    sets = {}
    for layout, size in (("img2dataset", "256"), ("datacomp", "512")):
        sets[size] = str(tmp_path / layout)
        build(sets[size], layout, samples=48, shards=2, seed=1, workers=1)
    out = tmp_path / "photos.json"
    returned = bench_data.main(
        [
            "--photos",
            "--shards",
            ",".join(f"{k}={v}" for k, v in sets.items()),
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--warmup",
            "1",
            "--batches",
            "2",
            "--repeats",
            "1",
            "--no-all-cores",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    names = {*(f"decode:{d}" for d in DECODERS), *OURS, "open_clip", "decode_floor"}
    for size in ("256", "512"):
        rates = result["per_core"][size]
        assert set(rates) == names and all(math.isfinite(r) and r > 0 for r in rates.values())
        assert rates["decode_floor"] == max(rates[f"decode:{d}"] for d in DECODERS if d != "pil_draft")
        assert {"handoff_pooled", "handoff_fresh", "handoff_copied", "handoff_crops"} <= set(result["candidates"][size])
        assert result["ours_over_floor"][size] == rates["ours"] / rates["decode_floor"]
        assert result["ours_over_open_clip"][size] == rates["ours"] / rates["open_clip"]
        assert result["cores_per_gpu"][size]["ours"]["0.75"] == MODEL_RATES["0.75"] / rates["ours"]
        for name, runs in result["per_core_runs"][size].items():
            assert rates[name] == statistics.median(runs)
        candidates = result["candidates"][size]
        assert candidates["pil_bicubic"]["max_abs_levels"] == 0  # the host path itself
        assert candidates["device_resize_on_a_cpu_core"]["max_abs_levels"] <= 1
        assert set(result["goals"][size]) == {
            "ours_over_floor>=0.8",
            "ours_over_open_clip>=2.0",
            f"cores_per_gpu_0.75<={6 if size == '256' else 10}",
        }
    assert result["config"]["pinned_core"] in os.sched_getaffinity(0)
