"""studies/study_drrho.py: the arms it plans and the recipes it writes (they resolve and dry-run), no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import studies.study as base
from studies import study_drrho
from studies.study import Settings
from train.dry_run import dry_run
from train.setup import load_setup


def test_dry_run_lists_the_arms(capsys: pytest.CaptureFixture) -> None:
    assert study_drrho.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = [line.split()[1] for line in out.splitlines() if line[:3].strip().endswith(".")]
    assert lines[0] == "reference-openclip-b64-e20-s100", "the reference trains first"
    for seed in range(study_drrho.CHOICE_SEEDS):
        assert f"drrho-authors-b64-e20-val-s{seed}" in lines and f"drrho-v3-b64-e20-val-s{seed}" in lines
    assert [f"fastclip-v3-rule-b64-e20-s{seed}" for seed in range(5)] == lines[-5:]


def test_arm_recipes_resolve_and_dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    work = tmp_path / "work"
    step = work / study_drrho.reference_arm(s).id / "checkpoints" / "step_00000800"
    step.mkdir(parents=True)
    model = {"name": "tiny", "overrides": study_drrho.STEERING["reference_overrides"]}
    (step / "meta.json").write_text(json.dumps({"config": {"model": model}, "backend": "ddp"}))
    monkeypatch.setattr(base, "arm_config", base.arm_config)  # restored after the test
    study_drrho.patch_configs(s, work)
    arms = study_drrho.plan(s) + study_drrho.final_arms(s, "drrho-authors")
    for arm in arms:
        config = base.arm_config(arm, s, work / "data", tmp_path / arm.id)
        path = tmp_path / f"{arm.id}.yaml"
        path.write_text(yaml.safe_dump(config))
        setup = load_setup(path)
        text = dry_run(setup)
        if arm.loss.startswith("drrho"):
            precomputed = arm.loss.endswith("-precomputed")
            assert setup.loss.reference == f"fastflip:{step}"
            assert ("reference: precomputed" if precomputed else "reference: tiny") in text
            assert (setup.loss.reference_features == "precomputed") == precomputed
        if arm.group == "reference":
            assert config["data"]["path"].endswith("ref_train") and setup.loss.name == "openclip"
    authors = load_setup(tmp_path / f"{arms[1].id}.yaml").loss
    assert (authors.tau_init, authors.lr_tau, authors.rho, authors.eps) == (0.01, 0.0, 11.0, 1e-4)
    assert authors.gamma_schedule == "epochs_rule" and authors.gamma_min == pytest.approx(4.177 * 20**-0.7265)
