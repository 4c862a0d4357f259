"""End to end against the peer: open_clip's own trainer (open_clip_train) and ours, launched as their users launch
them, train the same model on the same shards with the same batch, loss (OpenCLIP), precision, mask ratio and
loader workers for the same number of steps, alternating run by run (this machine is noisy).

    python benchmarks/bench_e2e.py --out benchmarks/results/bench_e2e_cpu.json       # CPU: the demo model, 2 ranks
    python benchmarks/bench_e2e.py --config recipes/configs/openclip_laion315m_vitb16_1node.yaml \
        data.path=SHARDS data.batch_size=256 data.workers=14 --ranks 1 --steps 300 --out e2e.json   # one GPU

Ours: `accelerate launch recipes/run_recipe.py`; the peer: `torchrun benchmarks/open_clip_peer.py` (which runs
`open_clip_train.main`) from its own environment, a `pip install --target .peer/site` of
benchmarks/requirements-peer.txt that is built once and reused (--peer-wheels: offline, from a wheel folder); only
that folder is on its PYTHONPATH. Steady-state samples/s are what each trainer itself reports per logging window
(ours: perf/samples_per_s in metrics.jsonl; the peer: global batch / its "Batch (t)" window mean), windows starting
after --warmup steps, median per run; wall time counts everything from launch to exit (imports, start-up, data,
the final checkpoint both save).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_common import machine_description, write_json
from data.manifest import resolve_shards
from model import get_model_config
from model.convert_open_clip import model_cfg
from train.config import TrainConfig
from train.faults.rank_sync import free_port
from train.setup import load_config

REPO = Path(__file__).resolve().parents[1]
DEMO = "recipes/configs/demo_fashion_mnist.yaml"
PEER_REQUIREMENTS = Path(__file__).with_name("requirements-peer.txt")
PEER_PRECISION = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp"}  # ours (autocast) -> open_clip_train's
PEER_WINDOW = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?Batch \(t\): ([\d.]+)")


def peer_env(site: Path, wheels: str) -> Path:
    """The peer's environment, built with pip (from PyPI, or offline from `wheels`) or reused when its stamp
    (the requirements' hash) matches."""
    digest = hashlib.sha256(PEER_REQUIREMENTS.read_bytes()).hexdigest()[:16]
    stamp = site / f".installed-{digest}"
    if not stamp.exists():
        shutil.rmtree(site, ignore_errors=True)
        offline = ["--no-index", "--find-links", wheels] if wheels else []
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(site),
                *offline,
                "-r",
                str(PEER_REQUIREMENTS),
            ],
            check=True,
        )
        stamp.touch()
    return site


@dataclass
class Setup:
    """One benchmark setting, resolved from our config: what both trainers are told."""

    cfg: TrainConfig
    config: str
    overrides: list[str]
    ranks: int
    steps: int

    @property
    def global_batch(self) -> int:
        return self.cfg.data.batch_size * self.ranks

    def ours(self, run_dir: Path) -> list[str]:
        port = str(free_port())
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO / "ds_configs" / "accelerate_cpu_2proc.yaml"),
            "--num_processes",
            str(self.ranks),
            "--main_process_port",
            port,
            str(REPO / "recipes" / "run_recipe.py"),
            "--config",
            self.config,
            *self.overrides,
            f"run.output_dir={run_dir}",
        ]

    def peer(self, model_json: Path) -> list[str]:
        """Run in the peer's run directory: torchrun's own --logs-specs option swallows open_clip's --logs."""
        c, shardset = self.cfg, resolve_shards(self.cfg.data.path)
        names = "{" + ",".join(s.name for s in shardset.shards) + "}"
        pattern = os.path.join(os.path.abspath(shardset.directory), names)
        args = [
            "--train-data",
            pattern,
            "--dataset-type",
            "webdataset",
            "--train-num-samples",
            str(self.steps * self.global_batch),
            "--epochs",
            "1",
            "--batch-size",
            str(c.data.batch_size),
            "--workers",
            str(c.data.workers),
            "--model",
            model_json.stem,
            "--precision",
            PEER_PRECISION[c.backend.precision],
            "--lr",
            str(c.optim.lr),
            "--wd",
            str(c.optim.weight_decay),
            "--beta1",
            str(c.optim.betas[0]),
            "--beta2",
            str(c.optim.betas[1]),
            "--eps",
            str(c.optim.eps),
            "--warmup",
            str(c.optim.warmup_steps),
            "--seed",
            str(c.run.seed),
            "--local-loss",
            "--gather-with-grad",
            "--log-every-n-steps",
            str(c.logging.every_steps),
            "--name",
            "peer",  # logs in ./logs (cwd: its run dir)
        ]
        if c.flip.mask_ratio:
            args += ["--force-patch-dropout", str(c.flip.mask_ratio)]
        if c.optim.grad_clip:
            args += ["--grad-clip-norm", str(c.optim.grad_clip)]
        shim = str(Path(__file__).with_name("open_clip_peer.py"))
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(self.ranks),
            "--master_port",
            str(free_port()),
            shim,
            str(model_json),
            *args,
        ]


def resolve(config: str, overrides: list[str], ranks: int, steps: int, mask_ratio: float, log_every: int) -> Setup:
    """Our config with the benchmark's fixed settings: OpenCLIP loss, one mask ratio, no evaluation, `steps` steps."""
    cfg = load_config(config, overrides)
    loss = [] if cfg.loss.name == "openclip" else ["loss.name=openclip", "loss.version=null", "loss.lr_tau=null"]
    steps_per_epoch = resolve_shards(cfg.data.path).total // (cfg.data.batch_size * ranks)
    fixed = [
        *loss,
        f"flip.mask_ratio={mask_ratio}",
        "flip.tuning_samples=0",
        f"max_steps={steps}",
        f"epochs={math.ceil(steps / steps_per_epoch)}",
        "eval.every_steps=0",
        'eval.zeroshot=""',
        'eval.retrieval=""',
        "checkpoint.every_steps=0",
        "checkpoint.resume=null",
        f"logging.every_steps={log_every}",
        "logging.tensorboard=false",
        f"run.world_size={ranks}",
    ]
    if steps % max(1, cfg.data.workers):  # open_clip_train rounds its epoch up to whole batches per worker
        raise SystemExit(
            f"--steps {steps} is not a multiple of data.workers={cfg.data.workers}: the peer would run "
            f"{math.ceil(steps / cfg.data.workers) * cfg.data.workers} steps"
        )
    if steps > steps_per_epoch:
        raise SystemExit(
            f"--steps {steps} > one epoch of the shards ({steps_per_epoch} steps): the peer would stop "
            "at the end of its shards"
        )
    overrides = overrides + fixed
    return Setup(load_config(config, overrides), config, overrides, ranks, steps)


def _launch(command: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> float:
    """Run one trainer to its exit; its wall seconds (its output goes to `log`, shown if it fails)."""
    cwd.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if code:
        raise SystemExit(f"exit code {code}: {' '.join(command)}\n{log.read_text()[-4000:]}")
    return wall


def _steady(windows: list[tuple[int, int, float]], warmup: int, steps: int) -> float:
    """Median samples/s of the windows (start step, end step, samples/s) starting at or after `warmup`."""
    ends = [end for _, end, _ in windows]
    if not ends or max(ends) != steps:
        raise SystemExit(f"expected logging windows up to step {steps}, got {ends}")
    steady = [sps for start, _, sps in windows if start >= warmup]
    if not steady:
        raise SystemExit(f"no logging window starts after the {warmup} warm-up steps: raise --steps")
    return statistics.median(steady)


def our_windows(run_dir: Path) -> list[tuple[int, int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    starts = [0] + [r["step"] for r in rows[:-1]]
    return [(s, r["step"], r["perf/samples_per_s"]) for s, r in zip(starts, rows, strict=True)]


def peer_windows(run_dir: Path, global_batch: int) -> list[tuple[int, int, float]]:
    """From the peer's log: every line ends a window whose mean step time it prints (3 decimals)."""
    text = (run_dir / "logs" / "peer" / "out.log").read_text()
    marks = [(int(samples) // global_batch, float(mean)) for samples, mean in PEER_WINDOW.findall(text)]
    starts = [0] + [end for end, _ in marks[:-1]]
    return [(s, end, global_batch / mean) for s, (end, mean) in zip(starts, marks, strict=True)]


def run(setup: Setup, rounds: int, warmup: int, site: Path, logs: Path) -> list[dict[str, float]]:
    """`rounds` x (ours, then the peer), each a fresh launch."""
    cpu = not torch.cuda.is_available()
    threads = {"OMP_NUM_THREADS": "1"} if cpu else {}
    ours_env = os.environ | threads | ({"ACCELERATE_USE_CPU": "1"} if cpu else {})
    peer_env_vars = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"} | threads
    peer_env_vars["PYTHONPATH"] = str(site.resolve())
    model_json = logs / f"fastflip-{setup.cfg.model.name}.json"
    model_json.write_text(json.dumps(model_cfg(get_model_config(setup.cfg.model.name, **setup.cfg.model.overrides))))
    results = []
    for r in range(rounds):
        ours_dir, peer_dir = logs / f"ours{r}", logs / f"peer{r}"
        ours_wall = _launch(setup.ours(ours_dir), ours_env, logs / f"ours{r}.log")
        peer_wall = _launch(setup.peer(model_json), peer_env_vars, logs / f"peer{r}.log", peer_dir)
        result = {
            "ours_samples_per_s": _steady(our_windows(ours_dir), warmup, setup.steps),
            "peer_samples_per_s": _steady(peer_windows(peer_dir, setup.global_batch), warmup, setup.steps),
            "ours_wall_s": ours_wall,
            "peer_wall_s": peer_wall,
        }
        result["ratio"] = result["ours_samples_per_s"] / result["peer_samples_per_s"]
        results.append(result)
        print(f"round {r}: " + "  ".join(f"{k}={v:.3f}" for k, v in result.items()), flush=True)
    return results


def summary(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Medians and spread (min, max) of every quantity over rounds; the ratio of the median samples/s."""
    out: dict[str, Any] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    out["ours_over_peer"] = out["ours_samples_per_s"]["median"] / out["peer_samples_per_s"]["median"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEMO, help="our recipe YAML (default: the demo recipe)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides of the recipe")
    parser.add_argument("--ranks", type=int, default=0, help="processes (default: 1 per GPU, else 2 on CPU)")
    parser.add_argument("--steps", type=int, default=150, help="training steps of every run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (ours, peer)")
    parser.add_argument("--warmup", type=int, default=30, help="steps before the first steady-state window")
    parser.add_argument("--log-every", type=int, default=10, help="logging window of both trainers, in steps")
    parser.add_argument(
        "--mask-ratio", type=float, default=0.0, help="FLIP mask ratio of both (the peer's --force-patch-dropout)"
    )
    parser.add_argument("--peer-site", default=str(REPO / ".peer" / "site"), help="the peer's environment")
    parser.add_argument("--peer-wheels", default="", help="build the peer's environment offline from these wheels")
    parser.add_argument("--logs", default="", help="keep the runs' logs here (default: a temporary folder)")
    parser.add_argument("--note", default="", help="written into the JSON (e.g. the machine's load)")
    parser.add_argument("--out", default="", help="write the JSON here")
    args = parser.parse_args(argv)
    ranks = args.ranks or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    setup = resolve(args.config, args.overrides, ranks, args.steps, args.mask_ratio, args.log_every)
    site = peer_env(Path(args.peer_site), args.peer_wheels)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(args.logs or tmp).resolve()
        logs.mkdir(parents=True, exist_ok=True)
        rounds = run(setup, args.rounds, args.warmup, site, logs)
    result = summary(rounds)
    c = setup.cfg
    print(
        f"\nend to end, {c.model.name}, {ranks} ranks x batch {c.data.batch_size}, {c.backend.precision}, mask "
        f"{c.flip.mask_ratio}, {c.data.workers} workers, {args.steps} steps, medians of {args.rounds} rounds"
    )
    for key, value in result.items():
        shown = (
            f"{value:.3f}"
            if isinstance(value, float)
            else f"{value['median']:.3f} ({value['min']:.3f}-{value['max']:.3f})"
        )
        print(f"  {key:<20} {shown}")
    write_json(
        args.out,
        {
            "summary": result,
            "rounds": rounds,
            "note": args.note,
            "setting": {
                "config": args.config,
                "overrides": setup.overrides,
                "model": c.model.name,
                "ranks": ranks,
                "batch_per_rank": c.data.batch_size,
                "global_batch": setup.global_batch,
                "loss": "openclip",
                "precision": c.backend.precision,
                "mask_ratio": c.flip.mask_ratio,
                "workers": c.data.workers,
                "steps": args.steps,
                "warmup_steps": args.warmup,
                "log_every": args.log_every,
                "shards": c.data.path,
            },
            "peer": {
                "requirements": [r for r in PEER_REQUIREMENTS.read_text().splitlines() if r and r[0] != "#"],
                "launch": "torchrun benchmarks/open_clip_peer.py (open_clip_train.main)",
            },
            "machine": machine_description() | {"loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
