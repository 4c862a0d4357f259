"""`--dry-run`: resolve a recipe and print its plan (batch, steps, milestones, size, memory) without data."""

from __future__ import annotations

import math
import os

import torch

from data.config import DataConfig, SourceSpec
from data.manifest import resolve_shards
from data.plan import steps_per_epoch as steps_per_epoch_for
from model import CLIP, CLIPConfig, get_model_config
from model.masking import num_kept
from train.config import TrainConfig
from train.losses import LossConfig
from train.losses.sample_state import state_bytes_per_rank
from train.reference_spec import FEATURES_FILE, missing_reference_files, reference_architecture
from train.schedules import phase_plan_for
from train.setup import RunSetup
from train.summary import trainable_counts

GIB = 1024**3


def activation_bytes_per_gpu(cfg: TrainConfig, mcfg: CLIPConfig) -> float:
    """Rough activation memory for one micro-batch (data.batch_size / optim.accum_steps): ~34 bytes per
    (token, channel, layer) at 16 bit (Korthikanti et al.), doubled for fp32; with checkpointing only each
    block's input is kept."""
    per_value = 2 if cfg.backend.precision in ("bf16", "fp16") else 4
    kept = 1 + num_kept(mcfg.vision.num_patches, cfg.flip.mask_ratio)
    towers = (
        (kept, mcfg.vision.width, mcfg.vision.layers),
        (mcfg.text.context_length, mcfg.text.width, mcfg.text.layers),
    )
    factor = per_value if cfg.model.grad_checkpointing else 17 * per_value
    micro_batch = cfg.data.batch_size // cfg.optim.accum_steps
    return sum(micro_batch * t * w * n * factor for t, w, n in towers)


def dry_run(run: RunSetup, world_size: int | None = None, gpus_per_node: int = 4) -> str:
    """The resolved plan as text; `world_size` defaults to the recipe's run.world_size, then WORLD_SIZE, then 1."""
    cfg = run.cfg
    world = world_size or cfg.run.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    source = (
        ""
        if world_size or cfg.run.world_size or "WORLD_SIZE" in os.environ
        else "; run.world_size is not set: the launch decides"
    )
    params, trainable = trainable_counts(cfg.model, run.model_config)
    global_batch = cfg.data.batch_size * world
    lines = [
        f"recipe: {cfg.run.name}  model {cfg.model.name} ({params / 1e6:.2f}M parameters)",
        f"planned for {world} rank(s) ({math.ceil(world / gpus_per_node)} node(s) of {gpus_per_node}{source})  "
        f"backend {cfg.backend.name}  precision {cfg.backend.precision}  grad checkpointing "
        f"{cfg.model.grad_checkpointing}",
        f"global batch: {global_batch} = {world} x {cfg.data.batch_size}"
        + (
            f" ({cfg.optim.accum_steps} micro-batches of {cfg.data.batch_size // cfg.optim.accum_steps} per rank)"
            if cfg.optim.accum_steps > 1
            else ""
        ),
        f"loss: {run.loss}",
    ]
    epoch_samples, rows, data_lines = planned_data(cfg.data)
    lines += data_lines
    indexed = bool(epoch_samples)
    if not indexed:
        epoch_samples, rows = cfg.dataset_samples, cfg.dataset_samples
    if epoch_samples:
        steps_per_epoch = steps_per_epoch_for(epoch_samples, cfg.data.batch_size, world, cfg.data.drop_last)
        plan = phase_plan_for(cfg, steps_per_epoch, global_batch)
        origin = "from the index" if indexed else "dataset_samples"
        lines.append(
            f"data ({origin}): {epoch_samples:,} pairs per epoch, {steps_per_epoch:,} steps/epoch, {cfg.epochs} "
            f"epochs, {plan.total_steps:,} steps, {plan.total_steps * global_batch / 1e6:.1f}M samples seen"
        )
        lines += [f"  {m}" for m in plan.milestones()]
    else:
        lines.append(
            "data: no readable index and dataset_samples not set: steps come from the shard manifest at launch"
        )
    state = run.backend_cls.state_bytes_per_gpu(cfg, run.backend_options, params, world)
    if trainable < params:  # frozen parameters keep their weights but have no gradient or optimizer state
        frozen = run.backend_cls.state_bytes_per_gpu(cfg, run.backend_options, params - trainable, world)
        saved = frozen["grads"] + frozen["optimizer"]
        state = state | {k: state[k] - frozen[k] for k in ("grads", "optimizer")}
        lines.append(
            f"trainable: {trainable / 1e6:.2f}M of {params / 1e6:.2f}M parameters (locked towers save "
            f"{saved / GIB:.2f} GiB of gradients and optimizer state per GPU)"
        )
    else:
        lines.append(f"trainable: all {params / 1e6:.2f}M parameters")
    acts = activation_bytes_per_gpu(cfg, run.model_config)
    reference, reference_lines = reference_bytes_per_gpu(cfg, run.loss)
    state = state | ({"reference": reference} if reference else {})
    detail = ", ".join(f"{k} {v / GIB:.2f}" for k, v in state.items())
    lines.append(
        f"memory per GPU (estimate, GiB): {(sum(state.values()) + acts) / GIB:.1f} = {detail}, "
        f"activations {acts / GIB:.2f}"
    )
    lines += reference_lines
    lines += _sample_state_line(cfg, run.loss, world, rows)
    return "\n".join(lines)


def planned_data(data: DataConfig) -> tuple[int, int, list[str]]:
    """(samples per epoch, per-sample state rows, one line per source) from the indexes of webdataset shards, as
    the launch will count them (data.sources: round(weight x samples) of each); (0, 0, [why]) when an index is not
    readable (the plan then falls back to dataset_samples)."""
    if data.source != "webdataset" or not (data.sources or data.path or data.webdataset.index):
        return 0, 0, []
    specs = data.sources or [SourceSpec(data.path, data.webdataset.index, 1.0)]
    epoch, rows, lines = 0, 0, []
    for spec in specs:
        try:
            shardset = resolve_shards(spec.path, spec.index, data.webdataset.allow_missing_shards)
        except (OSError, ValueError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            return 0, 0, [f"data: the index of {spec.path or spec.index} is not readable ({first[:300]})"]
        per_epoch = round(spec.weight * shardset.total)
        epoch, rows = epoch + per_epoch, rows + shardset.num_samples
        lines.append(
            f"  source {spec.path or spec.index}: {shardset.total:,} samples in {len(shardset.shards)} "
            f"shards" + (f" x weight {spec.weight:g} -> {per_epoch:,} per epoch" if data.sources else "")
        )
    return epoch, data.num_samples or rows, lines


def reference_bytes_per_gpu(cfg: TrainConfig, loss: LossConfig) -> tuple[float, list[str]]:
    """DRRho's frozen reference on every GPU: its weights at the run's precision (replicated, never sharded; see
    train.reference) plus one block's no-grad activations for a micro-batch. Precomputed features cost no GPU memory."""
    if loss.reference is None:
        return 0.0, []
    if loss.reference_features == "precomputed":
        missing = [f"  before training: {line}" for line in missing_reference_files(cfg, loss)]
        line = (
            f"reference: precomputed features ({FEATURES_FILE} in the index directory, memory-mapped on the host): "
            "no GPU memory, no forward pass"
        )
        return 0.0, [line, *missing]
    name, overrides = reference_architecture(loss)
    mcfg = get_model_config(name, **overrides)
    with torch.device("meta"):
        params = sum(p.numel() for p in CLIP(mcfg).parameters())
    per_value = 2 if cfg.backend.precision in ("bf16", "fp16") else 4
    micro_batch = cfg.data.batch_size // cfg.optim.accum_steps
    tokens, width = max((1 + mcfg.vision.num_patches, mcfg.vision.width), (mcfg.text.context_length, mcfg.text.width))
    transient = micro_batch * tokens * width * 8 * per_value  # one block: residual, qkv, attention out, 4x MLP
    total = params * per_value + transient
    lines = [
        f"reference: {name} ({params / 1e6:.2f}M parameters, frozen) replicated on every GPU: weights "
        f"{params * per_value / GIB:.2f} GiB + forward {transient / GIB:.2f} GiB (no autograd)"
    ]
    return total, lines + [f"  before training: {line}" for line in missing_reference_files(cfg, loss)]


def _sample_state_line(cfg: TrainConfig, loss: LossConfig, world: int, rows: int) -> list[str]:
    """FastCLIP's per-sample table: one row per dense sample row of the index (data.num_samples, the index's rows or
    dataset_samples)."""
    rows = cfg.data.num_samples or rows
    if loss.name != "fastclip" or not rows:
        return []
    columns = 2 + (7 if loss.version == "v2" else 0)  # log_u1, log_u2 (+ v2's taus and their Adam moments)
    per_rank = state_bytes_per_rank(rows, columns, world, loss.state_layout, getattr(torch, loss.state_dtype).itemsize)
    return [
        f"per-sample state: {rows:,} dense rows x {columns} columns, {loss.state_layout} {loss.state_dtype}: "
        f"{per_rank / GIB:.2f} GiB per rank"
    ]
