"""Several sources mixed with weights: own row ranges, an epoch composition that follows the weights, exact resume."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from data.config import DataConfig, SourceSpec
from data.loader import build_train_loader
from tests.data_fixtures import write_shards
from train.config_io import ConfigError, from_dict


def mixed_cfg(tmp_path, **kw) -> DataConfig:
    write_shards(tmp_path / "a", [6, 6, 6])  # 18 samples, weight 2 -> 36 per epoch
    write_shards(tmp_path / "b", [5, 5, 5, 5])  # 20 samples, weight 0.5 -> 10 per epoch
    sources = [{"path": str(tmp_path / "a"), "weight": 2.0}, {"path": str(tmp_path / "b"), "weight": 0.5}]
    base = dict(
        sources=sources, batch_size=2, workers=0, image_size=8, seed=7, shuffle_window=12, train_crop_scale=(0.5, 1.0)
    )
    return DataConfig(**{**base, **kw})


def rows(batches) -> list[int]:
    return [k for b in batches for k in b["index"].tolist()]


def test_epoch_composition_follows_the_weights(tmp_path):
    c = mixed_cfg(tmp_path)
    loader = build_train_loader(c, 0, 1)
    assert loader.num_samples == 38 and loader.total == 46 and loader.steps_per_epoch == 23
    picked_b = []
    for e in range(3):
        loader.set_epoch(e)
        got = Counter(rows(loader))
        assert all(got[r] == 2 for r in range(18))  # source a: rows 0..17, each twice
        b = {r for r in got if r >= 18}
        assert len(b) == 10 and b <= set(range(18, 38)) and all(got[r] == 1 for r in b)  # source b: rows 18..37
        picked_b.append(frozenset(b))
    assert len(set(picked_b)) > 1  # a different half of b each epoch
    again = build_train_loader(c, 0, 1)
    again.set_epoch(2)
    assert Counter(rows(again)) == got  # a pure function of (seed, epoch)


def test_two_source_mixed_stream_resumes_exactly(tmp_path):
    c = mixed_cfg(tmp_path, workers=2)
    full = build_train_loader(c, 0, 2)
    reference = []
    for e in (0, 1):
        full.set_epoch(e)
        reference += list(full)
    first = build_train_loader(c, 0, 2)
    got = []
    for b in first:
        got.append(b)
        if len(got) == 5:
            break
    state = first.state_dict()
    first.close()
    resumed = build_train_loader(c, 0, 2)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)
    got += list(resumed)
    resumed.set_epoch(1)
    got += list(resumed)
    assert len(got) == len(reference)
    for x, y in zip(got, reference, strict=True):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["pixels"], y["pixels"])


def test_sources_from_yaml_and_errors(tmp_path):
    raw = {"sources": [{"path": "cc12m/", "weight": 2}, {"path": "laion/{000..009}.tar", "index": "idx/"}]}
    cfg = from_dict(DataConfig, raw, "mix.yaml", "data.")
    assert cfg.sources == [SourceSpec("cc12m/", "", 2), SourceSpec("laion/{000..009}.tar", "idx/", 1.0)]
    with pytest.raises(ConfigError, match=r"mix.yaml: unknown key 'data.sources\[0\].wieght'"):
        from_dict(DataConfig, {"sources": [{"path": "x", "wieght": 2}]}, "mix.yaml", "data.")
    with pytest.raises(ConfigError, match="weight must be a number > 0"):
        from_dict(DataConfig, {"sources": [{"path": "x", "weight": 0}]}, "mix.yaml", "data.")
    with pytest.raises(ValueError, match="data.sources replaces data.path"):
        DataConfig(path="x", sources=[{"path": "y"}])
