"""Every recipe dry-runs; in-loop evaluation under fsdp2 / ZeRO-3 equals single-process eval of the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_on_ranks
from tests.data_fixtures import write_shards
from tests.trainer_utils import FixedBatches, tiny_config
from train.cli import main as cli_main
from train.config import EvalConfig, load_config
from train.dry_run import dry_run

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes" / "configs").glob("*.yaml"))


def test_recipe_folder_is_populated() -> None:
    names = {p.stem for p in RECIPES}
    for data in ("cc3m", "cc12m", "laion315m"):
        for nodes in (1, 2, 4, 8):
            assert any(n.startswith(f"fastclip_{data}_") and n.endswith(f"_{nodes}node") for n in names)
            assert any(n.startswith(f"openclip_{data}_") and n.endswith(f"_{nodes}node") for n in names)
    for model in ("vitb16", "vitl14", "vith14"):
        assert {f"flip50_laion315m_{model}", f"flip75_laion315m_{model}"} <= {n.rsplit("_", 1)[0] for n in names}


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_resolves_and_dry_runs(recipe: Path) -> None:
    cfg = load_config(recipe)
    text = dry_run(cfg)
    assert f"global batch: {cfg.data.batch_size * (cfg.run.world_size or 1)}" in text
    assert "memory per GPU" in text and "parameters" in text
    if cfg.dataset_samples:
        assert "steps/epoch" in text and "pretrain: steps 0-" in text
    if cfg.flip.tuning_samples:
        assert "unmasked_tuning" in text and "mask 0.0" in text


def test_cc3m_recipe_matches_paper_settings() -> None:
    cfg = load_config(REPO / "recipes" / "configs" / "fastclip_cc3m_vitb32_2node.yaml")
    assert cfg.data.batch_size * cfg.run.world_size == 1024 and cfg.epochs == 37
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay) == (1e-3, 10_000, 0.1)
    loss = cfg.loss.resolved()
    assert (loss.version, loss.lr_tau, loss.rho, loss.gamma_min, loss.gamma_decay_epochs) == ("v3", 2e-4, 6.5, 0.2, 18)


def test_recipe_script_rejects_other_model(capsys: pytest.CaptureFixture) -> None:
    recipe = str(REPO / "recipes" / "configs" / "flip50_laion315m_vith14_8node.yaml")
    assert cli_main(["--config", recipe, "--dry-run"], model_family="ViT-L-14") == 2
    assert "this script trains ViT-L-14" in capsys.readouterr().err


def _train_and_eval(rank: int, world_size: int, out_dir: str, shards: str, backend: str) -> dict:
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, backend, batch_size=8 // world_size)
    cfg.eval = EvalConfig(zeroshot=shards, templates="generic", retrieval=shards, batch_size=7)
    trainer = Trainer(cfg, FixedBatches(8, rank, world_size, steps=3))
    return trainer.fit()["eval"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["fsdp2", "deepspeed:zero3"])
def test_in_loop_eval_equals_single_process_eval(backend: str, tmp_path: Path) -> None:
    from train.consolidate import load_model
    from train.evaluator import Evaluator

    shards = str(tmp_path / "shards")
    write_shards(shards, [11, 9])
    in_loop = run_on_ranks(_train_and_eval, 2, (str(tmp_path / "run"), shards, backend))[0]
    ckpt = tmp_path / "run" / "checkpoints"
    model, _ = load_model(ckpt / (ckpt / "latest").read_text())
    from data.tokenizer import get_tokenizer

    cfg = EvalConfig(zeroshot=shards, templates="generic", retrieval=shards, batch_size=5)
    alone = Evaluator(cfg, 32, torch.device("cpu"), get_tokenizer())(model)
    assert in_loop.keys() == alone.keys() and "zeroshot_top1" in alone and "text_to_image_R@1" in alone
    for key, value in alone.items():
        assert in_loop[key] == pytest.approx(value, abs=1e-9), key
