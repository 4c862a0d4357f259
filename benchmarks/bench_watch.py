"""Does the evaluation watcher slow training? Training samples/s with and without `tools/evaluate.py --watch`
beside it, on separate cores (taskset), runs alternated so machine noise hits both alike.

    python benchmarks/bench_watch.py --out benchmarks/results/bench_watch_cpu.json

Training: the demo model (FastCLIP-v3, FLIP 50% masking) on Fashion-MNIST train shards, one process pinned to
--train-core, a checkpoint every --every steps. Watcher: pinned to --watch-core, evaluating each checkpoint on
Fashion-MNIST test images in clip_benchmark's webdataset layout. Control: a busy loop pinned to the watcher's
core instead (the same demand for a core, nothing else): on a machine whose other processes fill both cores,
taking one core away slows everything, and the control tells that apart from anything the watcher itself does to
training. samples/s: the median of the logged windows after the first (perf/samples_per_s in metrics.jsonl).
On a GPU machine, give the watcher its own GPU with --watch-device cuda:1 (the training process keeps cuda:0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_common import machine_description, write_json  # noqa: E402


def prepare(root: Path, train_images: int, test_images: int) -> tuple[Path, Path]:
    """Train shards (tools/make_shards.py) and a one-task suite in clip_benchmark's layout."""
    from tests.export_fixtures import fashion_mnist_test
    from tests.suite_fixtures import fashion_wds

    subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "make_shards.py"),
            "fashion-mnist",
            "--splits",
            "train",
            "--limit",
            str(train_images),
            "--out",
            str(root / "shards"),
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    images, labels = fashion_mnist_test(test_images)
    fashion_wds(root / "eval" / "wds_fashion_mnist_test", images, [int(x) for x in labels])
    suite = root / "suite.yaml"
    suite.write_text(
        yaml.safe_dump({"tasks": [{"name": "fashion-mnist", "kind": "zeroshot", "path": "wds_fashion_mnist_test"}]})
    )
    return root / "shards" / "train", suite


def recipe(root: Path, name: str, shards: Path, steps_per_ckpt: int, epochs: int, batch: int) -> Path:
    raw = yaml.safe_load((REPO / "recipes" / "configs" / "demo_fashion_mnist.yaml").read_text())
    raw["run"] |= {"name": name, "output_dir": str(root / name), "world_size": 1}
    raw["data"] |= {"path": str(shards), "batch_size": batch, "workers": 0}
    raw["checkpoint"] |= {"every_steps": steps_per_ckpt, "keep_last": 1000}
    raw["logging"] = {"every_steps": 10}
    raw["flip"]["tuning_samples"] = 0
    raw.pop("eval")
    raw.pop("dataset_samples")
    raw["epochs"] = epochs
    raw["optim"]["warmup_steps"] = 10
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "1"}


def train(config: Path, core: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["taskset", "-c", str(core), sys.executable, str(REPO / "recipes" / "run_recipe.py"), "--config", str(config)],
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def watch(run_dir: Path, suite: Path, data_root: Path, core: int, device: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            "taskset",
            "-c",
            str(core),
            sys.executable,
            str(REPO / "tools" / "evaluate.py"),
            "--watch",
            str(run_dir),
            "--suite",
            str(suite),
            "--data-root",
            str(data_root),
            "--device",
            device,
            "--poll-s",
            "0.5",
            "--batch-size",
            "250",
        ],
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def samples_per_s(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["perf/samples_per_s"] for r in rows if "perf/samples_per_s" in r][1:]


def one_run(root: Path, name: str, args: argparse.Namespace, shards: Path, suite: Path) -> dict:
    config = recipe(root, name, shards, args.every, args.epochs, args.batch)
    run_dir = root / name
    job = train(config, args.train_core)
    watcher = burner = None
    if name.startswith(("watch", "busy")):
        while not (run_dir / "metrics.jsonl").exists() and job.poll() is None:
            time.sleep(0.2)
    if name.startswith("watch"):
        watcher = watch(run_dir, suite, root / "eval", args.watch_core, args.watch_device)
    if name.startswith("busy"):
        burner = subprocess.Popen(["taskset", "-c", str(args.watch_core), sys.executable, "-c", "while True: pass"])
    _, err = job.communicate()
    if burner is not None:
        burner.kill()
        burner.wait()
    if job.returncode != 0:
        raise RuntimeError(f"training {name} failed:\n{err[-3000:]}")
    trained_at = time.time()
    evaluated_during = 0
    if watcher is not None:
        rows = run_dir / "eval_watch" / "results.jsonl"
        before = [json.loads(x) for x in rows.read_text().splitlines()] if rows.exists() else []
        evaluated_during = sum(r["time"] <= trained_at for r in before)
        _, werr = watcher.communicate(timeout=600)
        if watcher.returncode != 0:
            raise RuntimeError(f"watcher of {name} failed:\n{werr[-3000:]}")
    windows = samples_per_s(run_dir)
    checkpoints = len(list((run_dir / "checkpoints").glob("step_*")))
    return {
        "run": name,
        "beside": name.rstrip("0123456789"),
        "median_samples_per_s": statistics.median(windows),
        "windows": windows,
        "checkpoints": checkpoints,
        "evaluated_while_training": evaluated_during,
        "evaluated_after": checkpoints - evaluated_during if watcher is not None else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=6400)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--every", type=int, default=25, help="checkpoint every N steps")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds of runs: alone, with the watcher, with a busy loop on the watcher's core",
    )
    parser.add_argument("--train-core", type=int, default=0)
    parser.add_argument("--watch-core", type=int, default=1)
    parser.add_argument("--watch-device", default="cpu")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards, suite = prepare(root, args.train_images, args.test_images)
        runs = []
        for i in range(args.rounds):
            for name in (f"alone{i}", f"watch{i}", f"busy{i}"):
                runs.append(one_run(root, name, args, shards, suite))
                print(f"{name}: {runs[-1]['median_samples_per_s']:.1f} samples/s", flush=True)
    medians = {
        kind: statistics.median(r["median_samples_per_s"] for r in runs if r["beside"] == kind)
        for kind in ("alone", "watch", "busy")
    }
    print(f"\n{'run':<8} {'samples/s':>10} {'checkpoints':>12} {'evaluated while training':>25}")
    for r in runs:
        during = "-" if r["beside"] != "watch" else str(r["evaluated_while_training"])
        print(f"{r['run']:<8} {r['median_samples_per_s']:>10.1f} {r['checkpoints']:>12} {during:>25}")
    print(
        f"median samples/s: alone {medians['alone']:.1f}, beside the watcher {medians['watch']:.1f} "
        f"({medians['watch'] / medians['alone']:.3f}), beside a busy loop {medians['busy']:.1f} "
        f"({medians['busy'] / medians['alone']:.3f}); watcher / busy loop {medians['watch'] / medians['busy']:.3f}"
    )
    write_json(
        args.out,
        {
            "machine": machine_description(),
            "args": vars(args),
            "runs": runs,
            "medians": medians,
            "watch_over_alone": medians["watch"] / medians["alone"],
            "busy_over_alone": medians["busy"] / medians["alone"],
            "watch_over_busy": medians["watch"] / medians["busy"],
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
