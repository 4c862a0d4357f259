"""The training loop: read top to bottom. Config in, checkpoints and logs out.

A step never waits for the device: the loss, grad norm, temperature and loss statistics stay
device tensors and are read (one transfer) only on logging steps, so the host runs ahead and
queues the next step while the device works. The loop asks its components whether they are due
(metrics, checkpoints, evaluation); the trainer's own progress is one more checkpoint part.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from data.batch_buffer import give_back
from data.device_transforms import device_images, resolve_resize
from data.loader import build_train_loader
from data.retry import DataUnavailable
from data.tokenizer import get_tokenizer
from data.types import Batch, TrainStream, batches
from model import CLIP
from model.flops import train_flops_per_sample
from model.init_from import load_pretrained
from model.lock import lock_tower
from train.accumulate import cached_feature_backward
from train.checkpoint.checkpointer import Checkpointer
from train.checkpoint.files import checkpoint_name
from train.checkpoint.parts import checkpoint_parts
from train.config import TrainConfig
from train.config_io import to_dict
from train.evaluator import Evaluator
from train.faults.nonfinite import StepGuard, TrainingDiverged, all_finite
from train.faults.preemption import PreemptionFlag
from train.faults.rank_sync import all_ranks, largest, summed
from train.faults.run_lock import RunLock
from train.faults.timeouts import set_collective_timeout, watch
from train.losses import GlobalTemperature, build_loss, repartition_loss_states
from train.metrics import MetricsLogger, ThroughputWindow, setup_console_logging
from train.optim import build_optimizer, param_groups
from train.reference import build_reference, check_same_reference, reference_meta
from train.schedules import phase_plan_for
from train.setup import RunSetup, resolve
from train.summary import describe_data, frozen_line

logger = logging.getLogger("fastflip")

Probe = Callable[[str], None]


def _no_probe(_: str) -> None:
    return None


class Trainer:
    """Owns one run: backend, data stream, loss state, temperature, schedules, checkpoints.

    `loader` may be given (any data.types.TrainStream) to train on fixed batches. The trainer is `Stateful`: its
    progress (step, non-finite counters, tracked runs) is the checkpoint's "trainer" part.
    """

    def __init__(self, run: RunSetup | TrainConfig, loader: TrainStream | None = None) -> None:
        run = run if isinstance(run, RunSetup) else resolve(run)
        cfg = self.cfg = run.cfg
        self.loss_cfg, self.tau, self.model_config = run.loss, run.tau, run.model_config
        self.backend = run.backend_cls.create(cfg, run.backend_options)
        setup_console_logging(self.backend.is_main)
        for line in run.launcher_conflicts if self.backend.is_main else ():
            logger.warning("accelerate config: %s", line)
        rank, world = self.backend.dp_rank, self.backend.dp_world_size  # data-parallel position
        self.tokenizer = get_tokenizer(self.model_config.text.context_length)
        if self.backend.is_main and loader is None:
            logger.info("reading the training data's index: %s", describe_data(cfg.data))
        data = resolve_resize(cfg.data, self.backend.device)  # resize "auto": on the device when it is CUDA
        self.loader: TrainStream = build_train_loader(data, rank, world, self.tokenizer) if loader is None else loader
        self.global_batch = cfg.data.batch_size * world
        if cfg.run.world_size and cfg.run.world_size != world and self.backend.is_main:
            logger.warning(
                "recipe %s was written for %d ranks (global batch %d) but runs on %d (global batch %d)",
                cfg.run.name,
                cfg.run.world_size,
                cfg.run.world_size * cfg.data.batch_size,
                world,
                self.global_batch,
            )
        self.plan = phase_plan_for(cfg, self.loader.steps_per_epoch, self.global_batch)

        random.seed(cfg.run.seed)  # the global RNGs a checkpoint saves: the same in a resumed and an uninterrupted run
        np.random.seed(cfg.run.seed)
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        if self.backend.is_main:
            logger.info(
                "building the model %s on %d rank(s) (backend %s, %s)%s",
                cfg.model.name,
                self.backend.world_size,
                cfg.backend.name,
                cfg.backend.precision,
                f", starting from {cfg.model.init_from}" if cfg.model.init_from else "",
            )
            logger.info("%s", frozen_line(cfg.model, self.model_config))
        self.backend.setup(self._build_model, self._param_groups, self._optimizer)
        self._timeout = cfg.backend.timeout_s  # on every group that exists now (DeepSpeed's too)
        set_collective_timeout(self._timeout)
        device = self.backend.device
        self.mask_generator = torch.Generator(device=device).manual_seed(cfg.run.seed * 1000 + rank + 1)
        group = self.backend.dp_group
        self.temperature = GlobalTemperature(self.tau, cfg.optim.betas, cfg.optim.eps, device, group)
        self.loss = build_loss(self.loss_cfg, self.loader.num_samples, group)
        self.reference = build_reference(  # DRRho model steering (frozen; never saved or exported): train.reference
            cfg, self.loss_cfg, device, self.backend.low_precision_dtype, self.backend.autocast
        )
        self.guard = StepGuard(cfg.optim.max_nonfinite_steps, PreemptionFlag(), self.backend.device)
        parts = checkpoint_parts(
            self.backend, self.loss, repartition_loss_states, self.temperature, self.loader, self.mask_generator, self
        )
        self.checkpoints = Checkpointer(
            cfg,
            parts,
            self.backend.rank,
            self.backend.world_size,
            self.backend.barrier,
            run.resolved,
            total_steps=self.plan.total_steps,
        )

        self.step, self.epoch = 0, 0
        self._tracker_ids: dict[str, str] = {}  # a resumed run continues its tracked runs (load_checkpoint)
        self._batches: Iterator[tuple[int, Batch]] | None = None  # (epoch, batch), from the first next_batch on
        self._last_batch: Batch | None = None  # a rank whose data became unavailable repeats it until all stop
        self._data_lost: Batch | None = None
        self.out = Path(cfg.run.output_dir)
        self.lock = RunLock.for_run(self.out, self.backend.is_main)  # rank 0 holds it; all raise if taken
        resume_from = self.checkpoints.resume_target()
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        if self.backend.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        total = self.plan.total_steps
        self.evaluator = Evaluator(
            cfg.eval,
            cfg.data.image_size,
            self.backend.device,
            self.tokenizer,
            rank,
            world,
            self.backend.dp_group,
            total_steps=total,
        )
        self.metrics = MetricsLogger.for_run(cfg, self.backend.is_main, total, self.step, self._tracker_ids)
        self.losses = torch.full((total,), float("nan"), dtype=torch.float64, device=device)
        # train FLOPs per sample of each phase (masked pre-training, unmasked tuning), counted once
        self._flops = {p.name: train_flops_per_sample(self.model_config, p.mask_ratio) for p in self.plan.phases}
        self._window = ThroughputWindow()

    # ----- construction -------------------------------------------------------------------
    def _build_model(self) -> CLIP:
        cfg = self.cfg.model
        model = CLIP(self.model_config)  # with the loss's logit init (and SigLIP's bias): train.checkpoint.resolved
        for name in ("logit_scale", "logit_bias"):  # trained by self.temperature in fp32, outside the backend
            if hasattr(model, name):
                getattr(model, name).requires_grad_(False)
        for tower, locked, layers in (
            ("visual", cfg.lock_image, cfg.lock_image_unlocked_layers),
            ("text", cfg.lock_text, cfg.lock_text_unlocked_layers),
        ):
            if locked:
                lock_tower(model, tower, layers, cfg.lock_norms)
        model.set_grad_checkpointing(cfg.grad_checkpointing)
        if cfg.compile:
            model.compile_blocks()
        if cfg.init_from and not model.logit_scale.is_meta:  # full_model() rebuilds on meta: nothing to load
            load_pretrained(model, cfg.init_from)
        return model

    def _param_groups(self, model: torch.nn.Module) -> list[dict[str, object]]:
        o = self.cfg.optim
        scales = {"visual": o.lr_scale_image, "text": o.lr_scale_text}
        return param_groups(model, o.weight_decay, o.layer_decay, scales, o.wd_exclude)

    def _optimizer(self, groups: list[dict[str, object]]) -> torch.optim.Optimizer:
        o = self.cfg.optim
        return build_optimizer(o.name, groups, o.lr, o.betas, o.eps)

    # ----- one step -----------------------------------------------------------------------
    def inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, tokens, index) on the device, the images made there from whatever the batch carries."""
        device = self.backend.device
        images = device_images(batch, device, self.cfg.data.image_size)
        tokens = batch["tokens"].to(device, non_blocking=True)
        index = batch["index"].to(device, non_blocking=True)
        return self.backend.cast_inputs(images), tokens, index

    def _encode(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.backend.train_autocast():
            image_features, text_features, _ = self.backend.model(images, tokens)
        return image_features, text_features

    def train_step(self, batch: Batch, probe: Probe = _no_probe) -> dict[str, Any]:
        """Forward, loss, backward, optimizer and temperature steps. Returns device tensors (and host
        floats) to log; reads nothing back from the device. `probe(phase)` is called after each phase
        (benchmarks/bench_train.py times them)."""
        phase = self.plan.phase_at(self.step)
        lr = self.plan.lr_at(self.step)
        self.backend.set_lr(lr)
        self.backend.raw_model.set_mask_ratio(phase.mask_ratio, generator=self.mask_generator)
        images, tokens, index = self.inputs(batch)
        probe("host_to_device")
        t = self.temperature
        accum = self.cfg.optim.accum_steps
        ref = {} if self.reference is None else {"reference": self.reference(images, tokens, batch["index"], accum)}
        if accum > 1:  # forward, loss and backward per micro-batch (train.accumulate)
            out = cached_feature_backward(
                self._encode,
                images,
                tokens,
                accum,
                lambda e1, e2: self.loss(e1, e2, index, t.logit_scale, t.logit_bias, **ref),
                self.backend.backward,
                self.mask_generator,
            )
        else:
            image_features, text_features = self._encode(images, tokens)
            probe("forward")
            out = self.loss(image_features.float(), text_features.float(), index, t.logit_scale, t.logit_bias, **ref)
            probe("loss_and_state")
            self.backend.backward(out.loss)
        probe("backward")
        grad_norm = self.backend.step(self.cfg.optim.grad_clip, lambda norm: self.guard.agree(out.value, norm))
        self.temperature.step(lr, phase.lr, skip=self.guard.skip)  # non-finite somewhere: nothing moves
        self.guard.record(self.step + 1, out.value, grad_norm, lr)
        probe("optimizer")
        self.losses[self.step] = out.value
        self.step += 1

        scalars: dict[str, Any] = {
            "train/loss": out.value,
            "train/epoch": float(self.epoch),
            "schedule/lr": lr,
            "schedule/mask_ratio": phase.mask_ratio,
            "schedule/logit_scale": self.temperature.logit_scale.detach()[0],
            "train/nonfinite_steps": self.guard.total,
        }
        if self.tau.trainable:
            scalars |= {"schedule/tau": self.temperature.tau[0], "schedule/lr_tau": self.temperature.last_lr[0]}
        if grad_norm is not None:
            scalars["train/grad_norm"] = grad_norm
        return scalars | out.stats

    # ----- the loop -----------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to the end of the phase plan; checkpoint every N steps and at the end."""
        cfg, total = self.cfg, self.plan.total_steps
        if self.backend.is_main:
            logger.info("phase plan: %s", "; ".join(self.plan.milestones()))
            logger.info(
                "global batch %d (%d ranks x %d), %d steps/epoch, %d steps in all, backend %s, precision %s",
                self.global_batch,
                self.backend.world_size,
                cfg.data.batch_size,
                self.loader.steps_per_epoch,
                total,
                cfg.backend.name,
                cfg.backend.precision,
            )
        first_step, started = self.step, time.perf_counter()
        self.guard.preemption.install()
        try:
            self.train_steps(total)
            self.guard.drain()  # the last steps' flags: divergence or a late preemption signal
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err}; {self.checkpoints.resume_advice()}") from None
        finally:
            self.guard.preemption.restore()
        wall = time.perf_counter() - started
        if not self.checkpoints.has(self.step):  # resuming a finished run saves nothing
            self.save_checkpoint()
        preempted = self.guard.preempted  # saved at the current step; the requeued job resumes from it
        results = {} if preempted else self.evaluate()
        self.metrics.close()
        return {
            "losses": self.losses[first_step : self.step].tolist(),
            "steps": self.step,
            "train_seconds": wall,
            "samples": (self.step - first_step) * self.global_batch,
            "eval": results,
            "preempted": preempted,
            "data_unavailable": self.guard.data_unavailable,
        }

    def train_steps(self, until: int) -> None:
        """Train up to step `until` (across epochs), logging, checkpointing and evaluating when each is due."""
        self._window.restart(self.step)
        while self.step < min(until, self.plan.total_steps):
            waited = time.perf_counter()
            batch = self.next_batch()
            self._window.data_s += time.perf_counter() - waited
            with self._collectives(f"training step {self.step + 1}", self.cfg.backend.step_timeout_s):
                scalars = self.train_step(batch)
                if self.metrics.due(self.step):
                    self.log(scalars)  # sums the loader's skip counts over ranks: a collective of the step
            if self.checkpoints.due(self.step):
                self.save_checkpoint()
                self._window.restart(self.step)
            if self.evaluator.due(self.step):
                self.evaluate()
                self._window.restart(self.step)
            if self.guard.preempted:  # every rank stops after the same step
                return

    @contextlib.contextmanager
    def _collectives(self, operation: str, seconds: float) -> Iterator[None]:
        """Collectives in the block time out after `seconds`, naming `operation` and the silent ranks."""
        if seconds != self._timeout:
            set_collective_timeout(seconds)
            self._timeout = seconds
        with watch(operation, seconds):
            yield

    def next_batch(self) -> Batch:
        """The stream's next batch, epoch after epoch (data.types.batches: the loss learns each epoch as it starts).
        The batch before it goes back to the loader's buffer pool (data.batch_buffer): its step made its own copy
        in `inputs`. The last one is kept whole, to repeat if the data becomes unavailable."""
        if self._data_lost is not None:
            return self._data_lost
        if self._batches is None:
            self._batches = batches(self.loader, self.epoch, self.loss.set_epoch)
        try:
            self.epoch, batch = next(self._batches)
        except DataUnavailable as err:
            if self._last_batch is None:  # nothing trained in this job: `latest` is already where to resume
                raise
            logger.error(
                "data unavailable on rank %d: %s; saving at the current step, then stopping (this rank "
                "repeats its last batch for the few steps the ranks take to agree)",
                self.backend.rank,
                err,
            )
            self.guard.preemption.data_unavailable = str(err)
            self._data_lost = batch = self._last_batch
        if self._last_batch is not None and batch is not self._last_batch:
            give_back(self._last_batch)
        self._last_batch = batch
        return batch

    def log(self, scalars: dict[str, Any]) -> None:
        """Read the step's device scalars in one transfer and log them with the window's throughput."""
        names = [k for k, v in scalars.items() if isinstance(v, torch.Tensor)]
        if names:
            values = torch.stack([scalars[k].detach().reshape(()).double() for k in names]).tolist()
            scalars = scalars | dict(zip(names, values, strict=True))
        peak = self.cfg.logging.peak_tflops * 1e12 * self.backend.world_size
        flops = self._flops[self.plan.phase_at(self.step - 1).name]  # the phase of the step just taken
        scalars |= self._window.perf(self.step, self.global_batch, flops, peak)
        for reason, count in summed(self.loader.skipped_counts()).items():  # over ranks
            scalars[f"data/skipped_{reason}"] = float(count)
        self.metrics.log(self.step, scalars)
        self._window.restart(self.step)

    def evaluate(self) -> dict[str, Any]:
        """Every rank holds a full-parameter model and evaluates its share of the eval sets; rank 0 logs."""
        if not self.evaluator.enabled:
            return {}
        with (
            self._collectives(f"evaluation at step {self.step}", self.cfg.backend.timeout_s),
            self.backend.full_model() as model,
            self.backend.autocast(),
        ):
            results = self.evaluator(model)
        self.metrics.log_eval(self.step, results)
        return results

    def close(self, completed: bool = True) -> None:
        """Close the metric files (also after an error), stop the loader workers and leave the process group (see
        `Backend.close`); `with Trainer(cfg) as trainer:` calls it. Workers left to the launcher, which stops each
        rank's process group at the end, would hold it until they notice their rank is gone (they ignore SIGTERM)."""
        self.metrics.close()
        self.loader.close()
        if self.lock is not None:
            self.lock.release()
        self.backend.close(completed)

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        self.close(completed=error_type is None)

    # ----- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's "trainer" part: the step, the non-finite counters and the tracked runs' ids (rank 0's,
        the rank that writes it; a resumed run continues them). The epoch is the data stream's."""
        return {"step": self.step, "nonfinite": self.guard.state_dict(), "trackers": self.metrics.run_ids()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.guard.load_state_dict(state["nonfinite"])
        self._tracker_ids = dict(state["trackers"])

    def save_checkpoint(self) -> Path:
        """Every part of the state map, then meta.json (what the checkpoint is, for people and tools) last; never
        NaN / inf weights."""
        about = {
            "step": self.step,
            "epoch": self.epoch,
            "phase": self.plan.phase_at(max(self.step - 1, 0)).name,
            "trackers": self.metrics.run_ids(),  # evaluation.watch logs to the run's MLflow run
        }
        if self.reference is not None:  # its source and hash, never its weights
            about["reference"] = reference_meta(self.reference)
        with self._collectives(f"saving checkpoint {checkpoint_name(self.step)}", self.cfg.backend.timeout_s):
            about["health"] = self.checkpoints.health(
                self.losses[: self.step], int(self.guard.in_a_row), self._max_abs_weight()
            )
            path = self.checkpoints.save(about, self._dataset_facts(), self._weights_finite)
        if self.backend.is_main:
            logger.info("saved checkpoint %s", path)
        return path

    def _dataset_facts(self) -> dict[str, Any]:
        """What the data measured (the per-sample table's size): a resume on other data is refused."""
        return {"num_samples": self.loader.num_samples, "rows": "dense"}

    def _max_abs_weight(self) -> float:
        """The largest |trainable parameter| over every rank's shards (checkpoint health; a MAX all-reduce); frozen
        ones (logit_scale, SigLIP's logit_bias -10) say nothing about training."""
        pairs = zip(self.backend.raw_model.parameters(), self.backend.local_shards(), strict=True)
        local = [t.detach().abs().max().float() for p, t in pairs if p.requires_grad and t.numel()]
        return largest(float(torch.stack(local).max()) if local else 0.0)

    def _weights_finite(self) -> bool:
        """All ranks agree whether every rank's parameter shards (and the temperature) are finite."""
        return all_ranks(all_finite([*self.backend.local_shards(), self.temperature.logit_scale]))

    def load_checkpoint(self, path: Path) -> None:
        """Restore the state map after the Checkpointer accepted the checkpoint (train.checkpoint.compat);
        a different world size re-partitions the state."""
        meta = self.checkpoints.check_resumable(
            path,
            self._dataset_facts(),
            self.global_batch,
            self.backend.resumes_on_other_world_size,
            keys_are_rows=self.loader.keys_are_rows,
        )
        check_same_reference(path, meta.get("reference"), reference_meta(self.reference))
        saved_world, world = meta["world_size"], self.backend.world_size
        with self._collectives(f"loading checkpoint {path.name}", self.cfg.backend.timeout_s):
            self.checkpoints.load(path, saved_world)  # every part: this trainer's progress too
        if saved_world != world and self.backend.is_main:
            logger.warning(
                "resuming a %d-rank checkpoint on %d ranks: the step counter continues, but the phase plan (steps "
                "per epoch, LR milestones) is rebuilt for the new global batch and the data stream restarts at "
                "the next epoch",
                saved_world,
                world,
            )
        self.epoch = int(self.loader.state_dict()["epoch"])
        if self.backend.is_main:
            logger.info(
                "resumed from %s at step %d, epoch %d (saved on %d ranks)", path, self.step, self.epoch, saved_world
            )


__all__ = ["Trainer"]
