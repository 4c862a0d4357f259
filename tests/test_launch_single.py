"""One DeepSpeed process under `accelerate launch --num_processes 1` (no torchrun variables) trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster_utils import REPO, finish, logged_steps, start, write_recipe
from tests.data_fixtures import write_shards


@pytest.mark.slow
def test_one_deepspeed_process_under_accelerate_launch(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    write_shards(str(shards), [16])
    zero2 = str(REPO / "ds_configs" / "zero2.json")
    recipe = write_recipe(
        tmp_path,
        str(shards),
        backend={"name": "deepspeed", "options": {"ds_config": zero2}},
        epochs=1,
        checkpoint={"every_steps": 0},
    )
    code, out = finish(start(recipe, launcher=("--num_processes", "1")), timeout=600)
    assert code == 0, out[-3000:]
    assert logged_steps(tmp_path / "run") == [1, 2, 3, 4]  # 16 pairs, 4 per step, one rank
