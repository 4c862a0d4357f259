"""Bad configs fail before any training step, naming the file and key; schedules behave."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.ranks import REPO
from train.backends.deepspeed import resolve_ds_config
from train.config_io import ConfigError
from train.schedules import build_phase_plan
from train.setup import load_config

DEMO = REPO / "recipes" / "configs" / "demo_fashion_mnist.yaml"
DATA = {"data": {"path": "shards/"}}  # the one required section


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_demo_recipe_loads_and_overrides_apply() -> None:
    cfg = load_config(DEMO, ["optim.lr=5e-4", "loss.rho=7"])
    assert cfg.optim.lr == 5e-4 and cfg.loss.rho == 7.0 and cfg.model.name == "demo"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, {"optim": {"lrr": 1e-3}})
    with pytest.raises(ConfigError, match=r"recipe\.yaml: unknown key 'optim\.lrr'"):
        load_config(path)


def test_missing_data_section_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"recipe\.yaml: missing required key\(s\) data$"):
        load_config(_write(tmp_path, {"optim": {"lr": 1e-3}}))
    with pytest.raises(ConfigError, match="data.path must be a non-empty string"):
        load_config(_write(tmp_path, {"data": {"batch_size": 8}}))


def test_wrong_type_names_key(tmp_path: Path) -> None:
    path = _write(tmp_path, {"data": {"path": "x", "batch_size": "sixty-four"}})
    with pytest.raises(ConfigError, match=r"'data\.batch_size' must be int"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'checkpoint\.every_steps' must be int"):
        load_config(_write(tmp_path, {"checkpoint": {"every_steps": True}}))


def test_invalid_value_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backend.name must be one of"):
        load_config(_write(tmp_path, {**DATA, "backend": {"name": "horovod"}}))
    with pytest.raises(ConfigError, match="backend.options.ds_config is not an option of backend .ddp. .* remove it"):
        load_config(_write(tmp_path, {**DATA, "backend": {"name": "ddp", "options": {"ds_config": "zero2.json"}}}))
    with pytest.raises(ConfigError, match="data.image_size 224 differs from model demo's image size 28"):
        load_config(DEMO, ["data.image_size=224"])
    with pytest.raises(ConfigError, match="model.overrides: .*vision_depth"):
        load_config(DEMO, ["model.overrides.vision_depth=3"])
    with pytest.raises(ConfigError, match="loss.version"):
        load_config(_write(tmp_path, {**DATA, "loss": {"version": "v9"}}))


def test_missing_shards_fail_before_training(tmp_path: Path) -> None:
    from train.trainer import Trainer

    cfg = load_config(DEMO, [f"data.path={tmp_path}/no-such-shards", f"run.output_dir={tmp_path}/run"])
    with pytest.raises((FileNotFoundError, ValueError), match="no-such-shards"):
        Trainer(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ds_config_incompatible_with_training_config(tmp_path: Path) -> None:
    good = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    resolved = resolve_ds_config(str(REPO / "ds_configs" / "zero2.json"), 16, 1.0, "bf16", 64)
    assert resolved["train_micro_batch_size_per_gpu"] == 16 and resolved["bf16"]["enabled"] is True
    assert resolved["fp16"]["enabled"] is False and resolved["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    cases = {
        "optimizer": ({**good, "optimizer": {"type": "AdamW"}}, "remove the 'optimizer' section"),
        "micro": ({**good, "train_micro_batch_size_per_gpu": 32}, "train_micro_batch_size_per_gpu = 32 contradicts"),
        "fp16": ({**good, "fp16": {"enabled": True}}, "fp16.enabled contradicts backend.precision"),
        "stage": ({**good, "zero_optimization": {"stage": 0}}, "stage must be 1, 2 or 3"),
    }
    for name, (raw, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(raw))
        with pytest.raises(ValueError, match=message):
            resolve_ds_config(str(path), 16, 1.0, "bf16", 64)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_ds_config(str(tmp_path / "none.json"), 16, 1.0, "fp32", 64)


def test_phase_plan_masks_then_tunes_unmasked() -> None:
    plan = build_phase_plan(100, 0.75, 1e-3, 1e-5, 10, tuning_steps=20, tuning_lr=1e-4, tuning_warmup_steps=5)
    assert plan.total_steps == 120
    masks = [plan.phase_at(step).mask_ratio for step in (0, 99, 100)]
    assert masks == [0.75, 0.75, 0.0]
    assert plan.lr_at(0) == pytest.approx(1e-4) and plan.lr_at(9) == pytest.approx(1e-3)
    assert plan.lr_at(99) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 89 / 90)))
    assert plan.lr_at(100 - 1) < 1.1e-5
    assert plan.lr_at(100) == pytest.approx(1e-4 / 5) and plan.lr_at(104) == pytest.approx(1e-4)
    mid = 10 + 45
    assert plan.lr_at(mid) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 0.5)))
