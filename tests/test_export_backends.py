"""model.init_from on every backend, and export of each backend's checkpoint (DeepSpeed ZeRO-3 included).

Two gloo ranks start a tiny run from an open_clip folder, train a few steps and checkpoint; the checkpoint
is exported with tools/export.py and loaded by open_clip and transformers. Tolerances: weights bitwise
equal; embeddings within 1e-4 (fp32).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import create_model
from model.convert_hf import from_hf
from model.convert_open_clip import from_open_clip, save_open_clip
from tests.export_fixtures import Embedders, photos
from tests.ranks import REPO, run_on_ranks
from tests.tiny_run import FixedBatches, one_variant_per_backend, tiny_config
from tools.export import export, info
from train.checkpoint.consolidate import consolidated_state_dict, load_model
from train.checkpoint.files import resolve_checkpoint

GLOBAL_BATCH, STEPS, ATOL = 8, 3, 1e-4


def _train(rank: int, world_size: int, out_dir: str, backend: str, init_from: str) -> dict:
    from train.trainer import Trainer

    cfg = tiny_config(out_dir, backend, batch_size=GLOBAL_BATCH // world_size)
    cfg.model.init_from = init_from
    trainer = Trainer(cfg, FixedBatches(GLOBAL_BATCH, rank, world_size, STEPS))
    initial = {k: v.clone() for k, v in trainer.backend.full_state_dict().items()}
    trainer.fit()
    return {"initial": initial, "trained": {k: v.clone() for k, v in trainer.backend.full_state_dict().items()}}


@pytest.mark.slow
@pytest.mark.parametrize("backend", one_variant_per_backend())
def test_init_from_trains_and_exports(backend: str, tmp_path: Path) -> None:
    torch.manual_seed(7)
    source = create_model("tiny").state_dict()
    save_open_clip(source, create_model("tiny").config, tmp_path / "pretrained")
    ranks = run_on_ranks(_train, 2, (str(tmp_path / "run"), backend, f"open_clip:{tmp_path / 'pretrained'}"))
    for result in ranks:  # loaded before the backend sharded it, on every rank
        assert all(torch.equal(result["initial"][k], source[k]) for k in source if k != "logit_scale")
    trained = ranks[0]["trained"]
    assert not torch.equal(trained["visual.head.weight"], source["visual.head.weight"])  # it trained

    checkpoint = tmp_path / "run" / "checkpoints" / "latest"
    cli = [sys.executable, str(REPO / "tools" / "export.py"), "--checkpoint", str(checkpoint), "--to", "hf"]
    subprocess.run([*cli, "--out", str(tmp_path / "hf")], check=True, cwd=REPO, capture_output=True)
    export(checkpoint, "open_clip", tmp_path / "open_clip")
    with pytest.raises(FileExistsError, match="not empty"):
        export(checkpoint, "open_clip", tmp_path / "open_clip")
    consolidated, meta = consolidated_state_dict(resolve_checkpoint(str(checkpoint)))
    model, _ = load_model(resolve_checkpoint(str(checkpoint)))
    embedders = Embedders.load(model, tmp_path / "open_clip", tmp_path / "hf")
    round_trips = {
        "hf": from_hf(embedders.hf.state_dict(), consolidated),
        "open_clip": from_open_clip(embedders.open_clip_model.state_dict(), consolidated),
    }
    for name, back in round_trips.items():
        assert all(torch.equal(back[k], consolidated[k]) for k in consolidated), name
        assert all(torch.equal(back[k], trained[k]) for k in trained if k != "logit_scale"), name
    images, captions = photos(("astronaut", "coffee", "camera"))  # HF crops these like OpenAI (see test_export)
    for emb in (embedders.images(images), embedders.texts(captions)):
        for name in ("open_clip", "hf"):
            assert (emb[name] - emb["ours"]).abs().max() < ATOL, name

    lines = info(checkpoint)
    assert f"step {STEPS}, epoch 0, world size 2, backend {backend.split(':')[0]}" in lines[1]
    assert lines[2].startswith("model tiny") and f"init_from open_clip:{tmp_path / 'pretrained'}" in lines[2]
    shards = [line for line in lines if line.lstrip().startswith("loss_rank")]
    assert len(shards) == 2 and all("table=float32[24, 2]" in line for line in shards), shards
    assert "health: healthy" in lines
    verified = [line for line in lines if line.startswith("verification: ")]
    assert verified[0].endswith(" files intact") and int(verified[0].split()[1]) >= 5, verified
    step_dir = resolve_checkpoint(str(checkpoint))
    with (step_dir / "loss_rank1.pt").open("r+b") as shard:
        shard.truncate(10)
    assert any(
        line.startswith("verification: DAMAGED: ") and "loss_rank1.pt: 10 bytes" in line for line in info(step_dir)
    )
    assert meta["step"] == STEPS
