"""benchmarks/bench_comm.py on 2 gloo ranks: the recorded collectives carry what the design says."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_comm import LOSSES, main

pytestmark = pytest.mark.slow


def test_bench_comm_counts_collectives(tmp_path) -> None:
    out = tmp_path / "comm.json"
    main(["--steps", "2", "--batch", "3", "--out", str(out)])
    result = json.loads(out.read_text())
    g, d = result["global_batch"], result["embed_dim"]
    assert (g, d) == (6, 64)
    fp32 = 4
    openclip = result["openclip"]
    assert openclip["feature_grad_bytes"] == 2 * g * d * fp32
    assert openclip["feature_bytes"] == 2 * g * d * fp32
    param_bytes = openclip["param_grad_bytes"]
    assert param_bytes > 1_000_000
    siglip = result["siglip"]  # K - 1 = 1 ring pass of the local [image | text] features, nothing in backward
    assert siglip["feature_bytes"] == (g // 2) * 2 * d * fp32 and siglip["feature_grad_bytes"] == 0
    assert siglip["state_bytes"] == 0 and abs(siglip["param_grad_bytes"] - param_bytes) <= fp32
    for name in LOSSES:
        if name in ("openclip", "siglip"):
            continue
        r = result[name]
        assert r["feature_grad_bytes"] == 0, name
        assert r["feature_bytes"] == g * (2 * d * fp32 + 8), name  # features + int64 keys, one gather
        assert abs(r["param_grad_bytes"] - param_bytes) <= fp32, name  # v1/v2 freeze logit_scale
        assert r["total_bytes"] == sum(
            r[k] for k in ("feature_bytes", "feature_grad_bytes", "state_bytes", "param_grad_bytes", "logging_bytes")
        )
        assert sum(c["phase"] == "backward" and c["category"] != "param_grad" for c in r["collectives"]) == 0
    # state: sharded = fetch (reduce-scatter [G, T]) + all_gather of [G, T + extras]; replicated skips the fetch
    assert result["fastclip_v3"]["state_bytes"] == g * 2 * fp32 + g * 4 * fp32
    assert result["fastclip_v3_replicated"]["state_bytes"] == g * 4 * fp32
    assert result["fastclip_v2"]["state_bytes"] == g * 9 * fp32 + g * 13 * fp32
    rows = result["state_memory"]["rows"]
    assert {r["world_size"] for r in rows} == {4, 8, 16, 32}
    for r in rows:
        assert r["replicated_bytes"] == result["state_memory"]["num_samples"] * r["columns"] * fp32
        assert r["sharded_bytes"] * r["world_size"] == pytest.approx(r["replicated_bytes"], rel=1e-6)
