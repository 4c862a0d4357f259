"""DeepSpeed ZeRO-1/2/3 (optionally CPU offload) through accelerate's DeepSpeedPlugin.

The JSON in `ds_configs/` is the user's; "auto" values are filled here from the training
config (micro batch, clipping, precision, bucket sizes) because this model is not a
transformers model and accelerate cannot infer them. A JSON that contradicts the training
config is an error before any step.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deepspeed
import torch
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.utils import InitProcessGroupKwargs
from deepspeed.utils import safe_get_full_fp32_param
from torch import nn

from train.backends.base import (
    Agree,
    Backend,
    GroupsFn,
    ModelFn,
    OptimizerFn,
    adam_state_bytes,
    select_local_device,
)
from train.checkpoint.trusted import deepspeed_globals, weights_only_deepspeed, weights_only_torch_load
from train.faults.rank_sync import free_port


@dataclass
class DeepSpeedOptions:
    """`backend.options` of backend deepspeed."""

    ds_config: str = ""  # the DeepSpeed JSON (ds_configs/zero1/2/3.json); "auto" values are filled from the recipe


def resolve_ds_config(
    path: str, batch: int, grad_clip: float, precision: str, hidden: int, accum_steps: int = 1
) -> dict[str, Any]:
    """Load a DeepSpeed JSON and fill its "auto" values (the micro-batch and gradient_accumulation_steps follow
    optim.accum_steps); reject settings this trainer owns."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"backend.options.ds_config: {path} does not exist (see ds_configs/ for zero1/2/3 examples)")
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    for key in ("optimizer", "scheduler"):
        if key in cfg:
            raise ValueError(
                f"{path}: remove the {key!r} section; the optimizer and LR schedules come from the training "
                "config (optim.*, flip.*) so every backend trains identically"
            )
    zero = cfg.get("zero_optimization", {})
    if zero.get("stage", 0) not in (1, 2, 3):
        raise ValueError(f"{path}: zero_optimization.stage must be 1, 2 or 3, got {zero.get('stage')!r}")
    fills = {
        "train_micro_batch_size_per_gpu": batch // accum_steps,
        "gradient_accumulation_steps": accum_steps,
        "gradient_clipping": grad_clip,
    }
    for key, value in fills.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
        elif cfg[key] != value:
            raise ValueError(f'{path}: {key} = {cfg[key]!r} contradicts the training config ({value!r}); use "auto"')
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed from micro batch x world size
    for dtype in ("bf16", "fp16"):
        section = cfg.setdefault(dtype, {})
        wanted = precision == dtype
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = wanted
        elif bool(section["enabled"]) != wanted:
            raise ValueError(f'{path}: {dtype}.enabled contradicts backend.precision = {precision!r}; use "auto"')
    buckets = {
        "reduce_bucket_size": hidden * hidden,
        "allgather_bucket_size": hidden * hidden,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "stage3_param_persistence_threshold": 10 * hidden,
    }
    for key, value in buckets.items():
        if zero.get(key) == "auto":
            zero[key] = value
    return cfg


class DeepSpeedBackend(Backend):
    """The DeepSpeed engine owns gradients, (sharded) fp32 master weights and optimizer state."""

    name = "deepspeed"
    options_type = DeepSpeedOptions
    launcher_types = ("ACCELERATE_USE_DEEPSPEED",)
    optimizers = ("adamw",)  # ZeRO flattens the tensors LAMB's trust ratio is computed on
    resumes_on_other_world_size = False

    @classmethod
    def create(cls, cfg, options: dict[str, Any]) -> DeepSpeedBackend:  # noqa: ANN001
        return cls(cfg.backend.precision, options["ds_config"])

    @classmethod
    def check_config(cls, cfg, hidden_size: int) -> dict[str, Any]:  # noqa: ANN001
        """The JSON is read and its "auto" values filled once, here, before any process group exists."""
        super().check_config(cfg, hidden_size)
        path = cls.parse_options(cfg.backend.options).ds_config
        if not path:
            raise ValueError("backend.options.ds_config must name a DeepSpeed JSON (e.g. ds_configs/zero2.json)")
        return {
            "ds_config": resolve_ds_config(
                path,
                cfg.data.batch_size,
                cfg.optim.grad_clip,
                cfg.backend.precision,
                hidden_size,
                cfg.optim.accum_steps,
            )
        }

    @classmethod
    def launcher_conflicts(cls, cfg, env: Mapping[str, str]) -> list[str]:  # noqa: ANN001
        """Besides the shared checks: accelerate's own DeepSpeed JSON, when it is not the recipe's."""
        lines = super().launcher_conflicts(cfg, env)
        ours, theirs = cls.parse_options(cfg.backend.options).ds_config, env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if theirs and Path(theirs).resolve() != Path(ours).resolve():
            lines.append(
                f"deepspeed_config.deepspeed_config_file {theirs!r} is ignored; the recipe's "
                f"backend.options.ds_config {ours!r} is used"
            )
        return lines

    @classmethod
    def state_bytes_per_gpu(cls, cfg, options: dict[str, Any], params: int, world: int) -> dict[str, float]:  # noqa: ANN001, E501
        stage = options["ds_config"]["zero_optimization"]["stage"]
        return adam_state_bytes(
            params,
            cfg.backend.precision,
            world if stage == 3 else 1,
            world if stage >= 2 else 1,
            world,
            low_precision_weights=True,
        )

    @staticmethod
    def consolidate(directory: Path, empty_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with weights_only_torch_load(deepspeed_globals()):  # zero_to_fp32 loads with weights_only=False
            return get_fp32_state_dict_from_zero_checkpoint(str(directory / "deepspeed"), tag="state")

    def __init__(self, precision: str, ds_config: dict[str, Any]) -> None:
        super().__init__(precision)
        self.ds_config = ds_config
        select_local_device()
        if "RANK" not in os.environ and not torch.distributed.is_initialized():
            # One process started without torchrun's variables (`accelerate launch --num_processes 1`,
            # `python recipe.py`): give DeepSpeed the 1-rank group it needs, as torchrun would.
            os.environ.update(
                {
                    "RANK": "0",
                    "LOCAL_RANK": "0",
                    "WORLD_SIZE": "1",
                    "LOCAL_WORLD_SIZE": "1",
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(free_port()),
                }
            )
        # accelerate picks its distributed type from the launcher's environment; make it DeepSpeed even
        # when launched like the other backends (`accelerate launch --multi_gpu`, ACCELERATE_USE_CPU=1).
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        os.environ.pop("ACCELERATE_USE_CPU", None)
        plugin = DeepSpeedPlugin(hf_ds_config=ds_config)
        handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
        self.accelerator = Accelerator(deepspeed_plugin=plugin, kwargs_handlers=handlers)
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.device = self.accelerator.device
        self.stage = ds_config["zero_optimization"]["stage"]

    def train_autocast(self) -> contextlib.AbstractContextManager:
        """DeepSpeed's engine holds bf16/fp16 weights and switches an outer CUDA autocast off itself."""
        return contextlib.nullcontext()

    def cast_inputs(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.low_precision_dtype
        return images if dtype is None else images.to(dtype)

    def setup(self, model_fn: ModelFn, groups_fn: GroupsFn, optimizer_fn: OptimizerFn) -> None:
        self.model_fn = model_fn
        model = model_fn()
        optimizer = optimizer_fn(groups_fn(model))
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.engine: deepspeed.DeepSpeedEngine = self.model

    @property
    def raw_model(self) -> nn.Module:
        return self.engine.module

    def backward(self, loss: torch.Tensor) -> None:
        """With gradient_accumulation_steps > 1 (train.accumulate) the micro-batch losses already sum to the
        batch's gradient (no 1/gas scaling), and the engine's micro-step counter advances between them; the
        boundary's optimizer step is `step`."""
        self.engine.backward(loss, scale_wrt_gas=False)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()

    def step(self, grad_clip: float, agree: Agree) -> torch.Tensor | float | None:
        """The engine computes the norm inside its step and skips the update itself when the norm is not finite
        (ZeRO's overflow check, on for fp32 and, by default, bf16), so `agree` is asked afterwards: it still
        counts the skip and makes the ranks agree. A NaN loss with finite gradients is not caught here."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()  # the engine's own type
        agree(norm)
        return norm

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.engine.optimizer.param_groups  # the ZeRO optimizer's groups, which its step reads

    def local_shards(self) -> list[torch.Tensor]:
        """ZeRO-3: each parameter's partition without its padding (uninitialised memory); else the parameters."""
        if self.stage != 3:
            return super().local_shards()
        parts = []
        for param in self.raw_model.parameters():
            part = param.ds_tensor.reshape(-1)
            start = param.ds_zero_partition_rank * part.numel()
            parts.append(part[: max(0, min(part.numel(), param.ds_numel - start))])
        return parts

    def _full_value(self, param: nn.Parameter) -> torch.Tensor:
        """fp32 master value of a trained parameter, or the (gathered) weight of a frozen one."""
        master = safe_get_full_fp32_param(param) if param.requires_grad else None
        if master is not None:
            return master.detach().float().cpu().clone()
        gather = deepspeed.zero.GatheredParameters([param]) if self.stage == 3 else contextlib.nullcontext()
        with gather:
            return param.detach().float().cpu().clone()

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False)

    def load(self, directory: Path) -> None:
        weights_only_deepspeed(self.engine)  # a shared checkpoint cannot run code
        path, _ = self.engine.load_checkpoint(
            str(directory / "deepspeed"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory / 'deepspeed'}")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: self._full_value(param) for name, param in self.raw_model.named_parameters()}
