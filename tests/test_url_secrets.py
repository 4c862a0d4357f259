"""Secrets in URLs are refused wherever the project accepts a URL: every key of a recipe (data, eval, init_from,
sources), and the tools' arguments. The refusal is one line naming the key, and never repeats the secret."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data.url_secrets import url_secret
from tests.ranks import REPO
from tests.tiny_run import tiny_recipe
from train.cli import main
from train.faults.exit_codes import ExitCode

SECRET = "hunter2"
LEAKS = [
    ("eval.zeroshot", f"https://lab:{SECRET}@mirror.example/val/{{0..3}}.tar"),
    ("eval.retrieval", f"https://mirror.example/coco/{{0..3}}.tar?token={SECRET}"),
    ("data.path", f"/data/cc/{{0..1}}.tar::https://lab:{SECRET}@mirror.example/cc/{{2..3}}.tar"),  # second pattern
    ("data.webdataset.index", f"https://b.s3.amazonaws.com/idx?X-Amz-Credential=AKIA&X-Amz-Signature={SECRET}"),
    ("model.init_from", f"open_clip:https://h.example/w.bin?sig={SECRET}&sv=2022-11-02"),  # Azure SAS
]


@pytest.mark.parametrize(("key", "url"), LEAKS)
def test_a_recipe_with_a_secret_in_a_url_is_one_config_error(key: str, url: str, tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(str(tmp_path / "run"), str(tmp_path / "shards"))))
    assert main(["--config", str(recipe), f"{key}={url}"]) == ExitCode.CONFIG
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: ") and len(err.splitlines()) == 1, err
    assert f"{key} carries " in err and "environment" in err and SECRET not in err, err
    assert not (tmp_path / "run").exists()  # nothing was saved


def test_a_secret_in_data_sources_is_refused_naming_the_source(tmp_path: Path, capsys) -> None:
    raw = tiny_recipe(str(tmp_path / "run"), "")
    raw["data"] |= {
        "path": "",
        "sources": [
            {"path": "/data/a", "weight": 1.0},
            {"path": f"s3://b/x?X-Amz-Security-Token={SECRET}", "weight": 1.0},
        ],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--config", str(tmp_path / "r.yaml")]) == ExitCode.CONFIG
    err = capsys.readouterr().err
    assert "data.sources[1].path carries a secret or signature in its query string" in err and SECRET not in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["tools/make_shards.py", "manifest", "--shards", f"https://u:{SECRET}@h.example/{{0..1}}.tar"],
        ["tools/evaluate.py", "--checkpoint", "runs/x/checkpoints/latest", "--zeroshot", f"s3://b/v?token={SECRET}"],
    ],
)
def test_the_tools_refuse_a_secret_in_a_url_argument(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2 and " carries " in done.stderr and SECRET not in done.stderr, done.stderr


def test_plain_urls_pass() -> None:
    for url in (
        "s3://bucket/cc/{000..099}.tar",
        "https://h.example/a.tar?version=2",
        "simplecache::s3://b/x.tar",
        "/data/cc/{0..1}.tar::https://h.example/{2..3}.tar",
        "hf:laion/CLIP-ViT-B-32",
    ):
        assert url_secret(url) is None, url
