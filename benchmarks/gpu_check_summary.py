"""Sum up a benchmarks/gpu_check.sh run into OUT/gpu_check.json: each stage's exit status, the test results, the
measured tables, and the issue's goals checked against them (None where a stage left no measurement).

    python benchmarks/gpu_check_summary.py OUT
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

# The goals of the GPU issue: the loop against the model, the backends against ddp, the peer.
TRAINER_OVER_MODEL = 0.90
VS_DDP = {"zero2": 0.9, "fsdp2": 0.8, "zero3": 0.8}
OURS_OVER_PEER = 1.1


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def tests(path: Path) -> dict[str, str] | None:
    """Each test's outcome from pytest's junit XML: passed, failed, error or skipped."""
    if not path.is_file():
        return None
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = (
            {"failure": "failed"}.get(kinds[0], kinds[0]) if kinds else "passed"
        )
    return outcomes


def goals(train: Any, e2e: Any, outcomes: dict[str, str] | None) -> dict[str, Any]:
    """True / False per goal; None where the measurement is missing."""
    runs = {Path(r["ds_config"]).stem if r["ds_config"] else r["backend"]: r for r in (train or {}).get("runs", [])}
    sync = [v for k, v in (outcomes or {}).items() if "never_waits_for_the_device" in k]
    loop = {name: r["trainer_over_model"] >= TRAINER_OVER_MODEL for name, r in runs.items()}
    peer = e2e["summary"]["ours_over_peer"] >= OURS_OVER_PEER if e2e else None
    out: dict[str, Any] = {
        f"trainer_over_model>={TRAINER_OVER_MODEL}": loop or None,
        "no_sync_in_a_step": all(v == "passed" for v in sync) if sync and "skipped" not in sync else None,
        f"ours_over_open_clip_train>={OURS_OVER_PEER}": peer,
    }
    for name, floor in VS_DDP.items():
        ok = name in runs and "ddp" in runs
        out[f"{name}_vs_ddp>={floor}"] = (
            runs[name]["trainer_samples_per_s"] / runs["ddp"]["trainer_samples_per_s"] >= floor if ok else None
        )
    return out


def photo_feed(out: Path) -> dict[str, Any]:
    """ViT-B/16 at 75% masking fed from photo shards: trainer/model and samples/s per decode place (None: no run)."""
    feed = {}
    for place in ("cpu_decode", "device_decode"):
        runs = (_json(out / f"photo_feed_{place}.json") or {}).get("runs") or [None]
        run = runs[0]
        feed[place] = (
            None
            if run is None
            else {k: run[k] for k in ("trainer_over_model", "trainer_samples_per_s", "model_samples_per_s") if k in run}
        )
    return feed


def main(out_dir: str) -> int:
    out = Path(out_dir)
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines() if line]
    outcomes = tests(out / "gpu_tests.xml")
    train, model, e2e = (_json(out / f"{n}.json") for n in ("bench_train", "bench_model", "bench_e2e"))
    summary = {
        "stages": stages,
        "env": _json(out / "env.json"),
        "tests": outcomes,
        "goals": goals(train, e2e, outcomes),
        "bench_train": train,
        "bench_model": model,
        "bench_e2e": e2e,
        "photo_feed": photo_feed(out),
    }
    summary["bench_reference"] = _json(out / "bench_reference.json")  # DRRho: samples/s with and without a reference
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({"stages": stages, "goals": summary["goals"], "photo_feed": summary["photo_feed"]}, indent=1))
    return 0 if all(s["rc"] == 0 for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
