"""benchmarks/gpu_check.sh in its small mode (CPU, tiny model, few steps): every stage of the GPU check runs and
writes its JSON, so the one prepared call cannot rot between GPU sessions. Builds the peer's environment
(.peer/site, from PyPI) on first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.ranks import REPO

STAGES = [
    "env",
    "shards",
    "gpu_tests",
    "bench_train",
    "photo_feed_cpu_decode",
    "photo_feed_device_decode",
    "bench_model",
    "bench_e2e",
    "bench_reference",
]


@pytest.mark.slow
def test_gpu_check_small_mode_runs_every_stage(tmp_path) -> None:
    env = os.environ | {
        "OUT": str(tmp_path),
        "GPU_CHECK_SMALL": "1",
        "GPU_CHECK_BUDGET_S": "3000",
        "PYTHON": sys.executable,
    }
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=3600
    )
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = {s["stage"]: (tmp_path / f"{s['stage']}.log").read_text()[-3000:] for s in summary["stages"] if s["rc"]}
    assert proc.returncode == 0 and not failed, (proc.stdout, failed)
    assert [s["stage"] for s in summary["stages"]] == STAGES
    assert summary["tests"] and "failed" not in summary["tests"].values()
    runs = summary["bench_train"]["runs"]
    assert [r["ds_config"].split("/")[-1] or r["backend"] for r in runs] == ["ddp", "zero2.json", "fsdp2", "zero3.json"]
    assert all(r["trainer_samples_per_s"] > 0 for r in runs)
    assert summary["bench_model"]["results"][0]["ours_over_open_clip"]["ours"] > 0
    feed = summary["photo_feed"]  # B/16 at 75% from photo shards (here: the tiny model), CPU then device decode
    assert set(feed) == {"cpu_decode", "device_decode"} and all(f["trainer_over_model"] > 0 for f in feed.values())
    e2e = summary["bench_e2e"]
    assert e2e["setting"]["loss"] == "openclip" and e2e["summary"]["ours_over_peer"] > 0
    modes = summary["bench_reference"]["modes"]
    assert modes["model"]["samples_per_s"] > 0 and modes["model"]["reference_ms"] > 0
    assert set(summary["goals"]) >= {"no_sync_in_a_step", "zero2_vs_ddp>=0.9", "ours_over_open_clip_train>=1.1"}
