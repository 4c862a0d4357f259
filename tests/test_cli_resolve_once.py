"""A launch reads its recipe once: train.cli checks the YAML and hands the config to train.supervise and train.setup,
so each section's checks run once per launch (they ran three times when supervise read the YAML again)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from data.config import DataConfig
from tests.tiny_run import tiny_recipe
from train import config
from train.cli import main
from train.losses.config import LossConfig

SECTIONS = (
    config.ModelSection,
    config.OptimConfig,
    config.FlipConfig,
    config.BackendConfig,
    config.CheckpointConfig,
    config.LoggingConfig,
    config.EvalConfig,
    config.TrainConfig,
    LossConfig,
    DataConfig,
)


def _count_calls(monkeypatch: pytest.MonkeyPatch, counts: Counter, owner: object, name: str, key: str) -> None:
    original = getattr(owner, name)

    def counted(*args: object, **kwargs: object) -> object:
        counts[key] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


@pytest.mark.parametrize("loss", ["fastclip", "siglip"])
def test_a_launch_reads_the_recipe_once_and_validates_each_section_once(
    loss: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(str(tmp_path / "run"))))
    counts: Counter = Counter()
    for section in SECTIONS:
        _count_calls(monkeypatch, counts, section, "validate", section.__name__)
    _count_calls(monkeypatch, counts, config, "load_yaml", "load_yaml")  # read_config's
    assert main(["--config", str(recipe), "--dry-run", f"loss.name={loss}"]) == 0
    assert "recipe: test  model tiny" in capsys.readouterr().out
    assert counts == Counter({name: 1 for name in ["load_yaml", *(s.__name__ for s in SECTIONS)]})


def test_a_bad_value_across_sections_is_still_reported_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(str(tmp_path / "run"), data={"image_size": 64})))
    assert main(["--config", str(recipe), "--dry-run"]) == 2
    assert f"{recipe}: data.image_size 64 differs from model tiny's image size 32" in capsys.readouterr().err
