"""studies/study.py: the arms it plans, the recipes it writes, resume, timing, diagnostics and the report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml

from studies.study import (
    CHOICES,
    LOSSES,
    Arm,
    Settings,
    Study,
    arm_config,
    choice_arms,
    choose,
    final_arms,
    flip_steps,
    loss_section,
    pending,
    plan_arms,
    steps_per_epoch,
)
from studies.study_diagnostics import _log_g, _log_g_batch, parse_metrics
from studies.study_report import gap_to_openclip, write_report
from tests.ranks import REPO
from train.setup import load_config


@pytest.mark.slow  # a studies/study.py subprocess
def test_dry_run_lists_the_arms() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "studies" / "study.py"), "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    lines = [line.split()[1] for line in out.splitlines() if line[:3].strip().endswith(".")]
    for seed in range(5):
        assert f"openclip-b64-e20-s{seed}" in lines and f"fastclip-v3-b64-e20-s{seed}" in lines
    for arm in (
        "fastclip-v1-b64-e20-s0",
        "fastclip-v0-b64-e20-s0",
        "fastclip-v2-b64-e20-s0",
        "openclip-b128-mask0.5-e20-s0",
        "fastclip-v3-b128-mask0.5-e20-s0",
        "openclip-b256-e40-s0",
        "openclip-b64-e4-s0",
        "fastclip-v3-b64-e10-s0",
    ):
        assert arm in lines
    assert lines[:2] == ["openclip-b64-e20-s0", "fastclip-v3-b64-e20-s0"], "the 5-seed comparison runs first"
    assert len(lines) == len(set(lines)) and f"{len(lines)} arms" in out


def test_arm_recipes_validate_and_scale_gamma_to_the_run(tmp_path: Path) -> None:
    s = Settings()
    for arm in plan_arms(s):
        steps = flip_steps(arm, s, {"step_s": {"b": 0.1, "2b": 0.2, "2b_mask0.5": 0.15}}) if arm.mask_ratio else None
        config = arm_config(arm, s, tmp_path / "data", tmp_path / arm.id, steps)
        path = tmp_path / f"{arm.id}.yaml"
        path.write_text(yaml.safe_dump(config))
        cfg = load_config(path)  # unknown keys or bad values fail here
        assert cfg.data.batch_size == arm.batch and cfg.run.seed == arm.seed
        if cfg.loss.name == "fastclip":
            assert cfg.loss.gamma_decay_epochs == max(1, cfg.epochs // 2)
    with pytest.raises(ValueError, match="calibrated"):
        arm_config(Arm("openclip", 128, 20, 0, "flip", mask_ratio=0.5), s, tmp_path, tmp_path)


def test_flip_arm_gets_its_twins_wall_clock() -> None:
    s = Settings()
    cal = {"step_s": {"b": 0.1, "2b": 0.2, "2b_mask0.5": 0.15}}
    masked, tuning = flip_steps(Arm("fastclip-v3", 128, s.epochs, 0, "flip", mask_ratio=0.5), s, cal)
    twin = s.epochs * steps_per_epoch(s, s.batch) * 0.1
    assert tuning == steps_per_epoch(s, 128)
    assert masked * 0.15 + tuning * 0.2 == pytest.approx(twin, abs=0.15)


def test_resume_skips_finished_arms(tmp_path: Path) -> None:
    s = Settings(seeds=2)
    arms = plan_arms(s)
    study = Study(s, runs={arms[0].id: {"status": "done"}, arms[1].id: {"status": "failed (exit 1)"}})
    study.save(tmp_path / "study.json")
    again = Study.load(tmp_path / "study.json", s)
    assert [a.id for a in pending(arms, again)] == [a.id for a in arms[1:]]
    with pytest.raises(SystemExit, match="other settings"):
        Study.load(tmp_path / "study.json", Settings(seeds=3))


def test_wall_clock_counts_logged_windows(tmp_path: Path) -> None:
    rows = [
        {"step": 2, "train/loss": 1.0, "perf/samples_per_s": 64.0},  # 2 steps of 64 in 2 s
        {"step": 2, "eval/text_to_image_R@1": 0.1},
        {"step": 3, "train/loss": 0.9, "perf/samples_per_s": 32.0},  # 1 step in 2 s (eval not counted)
        {"step": 4, "train/loss": 0.8, "perf/samples_per_s": 64.0, "schedule/tau": 0.05},
        {"step": 4, "eval/text_to_image_R@1": 0.2},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    r = parse_metrics(tmp_path / "m.jsonl", batch=64, steps_per_epoch=2)
    assert [(e["step"], e["samples"], e["train_seconds"]) for e in r["evals"]] == [(2, 128, 2.0), (4, 256, 5.0)]
    assert r["final"]["text_to_image_R@1"] == 0.2 and r["trajectory"][-1]["schedule/tau"] == 0.05


def test_g_estimates_match_a_float64_loop() -> None:
    g = torch.Generator().manual_seed(0)
    diff = torch.randn(6, 6, generator=g, dtype=torch.float64)
    exact = [math.log(sum(math.exp(diff[i, j]) for j in range(6) if j != i) / 5) for i in range(6)]
    assert torch.allclose(_log_g(diff), torch.tensor(exact, dtype=torch.float64), atol=1e-12)
    rows, batches = torch.tensor([4, 1]), torch.tensor([[4, 0, 2], [3, 1, 5]])
    by_hand = [
        math.log((math.exp(diff[4, 0]) + math.exp(diff[4, 2])) / 2),
        math.log((math.exp(diff[1, 3]) + math.exp(diff[1, 5])) / 2),
    ]
    assert torch.allclose(_log_g_batch(diff, rows, batches), torch.tensor(by_hand, dtype=torch.float64), atol=1e-12)


def _run(arm: Arm, r1: float) -> dict:
    final = {
        "text_to_image_R@1": r1,
        "text_to_image_R@5": 2 * r1,
        "image_to_text_R@1": r1,
        "zeroshot_top1": 0.5,
        "samples": 1000,
        "step": 10,
        "train_seconds": 10.0,
    }
    loss = loss_section(arm, Settings(), arm.epochs)
    return {
        "id": arm.id,
        "label": arm.label,
        "arm": arm.__dict__,
        "status": "done",
        "final": final,
        "evals": [final],
        "train_seconds": 10.0,
        "trajectory": [],
        "config": {"loss": loss},
    }


def test_report_table_and_gap(tmp_path: Path) -> None:
    s = Settings(seeds=2, sweep=(20,))
    runs = {}
    for seed, (o, f) in enumerate([(0.10, 0.13), (0.12, 0.15)]):
        for loss, value in (("openclip", o), ("fastclip-v3", f)):
            arm = Arm(loss, 64, 20, seed, "main")
            runs[arm.id] = _run(arm, value)
    failed = Arm("fastclip-v2", 64, 20, 0, "versions")
    runs[failed.id] = {"id": failed.id, "status": "failed (exit 1)"}
    gap = gap_to_openclip(
        {
            k.rsplit("-s", 1)[0]: [r for r in runs.values() if r["id"].startswith(k.rsplit("-s", 1)[0])]
            for k in runs
            if runs[k]["status"] == "done"
        },
        s.__dict__,
    )
    assert gap["gap"] == pytest.approx(0.03) and gap["se"] == pytest.approx(math.sqrt(2 * 0.0002 / 2))
    write_report(runs, s.__dict__, {}, {}, tmp_path, {})
    assert (tmp_path / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "study.md").read_text()
    assert "| openclip@64 | main | 20 | 2 | 1,000 | 10 | 11.0 ± 1.4 |  |" in text
    assert "| fastclip-v3@64 | main | 20 | 2 | 1,000 | 10 | 14.0 ± 1.4 | +3.0 |" in text and "+3.00 points" in text
    assert "Not finished: fastclip-v2-b64-e20-s0: failed (exit 1)" in text


def test_choice_arms_see_validation_only_and_the_choice_is_the_best_validation_mean(tmp_path: Path) -> None:
    s = Settings(seeds=2, choice_seeds=2)
    arms = choice_arms(s)
    assert len(arms) == 2 * sum(len(keys) for keys in CHOICES.values())
    for arm in arms:
        ev = arm_config(arm, s, tmp_path, tmp_path / arm.id)["eval"]
        assert ev["retrieval"] == str(tmp_path / "val") and ev["zeroshot"] == ""
        assert arm.id.endswith(f"-val-s{arm.seed}")
    assert {LOSSES[k]["bias_init"] for k in CHOICES["siglip"]} == {-10.0, -4.0, 0.0}
    # seed 0 favours the first siglip candidate, seed 1 the second by more: the mean decides.
    r1 = {
        ("siglip-bias-10", 0): 0.12,
        ("siglip-bias-10", 1): 0.08,
        ("siglip-bias-4", 0): 0.10,
        ("siglip-bias-4", 1): 0.11,
        ("fastclip-v3-g0.8-lt0.001", 1): 0.2,
    }
    runs = {a.id: _run(a, r1.get((a.loss, a.seed), 0.05)) for a in arms}
    assert choose(runs, s) == {
        "openclip": "openclip",
        "fastclip-v3": "fastclip-v3-g0.8-lt0.001",
        "siglip": "siglip-bias-4",
    }
    final = final_arms(s, choose(runs, s))
    assert {(a.loss, a.split, a.group) for a in final} == {
        ("openclip", "test", "main"),
        ("fastclip-v3-g0.8-lt0.001", "test", "final"),
        ("siglip-bias-4", "test", "final"),
    }
    assert "openclip-b64-e20-s1" in {a.id for a in final}, "OpenCLIP's test arms are the main comparison's"
    for a in final:
        runs[a.id] = _run(a, {"openclip": 0.10, "siglip-bias-4": 0.12}.get(a.loss, 0.09) + 0.01 * a.seed)
    write_report(runs, asdict(s), {}, {}, tmp_path, choose(runs, s))
    text = (tmp_path / "study.md").read_text()
    assert "| siglip | bias init -4 | 2 | 10.5 ± 0.7 | 10.5 ± 0.7 | **yes** |" in text
    assert "| siglip | bias init -10 | 2 | 10.0 ± 2.8 | 10.0 ± 2.8 |  |" in text
    assert "| siglip | bias init -4 | 2 | 12.5 ± 0.7 | +2.0 (s.e. 0.7) |" in text
    assert "-val" not in text.split("### Which loss")[0], "validation candidates stay out of the test table"
    del runs[arms[-1].id]
    with pytest.raises(ValueError, match="has not finished on every choice seed"):
        choose(runs, s)
