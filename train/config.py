"""The typed training config: one dataclass per YAML section, validated before any step runs.

One validation convention for every section (here, data.config, train.losses.config, the backends' options):
`validate()` raises ValueError whose message starts with the dotted key (`optim.lr ...`, `data.csv.separator ...`);
a section validates the sections it holds, TrainConfig.validate every top-level one, and read_config turns the
error into a ConfigError naming the file or the command line. A section also built outside a recipe (DataConfig,
data.sources' SourceSpec) calls `validate()` from `__post_init__` too."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.config import DataConfig
from data.remote import is_remote
from data.retry import check_retry_bound
from data.url_secrets import refuse_url_secrets
from model import MODEL_CONFIGS, get_model_config
from model.init_from import parse_init_from
from train.config_io import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from train.losses import LossConfig
from train.overrides import blame, switch_loss
from train.renamed_keys import refuse_renamed
from train.tracker_names import TRACKERS

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw", "lamb")


@dataclass
class RunConfig:
    """Where a run writes and how it is seeded."""

    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    world_size: int = 0  # ranks the recipe was written for (its global batch); 0 = any. Used by --dry-run.


@dataclass
class ModelSection:
    """Which named CLIP to build (see model.MODEL_CONFIGS) and per-field overrides."""

    name: str = "ViT-B-32"
    overrides: dict[str, Any] = field(default_factory=dict)
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile each transformer block (regional compile; model.compile_blocks)
    init_from: str = ""  # start from pretrained towers: "open_clip:PATH" or "hf:PATH" (model/init_from.py)
    # Fine-tuning (model/lock.py): freeze a tower except its last N blocks (and then its head); lock_norms=False
    # keeps the frozen part's LayerNorms trainable.
    lock_image: bool = False
    lock_image_unlocked_layers: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    lock_norms: bool = True

    def validate(self) -> None:
        if self.name not in MODEL_CONFIGS:
            raise ValueError(f"model.name {self.name!r} is unknown; choose one of {sorted(MODEL_CONFIGS)}")
        try:
            get_model_config(self.name, **self.overrides)  # the towers' own checks (a patch grid covering the image)
        except (KeyError, TypeError) as err:
            raise ValueError(f"model.overrides: {err}") from err
        except ValueError as err:
            raise ValueError(f"model {self.name}: {err}") from err
        if self.init_from:
            parse_init_from(self.init_from)
        if min(self.lock_image_unlocked_layers, self.lock_text_unlocked_layers) < 0:
            raise ValueError("model.lock_image_unlocked_layers and model.lock_text_unlocked_layers must be >= 0")


@dataclass
class OptimConfig:
    """Optimizer and the pre-training LR schedule (linear warmup, cosine to lr_min)."""

    name: str = "adamw"
    lr: float = 1e-3
    lr_min: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    max_nonfinite_steps: int = 5  # stop after this many skipped (NaN / inf loss or grad norm) steps in a row
    # Micro-batches per optimizer step (train.accumulate): data.batch_size is split into accum_steps forwards;
    # the loss still sees the whole batch, so the gradient is the big batch's.
    accum_steps: int = 1
    layer_decay: float = 1.0  # lr x layer_decay ** (blocks from the top) per tower (train.optim.param_groups)
    lr_scale_image: float = 1.0  # per-tower lr scales
    lr_scale_text: float = 1.0
    wd_exclude: list[str] = field(default_factory=list)  # fnmatch patterns of parameter names not decayed

    def validate(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {self.name!r}")
        if not all(math.isfinite(v) for v in (self.lr, self.lr_min, self.weight_decay, self.eps, self.grad_clip)):
            raise ValueError("optim.lr, lr_min, weight_decay, eps and grad_clip must be finite numbers")
        if self.lr <= 0 or self.lr_min < 0 or self.lr_min > self.lr:
            raise ValueError(f"optim needs 0 <= lr_min <= lr and lr > 0, got lr={self.lr}, lr_min={self.lr_min}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("optim.warmup_steps, optim.grad_clip and optim.weight_decay must be >= 0")
        if not (0 < self.layer_decay <= 1 and self.lr_scale_image >= 0 and self.lr_scale_text >= 0):
            raise ValueError("optim.layer_decay must lie in (0, 1] and optim.lr_scale_image / lr_scale_text be >= 0")
        if self.accum_steps < 1:
            raise ValueError(f"optim.accum_steps must be >= 1, got {self.accum_steps}")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"optim.max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")


@dataclass
class FlipConfig:
    """FLIP phase plan: masked pre-training, then unmasked tuning with its own LR schedule."""

    mask_ratio: float = 0.0
    tuning_samples: int = 0  # samples of unmasked tuning after pre-training; 0 = no tuning phase
    tuning_lr: float = 0.0
    tuning_lr_min: float = 0.0
    tuning_warmup_steps: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"flip.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.tuning_samples < 0:
            raise ValueError(f"flip.tuning_samples must be >= 0, got {self.tuning_samples}")
        if self.tuning_samples and not 0 <= self.tuning_lr_min <= self.tuning_lr:
            raise ValueError("flip.tuning_lr must be > 0 and >= flip.tuning_lr_min when flip.tuning_samples > 0")
        if self.tuning_samples and self.tuning_lr <= 0:
            raise ValueError("flip.tuning_lr must be > 0 when flip.tuning_samples > 0")


@dataclass
class BackendConfig:
    """Distributed backend and numeric precision."""

    name: str = "ddp"  # a name of train.backends' registry (checked with the backend's own options in train.setup)
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)  # the backend's own (DeepSpeed: ds_config), checked by it
    timeout_s: float = 1800.0  # collectives during setup, checkpointing and evaluation
    step_timeout_s: float = 600.0  # collectives of one training step: a hung rank ends the job after this

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"backend.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not (0 < self.timeout_s < math.inf and 0 < self.step_timeout_s < math.inf):
            raise ValueError("backend.timeout_s and backend.step_timeout_s must be positive numbers of seconds")


@dataclass
class CheckpointConfig:
    """When to save, how many to keep, and what to resume from (None, 'latest' or a path)."""

    every_steps: int = 1000
    keep_last: int = 3  # newest checkpoints kept; the newest healthy one and the milestones are kept besides
    keep_every_steps: int = 0  # checkpoints at multiples of this step are never pruned (milestones); 0 = none
    # A checkpoint is healthy when no step before it was skipped as non-finite in a row and its recent loss (mean
    # of the last 10 steps) is at most this factor times the newest healthy checkpoint's (train.checkpoint.files).
    healthy_loss_factor: float = 1.5
    # ... and its largest |weight| is at most this factor times the newest healthy checkpoint's: weights that blew
    # up (a too-high optim.lr) can still give a finite, even low, loss for a while.
    healthy_weight_factor: float = 10.0
    resume: str | None = None
    # Keys (or sections) that may differ from the checkpoint's config on resume although they change what is
    # trained or how the run is planned (see train.checkpoint.compat.REFUSED), e.g. [data.batch_size].
    allow_changes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.every_steps < 0 or self.keep_last < 1 or self.keep_every_steps < 0:
            raise ValueError("checkpoint.every_steps and keep_every_steps must be >= 0 and checkpoint.keep_last >= 1")
        for name in ("healthy_loss_factor", "healthy_weight_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 1:
                raise ValueError(f"checkpoint.{name} must be a number >= 1, got {value!r}")


@dataclass
class LoggingConfig:
    """Every `every_steps` steps (and the last) the step's scalars are read from the device and go to the
    console, TensorBoard and metrics.jsonl; no other step waits for the device.

    peak_tflops: one device's peak for `perf/mfu` (default: H100/H200 dense bf16).
    """

    every_steps: int = 10
    tensorboard: bool = True
    trackers: list[str] = field(default_factory=list)  # more of train.tracker_names.TRACKERS: wandb, mlflow
    project: str = "fastflip"  # the wandb project / MLflow experiment
    peak_tflops: float = 989.0

    def validate(self) -> None:
        if self.every_steps < 1:
            raise ValueError("logging.every_steps must be >= 1")
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown:
            raise ValueError(f"logging.trackers: {unknown} unknown; choose from {TRACKERS}")
        if not (math.isfinite(self.peak_tflops) and self.peak_tflops > 0):
            raise ValueError(f"logging.peak_tflops must be a positive number, got {self.peak_tflops}")


@dataclass
class EvalConfig:
    """Zero-shot / retrieval evaluation in the loop (paths empty = off)."""

    every_steps: int = 0  # 0 = only at the end
    zeroshot: str = ""  # labelled webdataset shards or a class-per-folder image tree (ImageNet val)
    classnames: str = ""  # registry name ("imagenet", "fashion-mnist"); "" = from the shards' manifest
    templates: str = ""  # registry name; "" = same as classnames
    retrieval: str = ""  # caption shards or csv
    batch_size: int = 256

    def validate(self) -> None:
        if self.every_steps < 0 or self.batch_size < 1:
            raise ValueError("eval.every_steps must be >= 0 and eval.batch_size >= 1")
        if self.every_steps and not (self.zeroshot or self.retrieval):
            raise ValueError("eval.every_steps is set but neither eval.zeroshot nor eval.retrieval is")


@dataclass
class TrainConfig:
    """A whole run. `epochs` counts pre-training epochs; FLIP tuning follows them."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(kw_only=True)  # required: no run without a data.path
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    flip: FlipConfig = field(default_factory=FlipConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    epochs: int = 1
    max_steps: int = 0  # stop pre-training early after this many steps; 0 = full epochs
    dataset_samples: int = 0  # training pairs, for --dry-run planning without data (0 = unknown)

    def validate(self) -> None:
        """Each section's own checks (DataConfig runs its own when built: data code builds it directly); the checks
        across sections (model vs data, backend) are train.setup's."""
        sections = (
            self.model,
            self.loss,
            self.optim,
            self.flip,
            self.backend,
            self.checkpoint,
            self.logging,
            self.eval,
        )
        for section in sections:
            section.validate()
        if self.data.batch_size % self.optim.accum_steps:
            raise ValueError(
                f"data.batch_size {self.data.batch_size} must split evenly into optim.accum_steps "
                f"{self.optim.accum_steps} micro-batches"
            )
        if self.epochs < 1 or self.max_steps < 0 or self.dataset_samples < 0:
            raise ValueError("epochs must be >= 1, max_steps >= 0 and dataset_samples >= 0")
        d = self.data
        urls = (d.path, d.webdataset.index, *(x for s in d.sources for x in (s.path, s.index)))
        if any(is_remote(u) for u in urls if u):
            check_retry_bound(d.webdataset.remote_retry_s, self.backend.step_timeout_s)


def read_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file + `key.path=value` overrides -> a TrainConfig that passed each section's checks; every error is
    a ConfigError naming the file and key. Torch-free, so a launched rank reports a bad value before torch loads;
    train.setup.load_setup adds the checks across sections."""
    overrides = overrides or []
    raw = load_yaml(path)
    refuse_renamed(raw, overrides, str(path))
    cfg = from_dict(TrainConfig, apply_overrides(switch_loss(raw, overrides, path), overrides), str(path))
    try:
        cfg.validate()
        refuse_url_secrets(to_dict(cfg))  # every URL the recipe accepts (data, eval, init_from, ...)
    except ValueError as err:
        raise ConfigError(f"{blame(path, overrides, str(err))}: {err}") from err
    return cfg
