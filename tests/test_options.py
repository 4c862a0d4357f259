"""Each component owns its options (backend.options, data.webdataset / csv / hf), old keys are refused naming the
new one (YAML and command line), a checkpoint saved with the old keys still resumes, and one ExitCode table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ranks import REPO
from tests.tiny_run import tiny_config
from train.backends import backend_class, variants
from train.checkpoint.checkpointer import Checkpointer
from train.checkpoint.compat import check_resume_config
from train.checkpoint.files import META, read_meta
from train.cli import main
from train.config import read_config
from train.config_io import ConfigError, to_dict
from train.faults.exit_codes import ExitCode, status_of
from train.renamed_keys import RENAMED, upgrade
from train.setup import load_setup

DEMO = REPO / "recipes" / "configs" / "demo_fashion_mnist.yaml"
ZERO2 = str(REPO / "ds_configs" / "zero2.json")


def _recipe(tmp_path: Path, **sections: Any) -> Path:
    raw = yaml.safe_load(DEMO.read_text())
    for name, values in sections.items():
        raw[name] = raw.get(name, {}) | values
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    """'data.csv_separator', ',' -> {'data': {'csv_separator': ','}}"""
    *parents, leaf = dotted.split(".")
    tree: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        tree = {part: tree}
    return tree


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_an_old_key_in_the_yaml_is_refused_naming_the_new_one(tmp_path: Path, old: str) -> None:
    section, rest = _nest(old, "x").popitem()
    path = _recipe(tmp_path, **{section: rest})
    with pytest.raises(ConfigError) as err:
        read_config(path)
    assert str(err.value) == f"{path}: {old} was renamed: use {RENAMED[old]}"


def test_an_old_key_on_the_command_line_is_refused_in_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(
        ConfigError,
        match=r"^command line \(data\.csv_image_key=\.\.\.\): data\.csv_image_key was "
        r"renamed: use data\.csv\.image_key$",
    ):
        read_config(DEMO, ["optim.lr=1e-4", "data.csv_image_key=jpg"])
    secret = "https://h.example/idx?token=SECRET"
    assert main(["--config", str(DEMO), f"data.index={secret}"]) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert err.strip() == (
        "config error: command line (data.index=...): data.index was renamed: use data.webdataset.index"
    )
    assert "SECRET" not in err  # the value is never echoed


def test_the_new_keys_reach_each_source_and_backend(tmp_path: Path) -> None:
    cfg = read_config(
        _recipe(tmp_path, data={"source": "csv", "path": "pairs.csv", "csv": {"image_key": "jpg", "separator": ";"}})
    )
    assert (cfg.data.csv.image_key, cfg.data.csv.separator, cfg.data.csv.caption_key) == ("jpg", ";", "title")
    cfg = read_config(DEMO, ["data.webdataset.remote_retry_s=30", "data.webdataset.allow_missing_shards=true"])
    assert cfg.data.webdataset.remote_retry_s == 30.0 and cfg.data.webdataset.allow_missing_shards
    setup = load_setup(DEMO, ["backend.name=deepspeed", f"backend.options.ds_config={ZERO2}"])
    assert setup.backend_options["ds_config"]["zero_optimization"]["stage"] == 2


@pytest.mark.parametrize(("section", "source"), [("csv", "webdataset"), ("hf", "csv"), ("webdataset", "hf")])
def test_a_source_section_set_for_another_source_is_refused(tmp_path: Path, section: str, source: str) -> None:
    options = {"csv": {"separator": ";"}, "hf": {"split": "validation"}, "webdataset": {"cache_max_gb": 1}}[section]
    path = _recipe(tmp_path, data={"source": source, section: options})
    with pytest.raises(ConfigError, match=f"data.{section} is set but data.source is '{source}'; remove data"):
        read_config(path)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            ["backend.options.ds_config=x.json"],
            r"backend\.options\.ds_config is not an option of backend 'ddp' "
            r"\(it takes none\); remove it",
        ),
        (
            ["backend.name=fsdp2", "backend.options.ds_config=x.json"],
            r"backend\.options\.ds_config is not an option of "
            r"backend 'fsdp2' \(it takes none\)",
        ),
        (
            ["backend.name=deepspeed", f"backend.options.ds_config={ZERO2}", "backend.options.stage=3"],
            r"backend\.options\.stage is not an option of backend 'deepspeed' \(it takes ds_config\)",
        ),
        (
            ["backend.name=deepspeed", "backend.options.ds_config=3"],
            r"'backend\.options\.ds_config' must be str, got 3",
        ),
        (["backend.name=deepspeed"], r"backend\.options\.ds_config must name a DeepSpeed JSON"),
        (["backend.options=[1]"], r"'backend\.options' must be a mapping"),
    ],
)
def test_backend_options_are_checked_by_the_chosen_backend(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_setup(DEMO, overrides)


def test_every_registered_variant_passes_its_backend_options() -> None:
    for name, section in variants().items():
        options = backend_class(section["name"]).parse_options(section.get("options", {}))
        assert options.ds_config.endswith(".json") if ":" in name else not vars(options), name


def test_each_backend_answers_its_own_launcher_conflicts() -> None:
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_USE_FSDP": "true"}
    lines = {
        name: backend_class(name).launcher_conflicts(
            load_setup(
                DEMO, [f"backend.name={name}"] + ([f"backend.options.ds_config={ZERO2}"] if name == "deepspeed" else [])
            ).cfg,
            env,
        )
        for name in ("ddp", "fsdp2", "deepspeed")
    }
    assert [len(lines[n]) for n in ("ddp", "fsdp2", "deepspeed")] == [2, 1, 1]
    assert "DEEPSPEED" in lines["fsdp2"][0] and "FSDP" in lines["deepspeed"][0]


def _as_written_before(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config as the version before the option sections wrote it: flat data.* and backend.ds_config."""
    old = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for section in ("webdataset", "csv", "hf"):
        for key, value in old["data"].pop(section).items():
            new = f"data.{section}.{key}"
            (name,) = [o for o, n in RENAMED.items() if n == new]
            old["data"][name.split(".", 1)[1]] = value
    old["backend"]["ds_config"] = old["backend"].pop("options").get("ds_config", "")
    return old


@pytest.mark.parametrize("backend", ["ddp", "deepspeed:zero2"])
def test_a_checkpoint_saved_with_the_old_keys_resumes(tmp_path: Path, backend: str) -> None:
    cfg = tiny_config(str(tmp_path), backend)
    checkpointer = Checkpointer(cfg, {}, 0, 1, lambda: None)
    dataset = {"samples": 48, "rows": "dense"}  # facts measured from the data, the same at resume
    path = checkpointer.save({"step": 3, "health": {"healthy": True}}, dataset, lambda: True)
    meta = read_meta(path)
    meta["config"] = _as_written_before(meta["config"])
    assert "index" in meta["config"]["data"] and "options" not in meta["config"]["backend"]
    (path / META).write_text(json.dumps(meta))
    assert read_meta(path)["config"] == to_dict(cfg)  # every old key back in its new place, nothing left over
    assert check_resume_config(read_meta(path)["config"], to_dict(cfg), [], str(path)) == []
    resumed = checkpointer.check_resumable(path, dataset, cfg.data.batch_size, True, True)
    assert resumed["config"]["backend"] == to_dict(cfg)["backend"]


def test_upgrade_keeps_a_new_key_and_drops_the_old_unset_default() -> None:
    saved = {"backend": {"name": "ddp", "ds_config": ""}, "data": {"csv_separator": ";", "csv": {"separator": ","}}}
    assert upgrade(saved) == {"backend": {"name": "ddp", "options": {}}, "data": {"csv": {"separator": ","}}}
    assert saved["data"]["csv_separator"] == ";"  # a copy: the caller's dict is untouched


def test_exit_codes_keep_their_numbers_and_status_words() -> None:
    before = {
        0: "completed",
        1: "failed",
        2: "config error",
        3: "diverged",
        4: "checkpoint error",
        5: "hung rank",
        69: "data unavailable",
        75: "preempted",
    }  # the literals and status.json words of the last release
    assert {int(code): code.status for code in ExitCode} == before
    assert (ExitCode.CONFIG, ExitCode.DATA_UNAVAILABLE, ExitCode.PREEMPTED) == (2, 69, 75)
    assert status_of(17) == "failed" and status_of(75) == "preempted"


def test_the_batch_script_acts_on_the_same_codes_and_words() -> None:
    script = (REPO / "tools" / "slurm_train.sbatch").read_text()
    assert f"outcome={ExitCode.PREEMPTED.status}; code={int(ExitCode.PREEMPTED)}" in script
    assert re.search(rf"^\s+exit {int(ExitCode.DATA_UNAVAILABLE)}$", script, re.M)
    for code in (ExitCode.PREEMPTED, ExitCode.DATA_UNAVAILABLE):  # status.json's word, spaces as underscores
        assert re.search(rf"^\s+{code.status.replace(' ', '_')}\)", script, re.M), code
