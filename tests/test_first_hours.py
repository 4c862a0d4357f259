"""A lab's first hours (issue 28), the parts that need no launched job: the MLflow default and its check before torch,
a loss switch on the command line, a patch that does not divide the image, the ETA on the step line, indexing
img2dataset's output (its checks and download holes), the dry run of a mixed-source run, exports and indexes that
follow the umask, parameter counts without the model code. tests/test_first_hours_launch.py plays the launched run."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import tools.make_shards as make_shards
from data.plan import steps_per_epoch
from model import CLIP, MODEL_CONFIGS, create_model, get_model_config
from model.convert_hf import save_hf
from model.convert_open_clip import save_open_clip
from model.param_count import parameter_counts
from tests.data_fixtures import write_shards
from tests.ranks import REPO
from train.cli import main as cli_main
from train.config import read_config
from train.config_io import ConfigError
from train.metrics import MetricsLogger, eta
from train.trackers import check_trackers, mlflow_uri

FIXTURE = REPO / "tests" / "fixtures" / "img2dataset" / "shards"
DEMO = REPO / "recipes" / "configs" / "demo_fashion_mnist.yaml"
MIX = REPO / "recipes" / "configs" / "fastclip_cc3m_vitb32_1node.yaml"


# ----- 1. MLflow out of the box ---------------------------------------------------------------------------------
def test_mlflow_defaults_to_a_sqlite_store_in_the_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert mlflow_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    check_trackers(["tensorboard", "mlflow"], tmp_path)  # the default passes: packages and store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())  # a store MLflow 3 refuses
    with pytest.raises(ValueError, match="file store, which MLflow 3 refuses; unset it") as refused:
        check_trackers(["mlflow"], tmp_path)
    assert "\n" not in str(refused.value) and "MLFLOW_ALLOW_FILE_STORE=true" in str(refused.value)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_trackers(["mlflow"], tmp_path)


def test_a_refused_tracker_is_one_config_line_before_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    code = cli_main(["--config", str(DEMO), "logging.trackers=[tensorboard, mlflow]", f"run.output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("config error: ")
    assert "MLflow 3 refuses" in err


# ----- 2. no long silences: the step line's ETA -----------------------------------------------------------------
def test_eta_reads_like_a_clock() -> None:
    assert [eta(10, 0.5), eta(100, 7.25), eta(1000, 11.0), eta(50_000, 4.0)] == ["5s", "12m05s", "3h03m", "2d07h"]


def test_the_step_line_has_samples_per_s_and_an_eta(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = MetricsLogger(tmp_path, True, False, total_steps=180)
    with caplog.at_level(logging.INFO, logger="fastflip"):
        metrics.log(70, {"train/loss": 1.0, "perf/samples_per_s": 512.0, "perf/step_s": 0.4, "perf/data_s": 0.1})
        metrics.log(180, {"train/loss": 0.5, "perf/samples_per_s": 512.0, "perf/step_s": 0.4, "perf/data_s": 0.1})
    metrics.close()
    first, last = caplog.messages
    assert "step 70/180" in first and "samples/s 512.0" in first and first.endswith("eta 55s")  # 110 steps x 0.5 s
    assert "eta" not in last  # nothing left


# ----- 4. a loss switch says what to type ---------------------------------------------------------------------
def test_switching_the_loss_on_the_command_line_drops_the_old_loss_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = read_config(MIX, ["loss.name=siglip"])
    assert cfg.loss.name == "siglip" and cfg.loss.version is None and cfg.loss.tau_init is None  # SigLIP's defaults
    assert cfg.loss.resolved().tau_init == 0.1
    line = capsys.readouterr().err
    assert "loss.name=siglip on the command line replaces" in line and "version" in line and "rho" in line
    kept = read_config(MIX, ["loss.name=openclip", "loss.lr_tau=1e-4"])  # loss keys typed with it stay
    assert kept.loss.lr_tau == 1e-4 and kept.loss.rho == 8.0  # the recipe's rho 6.5 went with FastCLIP
    bounded = tmp_path / "bounded.yaml"
    bounded.write_text(MIX.read_text().replace("loss:\n", "loss:\n  tau_min: 0.02\n", 1))
    assert read_config(bounded, ["loss.name=siglip"]).loss.tau_min == 0.02  # every loss's temperature bound stays


def test_the_recipes_own_loss_quoted_on_the_command_line_is_no_switch(capsys: pytest.CaptureFixture) -> None:
    """The override's value is read as YAML (as apply_overrides reads it): "fastclip" quoted is still fastclip."""
    recipe = read_config(MIX)
    for quoted in ('loss.name="fastclip"', "loss.name='fastclip'", "loss.name= fastclip"):
        same = read_config(MIX, [quoted])
        assert (same.loss.name, same.loss.version, same.loss.rho) == (
            recipe.loss.name,
            recipe.loss.version,
            recipe.loss.rho,
        ), quoted
    assert recipe.loss.name == "fastclip" and recipe.loss.rho == 6.5
    assert "replaces" not in capsys.readouterr().err


def test_a_loss_conflict_on_the_command_line_names_it_and_the_fix() -> None:
    with pytest.raises(ConfigError) as conflict:
        read_config(MIX, ["loss.name=siglip", "loss.version=v3"])
    message = str(conflict.value)
    assert message.startswith("command line (loss.version=v3) applied to ") and "set loss.version=null" in message
    with pytest.raises(ConfigError, match=r"command line \(loss.version=v2\) .* set loss.version=null"):
        read_config(MIX, ["loss.name=sogclr", "loss.version=v2"])


# ----- 9. a patch that does not divide the image ---------------------------------------------------------------
def test_a_patch_that_does_not_divide_the_image_is_refused_naming_the_sizes_that_fit() -> None:
    with pytest.raises(ConfigError) as refused:
        read_config(DEMO, ["data.image_size=64", "model.overrides={vision_image_size: 64}"])
    message = str(refused.value)
    assert "image size 64 is not a multiple of the patch size 7" in message and "9x9 patches would drop 1" in message
    assert "use image size 63 or 70" in message and "2, 4, 8, 16, 32" in message
    for name in MODEL_CONFIGS:  # every shipped model fits
        get_model_config(name)


@pytest.mark.slow  # builds every named model: seconds, make test only
def test_parameter_counts_without_the_model_code_match_the_model() -> None:
    for name in MODEL_CONFIGS:
        for cfg in (get_model_config(name), get_model_config(name, init_logit_bias=-10.0, quick_gelu=True)):
            with torch.device("meta"):
                model = CLIP(cfg)
            built = {
                "visual": sum(p.numel() for p in model.visual.parameters()),
                "text": sum(p.numel() for p in model.text.parameters()),
            }
            built["other"] = sum(p.numel() for p in model.parameters()) - built["visual"] - built["text"]
            assert parameter_counts(cfg) == built, name


# ----- 7. indexing says what it checked and where img2dataset's downloads failed ---------------------------------
def test_indexing_img2dataset_output_prints_its_checks_and_the_download_holes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make_shards.main(["manifest", "--shards", str(FIXTURE), "--out", str(tmp_path / "index")])
    out = capsys.readouterr().out
    assert "checks: 0 duplicate source keys, 0 truncated or unreadable shards, 0 samples the loader will skip" in out
    stats = {p.name.removesuffix("_stats.json"): json.loads(p.read_text()) for p in FIXTURE.glob("*_stats.json")}
    failed = sum(s["count"] - s["successes"] for s in stats.values())
    assert f"download holes (img2dataset's *_stats.json): {failed} failed downloads in {len(stats)} shard(s)" in out
    recorded = json.loads((tmp_path / "index" / "manifest.json").read_text())["download_holes"]
    for shard, s in stats.items():
        table = pq.read_table(FIXTURE / f"{shard}.parquet").to_pydict()
        keys = sorted(k for k, st in zip(table["key"], table["status"], strict=True) if st != "success")
        assert recorded[f"{shard}.tar"] == {
            "failed": s["count"] - s["successes"],
            "count": s["count"],
            "errors": {k: v for k, v in s["status_dict"].items() if k != "success"},
            "keys": keys,
        }
        assert f"  {shard}.tar: {s['count'] - s['successes']} of {s['count']} failed (" in out
        assert ", keys " + ", ".join(keys) in out


def test_indexing_shards_without_img2dataset_records_reports_no_holes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_shards(str(tmp_path / "shards"), [5, 4])
    capsys.readouterr()
    make_shards.main(["manifest", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "index")])
    out = capsys.readouterr().out
    assert "checks: 0 duplicate source keys" in out and "download holes" not in out


# ----- 10. the dry run plans a mixed-source run from its indexes -------------------------------------------------
def test_the_dry_run_plans_a_mixed_source_run_from_the_indexes(tmp_path: Path) -> None:
    from train.dry_run import dry_run
    from train.setup import load_setup

    make_shards.main(["manifest", "--shards", str(FIXTURE), "--out", str(tmp_path / "index")])
    write_shards(str(tmp_path / "second"), [14, 9, 17])
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(DEMO.read_text())
    sources = (
        f"data.sources=[{{path: {FIXTURE}, index: {tmp_path / 'index'}, weight: 2}}, "
        f"{{path: {tmp_path / 'second'}, weight: 0.5}}]"
    )
    setup = load_setup(
        recipe, [sources, "data.path=''", "data.batch_size=4", "epochs=3", "run.world_size=0", "dataset_samples=0"]
    )
    text = dry_run(setup)
    epoch = 2 * 24 + 20  # round(weight x samples): the fixture's 24 downloads twice, half of the 40
    steps = steps_per_epoch(epoch, 4, 1, setup.cfg.data.drop_last)
    assert f"source {FIXTURE}: 24 samples in 3 shards x weight 2 -> 48 per epoch" in text
    assert f"source {tmp_path / 'second'}: 40 samples in 3 shards x weight 0.5 -> 20 per epoch" in text
    assert f"data (from the index): {epoch} pairs per epoch, {steps} steps/epoch, 3 epochs" in text
    assert "planned for 1 rank(s) (1 node(s) of 4; run.world_size is not set: the launch decides)" in text
    assert "per-sample state: 64 dense rows" in text  # 24 + 40 rows, whatever the weights


# ----- 3. files follow the umask ---------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_exports_and_indexes_follow_the_umask(umask: int, tmp_path: Path) -> None:
    model = create_model("tiny")
    previous = os.umask(umask)
    try:
        save_open_clip(model.state_dict(), model.config, tmp_path / "open_clip")
        save_hf(model.state_dict(), model.config, tmp_path / "hf")
        make_shards.main(["manifest", "--shards", str(FIXTURE), "--out", str(tmp_path / "index")])
    finally:
        os.umask(previous)
    assert_modes_follow(tmp_path, umask)


def assert_modes_follow(root: Path, umask: int) -> None:
    """Every file below `root` has mode 0666 & ~umask and every folder below it 0777 & ~umask (open(), mkdir)."""
    wrong = {}
    for path in root.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        if not path.is_symlink() and mode != want:
            wrong[str(path.relative_to(root))] = oct(mode)
    assert not wrong, f"not {oct(0o666 & ~umask)} / {oct(0o777 & ~umask)}: {wrong}"


# ----- 2. make setup says what it installs ------------------------------------------------------------------------
@pytest.mark.slow
def test_make_setup_says_what_it_installs() -> None:
    plan = subprocess.run(
        ["make", "-n", "-W", "requirements.txt", "setup"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    installs = [line for line in plan.splitlines() if "pip install" in line]
    assert len(installs) == 4 and not any(" -q" in line for line in installs)  # pip prints what it fetches
    assert "setup: installing the pinned stack" in plan and "setup: installing this repository" in plan


def test_a_tracker_that_cannot_start_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import train.trackers as trackers

    def refuse(*_: object) -> None:
        raise RuntimeError("API request to endpoint /api/2.0/mlflow/experiments failed\n<140 lines of traceback>")

    monkeypatch.setattr(trackers.MlflowTracker, "__init__", refuse)
    with pytest.raises(trackers.TrackerError) as failed:
        trackers.open_trackers(["tensorboard", "mlflow"], tmp_path, "p", "n", {}, {})
    assert str(failed.value) == (
        "logging.trackers: mlflow could not start: RuntimeError: API request to endpoint "
        "/api/2.0/mlflow/experiments failed"
    )


def _train_and_save(rank: int, world_size: int, out_dir: str, backend: str, umask: int) -> None:
    """A 2-step tiny run on `backend` that checkpoints at its end, written under `umask`."""
    from tests.tiny_run import FixedBatches, tiny_config
    from train.trainer import Trainer

    os.umask(umask)
    with Trainer(tiny_config(out_dir, backend, batch_size=4), FixedBatches(8, rank, world_size, 2)) as trainer:
        trainer.fit()


@pytest.mark.slow
def test_a_dcp_checkpoint_follows_the_umask(tmp_path: Path) -> None:
    """ddp's checkpoints are checked by the launched run (tests/test_first_hours_launch.py), fsdp2's DCP here."""
    from tests.ranks import run_on_ranks

    run_on_ranks(_train_and_save, 2, (str(tmp_path / "run"), "fsdp2", 0o002))
    assert any((tmp_path / "run" / "checkpoints").glob("step_*/*"))
    assert_modes_follow(tmp_path / "run", 0o002)
