"""Changed configs on resume, DeepSpeed JSON checked with the config, and the CLI's exit codes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ranks import REPO
from train.checkpoint.compat import check_resume_config
from train.cli import main
from train.config_io import ConfigError, to_dict
from train.faults.exit_codes import ExitCode
from train.setup import load_config

DEMO = REPO / "recipes" / "configs" / "demo_fashion_mnist.yaml"


def _cfg(*overrides: str) -> dict:
    return to_dict(load_config(DEMO, list(overrides))) | {"dataset": {"num_samples": 60000}}


@pytest.mark.parametrize(
    "override",
    [
        "data.batch_size=64",
        "model.name=tiny data.image_size=32",
        "loss.version=v1",
        "epochs=9",
        "max_steps=7",
        "flip.mask_ratio=0.75",
        "data.path=/elsewhere",
    ],
)
def test_resume_refuses_changes_that_alter_the_run(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"(?s)cannot resume from ckpt: .*\n  {key}: .*allow_changes=\[{key}\]"):
        check_resume_config(_cfg(), _cfg(*override.split()), [], "ckpt")


def test_resume_refuses_a_changed_dataset_and_lists_every_key() -> None:
    current = _cfg("data.batch_size=64", "optim.lr=1e-4") | {"dataset": {"num_samples": 70000}}
    with pytest.raises(ConfigError) as info:
        check_resume_config(_cfg(), current, [], "ckpt")
    assert "data.batch_size: " in str(info.value) and "dataset.num_samples: 60000 -> 70000" in str(info.value)
    assert "optim.lr" not in str(info.value)


def test_allowed_and_harmless_changes_are_returned_as_a_diff() -> None:
    lines = check_resume_config(
        _cfg(), _cfg("data.batch_size=64", "optim.lr=1e-4", "checkpoint.resume=latest"), ["data.batch_size"], "ckpt"
    )
    assert any(line.startswith("data.batch_size: ") for line in lines)
    assert any(line.startswith("optim.lr: ") for line in lines)
    assert not any(line.startswith("checkpoint.resume") for line in lines)  # how a run starts, not what it trains


def test_allow_changes_names_real_keys() -> None:
    assert load_config(DEMO, ["checkpoint.allow_changes=[data.batch_size, flip]"]).checkpoint.allow_changes
    with pytest.raises(ConfigError, match="checkpoint.allow_changes: 'data.batchsize' is not a config key"):
        load_config(DEMO, ["checkpoint.allow_changes=[data.batchsize]"])


def test_deepspeed_json_is_checked_when_the_config_loads(tmp_path: Path) -> None:
    bad = json.loads((REPO / "ds_configs" / "zero2.json").read_text()) | {"train_micro_batch_size_per_gpu": 3}
    (tmp_path / "ds.json").write_text(json.dumps(bad))
    overrides = ["backend.name=deepspeed", f"backend.options.ds_config={tmp_path / 'ds.json'}"]
    with pytest.raises(ConfigError, match=r"ds\.json: train_micro_batch_size_per_gpu = 3 contradicts"):
        load_config(DEMO, overrides)


def test_cli_config_error_is_one_line_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lrr": 1}}))
    assert main(["--config", str(path)]) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert err.startswith("config error: ") and "unknown key 'optim.lrr'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_records_the_error_for_the_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher's failure summary reads this file (instead of `error_file: <N/A>`)."""
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    logging.getLogger().setLevel(logging.WARNING)
    assert main(["--config", str(tmp_path / "missing.yaml")]) == ExitCode.CONFIG
    recorded = json.loads(error_file.read_text())["message"]["message"]
    assert recorded.startswith("ConfigError: ") and "missing.yaml does not exist" in recorded


def test_exit_process_keeps_the_code_and_flushes_what_was_written() -> None:
    """The recipes end through `exit_process` (no interpreter teardown): the code and the last output survive."""
    script = (
        "import logging, sys; from train.cli import exit_process; logging.basicConfig(stream=sys.stderr); "
        "logging.getLogger('fastflip').warning('last log line'); print('no newline', end=''); exit_process(3)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"LOCAL_RANK": "0"}  # as launched
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 3 and done.stdout == "no newline" and "last log line" in done.stderr, done
