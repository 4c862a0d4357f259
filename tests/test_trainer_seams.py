"""The loop asks, the components decide: each component's cadence (`due`), TensorBoard as a tracker, FLOPs by
phase, and the trainer's progress as a checkpoint part (an older checkpoint is refused with the reason)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from model.flops import train_flops_per_sample
from tests.ranks import run_on_ranks
from tests.tiny_run import FixedBatches, tiny_config
from train.checkpoint.checkpointer import Checkpointer
from train.config import EvalConfig
from train.config_io import ConfigError
from train.evaluator import Evaluator
from train.metrics import MetricsLogger
from train.trackers import open_trackers

MASKED_STEPS, TUNING_STEPS = 4, 2


def test_each_component_owns_its_cadence(tmp_path: Path) -> None:
    cfg = tiny_config(str(tmp_path))
    cfg.checkpoint.every_steps = 4
    saves = Checkpointer(cfg, {}, 0, 1, lambda: None, total_steps=10)
    assert [s for s in range(1, 11) if saves.due(s)] == [4, 8]  # the last step's save ends the run (fit)
    logs = MetricsLogger(tmp_path, False, total_steps=10, every_steps=3)
    assert [s for s in range(1, 11) if logs.due(s)] == [3, 6, 9, 10]
    evaluator = Evaluator(EvalConfig(every_steps=2), 32, torch.device("cpu"), None, total_steps=10)
    assert not any(evaluator.due(s) for s in range(1, 11))  # no eval set: never due
    cfg.checkpoint.every_steps = 0
    assert not any(Checkpointer(cfg, {}, 0, 1, lambda: None, total_steps=10).due(s) for s in range(1, 11))


def test_tensorboard_is_a_tracker_that_hides_what_a_crashed_run_logged_after_the_resume(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = MetricsLogger(tmp_path, True, open_trackers(["tensorboard"], tmp_path, "p", "n", {}, {}), total_steps=4)
    for step in range(1, 5):
        first.log(step, {"train/loss": float(step)})
    first.close()
    trackers = open_trackers(["tensorboard"], tmp_path, "p", "n", {}, {}, resume_step=2)
    resumed = MetricsLogger(tmp_path, True, trackers, total_steps=4, resume_step=2)
    assert resumed.run_ids() == {}  # nothing to resume by: the directory is the run
    resumed.log(3, {"train/loss": 30.0})
    resumed.log_eval(3, {"zeroshot_top1": 0.5})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert [(e.step, e.value) for e in events.Scalars("eval/zeroshot_top1")] == [(3, 0.5)]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 3]  # metrics.jsonl dropped steps 3 and 4 the same way


def _train(rank: int, world_size: int, out_dir: str, resume: bool) -> dict:
    from train.trainer import Trainer

    cfg = tiny_config(out_dir)
    cfg.flip = dataclasses.replace(cfg.flip, mask_ratio=0.5, tuning_samples=8 * TUNING_STEPS, tuning_lr=1e-4)
    cfg.max_steps, cfg.checkpoint.every_steps = MASKED_STEPS, 2
    cfg.checkpoint.resume = "latest" if resume else None
    try:
        trainer = Trainer(cfg, FixedBatches(8, rank, world_size, MASKED_STEPS + TUNING_STEPS))
    except ConfigError as err:
        return {"refused": str(err)}
    with trainer:
        state = {"step": trainer.step, "trainer": trainer.state_dict()}
        if not resume:
            trainer.fit()
        phases = {p.name: train_flops_per_sample(trainer.model_config, p.mask_ratio) for p in trainer.plan.phases}
        return state | {"flops": phases, "peak": cfg.logging.peak_tflops * 1e12, "plan": trainer.plan}


@pytest.mark.slow
def test_the_trainer_is_a_checkpoint_part_and_an_older_checkpoint_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (trained,) = run_on_ranks(_train, 1, (str(out), False))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # mfu = samples/s x FLOPs per sample / peak: the FLOPs of the step's phase
        phase = trained["plan"].phase_at(row["step"] - 1).name
        assert row["perf/mfu"] * trained["peak"] / row["perf/samples_per_s"] == pytest.approx(trained["flops"][phase])
    assert trained["flops"]["pretrain"] < trained["flops"]["unmasked_tuning"]  # masked steps cost less

    last = out / "checkpoints" / f"step_{MASKED_STEPS + TUNING_STEPS:08d}"
    saved = torch.load(last / "trainer.pt", weights_only=True)
    assert saved == {"step": 6, "nonfinite": {"in_a_row": 0, "total": 0}, "trackers": {}}
    (resumed,) = run_on_ranks(_train, 1, (str(out), True))
    assert resumed["step"] == 6 and resumed["trainer"] == saved

    meta = json.loads((last / "meta.json").read_text())  # as the version before trainer.pt wrote it
    del meta["format"], meta["files"]["trainer.pt"]
    (last / "meta.json").write_text(json.dumps(meta | {"nonfinite": saved["nonfinite"]}))
    (last / "trainer.pt").unlink()
    (refused,) = run_on_ranks(_train, 1, (str(out), True))
    assert refused["refused"] == (
        f"{last} is in checkpoint format 1; this version reads format 2 (the trainer's "
        "progress in trainer.pt). Resume it with the version that wrote it, or start a "
        "new run"
    )
