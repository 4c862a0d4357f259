"""How close the training loop comes to the model: model-only steps vs the full trainer loop, in one run.

    python benchmarks/bench_train.py                                  # CPU: the demo recipe on 2 ranks
    python benchmarks/bench_train.py --config recipes/configs/X.yaml data.batch_size=256 --ranks 1 \
        --backends ddp,fsdp2,zero2,zero3 --out benchmarks/results/bench_train.json

Every rank builds the real `Trainer` and alternates, round by round, (a) model-only steps: the
trainer's own `train_step` on one batch resident on the device (forward, loss with its
per-sample state, backward, optimizer, temperature) and (b) the trainer loop `train_steps`: the
data loader, host-to-device copies, normalisation on the device and logging every
`logging.every_steps`. Samples/s are medians over rounds; `trainer_over_model` is their ratio.
A last pass times each phase of a step with a device synchronisation between phases (the
breakdown; the loop itself never synchronises there). `--backends` runs the same config once
per backend (fresh processes each) and reports each loop's samples/s relative to the first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.multiprocessing as mp

from benchmarks.bench_common import machine_description, write_json
from data.types import Batch
from model.flops import train_flops_per_sample
from train.backends import variants
from train.faults.rank_sync import free_port

if TYPE_CHECKING:
    from train.trainer import Trainer

DEMO = "recipes/configs/demo_fashion_mnist.yaml"


def backend_choices() -> dict[str, list[str]]:
    """--backends names (the registry's variants, e.g. deepspeed:zero2, also as zero2) -> config overrides."""
    full = {
        name: [f"backend.name={settings['name']}"]
        + [f"backend.options.{k}={v}" for k, v in settings.get("options", {}).items()]
        for name, settings in variants().items()
    }
    return full | {name.split(":")[1]: overrides for name, overrides in full.items() if ":" in name}


PHASES = ("data_wait", "host_to_device", "forward", "loss_and_state", "backward", "optimizer", "logging")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def _breakdown(trainer: Trainer, steps: int) -> dict[str, float]:
    """Median seconds per step of each phase, synchronising the device between phases."""
    times: dict[str, list[float]] = {name: [] for name in PHASES}
    last = [0.0]

    def probe(name: str) -> None:
        _sync()
        now = time.perf_counter()
        times[name].append(now - last[0])
        last[0] = now

    for _ in range(steps):
        _sync()
        start = time.perf_counter()
        batch = trainer.next_batch()
        times["data_wait"].append(time.perf_counter() - start)
        last[0] = time.perf_counter()
        scalars = trainer.train_step(batch, probe)
        # logging reads the scalars (one transfer) every `every_steps`: amortised per step
        times["logging"].append(_timed(lambda s=scalars: trainer.log(s)) / trainer.cfg.logging.every_steps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _rank_main(rank: int, world: int, port: int, config: str, overrides: list[str], args: dict, out: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
        }
    )
    if not torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "1"
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    from train.setup import load_setup
    from train.trainer import Trainer

    with tempfile.TemporaryDirectory() as run_dir:
        fixed = [
            f"run.output_dir={run_dir}",
            "checkpoint.every_steps=0",
            "eval.every_steps=0",
            "logging.tensorboard=false",
            'eval.zeroshot=""',
            'eval.retrieval=""',
        ]
        trainer = Trainer(load_setup(config, overrides + fixed))
        try:
            result = _measure(trainer, args)
        finally:
            trainer.loader.close()
            trainer.close()
    if rank == 0:
        torch.save(result, out)


def _measure(trainer: Trainer, args: dict) -> dict[str, Any]:
    steps, rounds = args["steps"], args["rounds"]
    trainer.train_steps(trainer.step + args["warmup"])  # warms the loader, allocator, kernels
    images, tokens, index = trainer.inputs(trainer.next_batch())
    resident = Batch(images=images, tokens=tokens, index=index)
    for _ in range(args["warmup"]):
        trainer.train_step(resident)
    model_s, loop_s = [], []
    for _ in range(rounds):
        model_s.append(_timed(lambda: [trainer.train_step(resident) for _ in range(steps)]))
        loop_s.append(_timed(lambda: trainer.train_steps(trainer.step + steps)))
    breakdown = _breakdown(trainer, args["breakdown_steps"])
    if trainer.step > trainer.plan.total_steps:
        raise ValueError("the recipe's plan is shorter than the benchmark; raise epochs or lower --steps/--rounds")
    samples = steps * trainer.global_batch
    model_sps = [samples / s for s in model_s]
    loop_sps = [samples / s for s in loop_s]
    mask = trainer.plan.phase_at(trainer.step - 1).mask_ratio
    flops = train_flops_per_sample(trainer.model_config, mask)
    peak = trainer.cfg.logging.peak_tflops * 1e12 * trainer.backend.world_size
    model_med, loop_med = statistics.median(model_sps), statistics.median(loop_sps)
    return {
        "backend": trainer.cfg.backend.name,
        "ds_config": trainer.cfg.backend.options.get("ds_config", ""),
        "precision": trainer.cfg.backend.precision,
        "model": trainer.cfg.model.name,
        "ranks": trainer.backend.world_size,
        "global_batch": trainer.global_batch,
        "mask_ratio": mask,
        "loss": f"{trainer.loss_cfg.name} {trainer.loss_cfg.version or ''}".strip(),
        "model_samples_per_s": model_med,
        "trainer_samples_per_s": loop_med,
        "trainer_over_model": loop_med / model_med,
        "model_samples_per_s_rounds": model_sps,
        "trainer_samples_per_s_rounds": loop_sps,
        "mfu_trainer": loop_med * flops / peak,
        "breakdown_ms_per_step": {k: 1e3 * v for k, v in breakdown.items()},
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def run_config(config: str, overrides: list[str], ranks: int, args: dict) -> dict[str, Any]:
    """Benchmark one config on `ranks` fresh processes; rank 0's result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.pt")
        mp.start_processes(
            _rank_main, args=(ranks, free_port(), config, overrides, args, out), nprocs=ranks, start_method="spawn"
        )
        return torch.load(out, weights_only=True)  # plain numbers and strings


def _table(results: list[dict[str, Any]]) -> str:
    head = f"{'backend':<10}{'model sps':>11}{'loop sps':>10}{'loop/model':>11}{'vs first':>9}{'MFU':>7}  breakdown ms"
    rows = [head]
    for r in results:
        name = Path(r["ds_config"]).stem if r["ds_config"] else r["backend"]
        parts = " ".join(f"{k}={v:.1f}" for k, v in r["breakdown_ms_per_step"].items())
        rows.append(
            f"{name:<10}{r['model_samples_per_s']:>11.1f}{r['trainer_samples_per_s']:>10.1f}"
            f"{r['trainer_over_model']:>11.3f}{r['vs_first_backend']:>9.3f}{100 * r['mfu_trainer']:>6.2f}%  {parts}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEMO, help="recipe YAML (default: the demo recipe)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides of the recipe")
    parser.add_argument("--ranks", type=int, default=0, help="processes (default: 1 per GPU, else 2 on CPU)")
    choices = backend_choices()
    parser.add_argument(
        "--backends", default="", help=f"comma-separated, from {sorted(choices)}; default: the recipe's own backend"
    )
    parser.add_argument("--steps", type=int, default=20, help="steps per round and mode")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds (medians over them)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up steps of each mode")
    parser.add_argument("--breakdown-steps", type=int, default=10, help="steps timed phase by phase")
    parser.add_argument("--out", default="", help="write the JSON here")
    args = parser.parse_args(argv)
    ranks = args.ranks or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    names = [b for b in args.backends.split(",") if b]
    unknown = [b for b in names if b not in choices]
    if unknown:
        parser.error(f"--backends: unknown {unknown}; choose from {sorted(choices)}")
    knobs = {"steps": args.steps, "rounds": args.rounds, "warmup": args.warmup, "breakdown_steps": args.breakdown_steps}
    results: list[dict[str, Any]] = []
    for name in names or [""]:  # each backend's row is printed and written as soon as it is measured
        result = run_config(args.config, args.overrides + choices.get(name, []), ranks, knobs)
        first = results[0] if results else result
        results.append(result | {"vs_first_backend": result["trainer_samples_per_s"] / first["trainer_samples_per_s"]})
        print(_table(results), flush=True)
        write_json(
            args.out,
            {
                "config": args.config,
                "overrides": args.overrides,
                "ranks": ranks,
                "machine": machine_description(),
                "trainer_over_model": first["trainer_over_model"],
                "model_samples_per_s": first["model_samples_per_s"],
                "trainer_samples_per_s": first["trainer_samples_per_s"],
                "runs": results,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
