"""Communication per training step: OpenCLIP, SigLIP and FastCLIP v0-v3, counted from the collectives issued.

Runs a few steps of each loss on K gloo ranks (CPU) with the tiny CLIP wrapped in DDP, and
records every torch.distributed collective issued by wrapping the torch.distributed functions:
op, bytes, phase (forward / backward) and what it carries:

- features      the forward gather of features (and sample keys); SigLIP's K-1 ring passes of its
                [image | text] features (counted as the bytes each rank sends)
- feature_grad  collectives in backward outside the DDP hook (OpenCLIP's gather-with-grad)
- state         per-sample state traffic (`train/sample_state.py`)
- param_grad    DDP's gradient all-reduce (a recording comm hook around all_reduce)
- logging       the loss-value all-reduce

Bytes are per rank per step, counted as the size of the collective's global buffer (the
all_gather output, the reduce_scatter / all_to_all input, the all_reduce tensor), from the
last step (the first is a warm-up with gamma = 1; counts are identical after it). Also prints
per-rank per-sample state memory for N = 315M at K = 4..32, sharded vs replicated.
Writes `--out FILE.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from benchmarks.bench_common import machine_description, write_json
from model import create_model
from train.losses import LossConfig, build_loss, tau_spec
from train.losses.sample_state import state_bytes_per_rank

LOSSES = {
    "openclip": LossConfig(name="openclip"),
    "siglip": LossConfig(name="siglip"),
    "fastclip_v0": LossConfig(version="v0"),
    "fastclip_v1": LossConfig(version="v1"),
    "fastclip_v2": LossConfig(version="v2", lr_tau=0.0133, tau_init=0.03),
    "fastclip_v3": LossConfig(version="v3", lr_tau=2e-4),
    "fastclip_v3_replicated": LossConfig(version="v3", lr_tau=2e-4, state_layout="replicated"),
}
CATEGORIES = ("features", "feature_grad", "state", "param_grad", "logging")
# Collective -> the argument whose size is the global buffer.
SIZED_ARGS = {
    "all_gather_single": "output_tensor",
    "all_gather_into_tensor": "output_tensor",
    "reduce_scatter_single": "input",
    "reduce_scatter_tensor": "input",
    "all_reduce": "tensor",
    "broadcast": "tensor",
    "all_to_all_single": "input",
    "all_gather": "tensor_list",
    "all_to_all": "input_tensor_list",
    "isend": "tensor",
}
STATE_N = 315_000_000
STATE_COLUMNS = {"v0/v1/v3": 2, "v2": 9}  # log u1, log u2 (+ tau, Adam m, v per side, visit count)


class CommRecorder:
    """Replaces torch.distributed collectives with wrappers that log each call while a phase is set."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.phase: str | None = None
        self.forced: str | None = None

    def install(self) -> None:
        for name, arg in SIZED_ARGS.items():
            setattr(dist, name, self._wrap(name, arg, getattr(dist, name)))

    @contextlib.contextmanager
    def category(self, name: str) -> Iterator[None]:
        self.forced = name
        try:
            yield
        finally:
            self.forced = None

    def _wrap(self, op: str, arg: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.phase is not None:
                value = signature.bind(*args, **kwargs).arguments[arg]
                tensors = value if isinstance(value, list | tuple) else [value]
                nbytes = sum(t.numel() * t.element_size() for t in tensors)
                self.events.append({"op": op, "bytes": nbytes, "phase": self.phase, "category": self._classify(op)})
            return fn(*args, **kwargs)

        return wrapper

    def _classify(self, op: str) -> str:
        if self.forced:
            return self.forced
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename.endswith("sample_state.py"):
                return "state"
            frame = frame.f_back
        if self.phase == "backward":
            return "feature_grad"
        return "logging" if op == "all_reduce" else "features"


def _recording_allreduce_hook(recorder: CommRecorder) -> Callable[[Any, dist.GradBucket], torch.futures.Future]:
    """DDP's default gradient averaging, issued through the (wrapped) dist.all_reduce."""

    def hook(_, bucket):  # unannotated: DDP rejects string annotations (postponed evaluation)
        tensor = bucket.buffer().div_(dist.get_world_size())
        with recorder.category("param_grad"):
            work = dist.all_reduce(tensor, async_op=True)
        return work.get_future().then(lambda fut: fut.value()[0])

    return hook


def _rank_main(rank: int, world_size: int, init_method: str, out_dir: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=world_size, timeout=timedelta(seconds=300)
    )
    recorder = CommRecorder()
    recorder.install()
    results = {}
    for name, cfg in LOSSES.items():
        torch.manual_seed(0)
        model = create_model(args.model)
        spec = tau_spec(cfg)
        with torch.no_grad():
            model.logit_scale.fill_(spec.init_logit_scale)
        model.logit_scale.requires_grad_(spec.trainable)  # v1 / v2: frozen (DDP needs it)
        ddp = DistributedDataParallel(model, forward_sync_buffers=False)
        ddp.register_comm_hook(None, _recording_allreduce_hook(recorder))
        loss = build_loss(cfg, args.num_samples)
        bias = None if spec.init_logit_bias is None else torch.full((1,), spec.init_logit_bias, requires_grad=True)
        gen = torch.Generator().manual_seed(rank)
        size, context = model.config.vision.image_size, model.config.text.context_length
        steps = []
        for step in range(args.steps):
            loss.set_epoch(min(step, 1))
            images = torch.randn(args.batch, 3, size, size, generator=gen)
            tokens = torch.randint(1, 49406, (args.batch, context), generator=gen)
            keys = (torch.arange(args.batch) + rank * args.batch + step * args.batch * world_size) % args.num_samples
            recorder.events, recorder.phase = [], "forward"
            image_features, text_features, logit_scale = ddp(images, tokens)
            out = loss(image_features, text_features, keys, logit_scale, bias)
            recorder.phase = "backward"
            out.loss.backward()
            recorder.phase = None
            ddp.zero_grad(set_to_none=True)
            steps.append(recorder.events)
        if any(_totals(s) != _totals(steps[-1]) for s in steps[1:]):
            raise RuntimeError(f"{name}: collectives differ between steps after the warm-up")
        results[name] = {**_totals(steps[-1]), "collectives": steps[-1]}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _totals(events: list[dict[str, Any]]) -> dict[str, int]:
    totals = {f"{c}_bytes": sum(e["bytes"] for e in events if e["category"] == c) for c in CATEGORIES}
    return {"feature_bytes": totals.pop("features_bytes"), **totals, "total_bytes": sum(e["bytes"] for e in events)}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per-rank results of the benchmark on `args.world_size` spawned gloo ranks."""
    with tempfile.TemporaryDirectory() as out_dir:
        with contextlib.closing(__import__("socket").socket()) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.start_processes(
            _rank_main,
            args=(args.world_size, f"tcp://127.0.0.1:{port}", out_dir, args),
            nprocs=args.world_size,
            start_method="spawn",
        )
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(args.world_size)]


def state_memory_rows() -> list[dict[str, Any]]:
    return [
        {
            "versions": versions,
            "world_size": k,
            "columns": cols,
            "sharded_bytes": state_bytes_per_rank(STATE_N, cols, k, "sharded"),
            "replicated_bytes": state_bytes_per_rank(STATE_N, cols, k, "replicated"),
        }
        for versions, cols in STATE_COLUMNS.items()
        for k in (4, 8, 16, 32)
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch", type=int, default=4, help="local batch per rank")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=64, help="size of the sample-key space")
    parser.add_argument("--out", default=None, help="write results JSON here")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is a warm-up)")

    ranks = run(args)
    global_batch = args.batch * args.world_size
    embed_dim = create_model(args.model).config.embed_dim
    payload: dict[str, Any] = {"global_batch": global_batch, "embed_dim": embed_dim, "world_size": args.world_size}
    payload |= ranks[0]
    payload["state_memory"] = {"num_samples": STATE_N, "dtype": "float32", "rows": state_memory_rows()}
    payload["config"] = vars(args)
    payload["machine"] = machine_description()

    print(
        f"bytes per rank per step, {args.model} (d={embed_dim}), global batch {global_batch} on "
        f"{args.world_size} gloo ranks"
    )
    header = ["loss", "features", "feature_grad", "state", "param_grad", "logging", "total", "collectives"]
    print(f"{header[0]:<24}" + "".join(f"{h:>14}" for h in header[1:]))
    for name in LOSSES:
        r = payload[name]
        cells = (
            [r["feature_bytes"]] + [r[f"{c}_bytes"] for c in CATEGORIES[1:]] + [r["total_bytes"], len(r["collectives"])]
        )
        print(f"{name:<24}" + "".join(f"{c:>14,}" for c in cells))
    print(f"\nper-rank per-sample state, N = {STATE_N:,} keys, float32 (GB)")
    print(f"{'versions':<10}{'columns':>8}{'K':>5}{'sharded':>10}{'replicated':>12}")
    for row in payload["state_memory"]["rows"]:
        print(
            f"{row['versions']:<10}{row['columns']:>8}{row['world_size']:>5}"
            f"{row['sharded_bytes'] / 1e9:>10.3f}{row['replicated_bytes'] / 1e9:>12.3f}"
        )
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
