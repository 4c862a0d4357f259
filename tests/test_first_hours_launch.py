"""A lab's first hours (issue 28), launched as the user did: img2dataset's real output (download holes) indexed into a
directory of its own, a second source mixed in over HTTP from 127.0.0.1, `accelerate launch` with TensorBoard and
MLflow as installed, a locked image tower, SIGTERM to the launcher, the resume, export with the command the run
printed, and the model used from Python; all of it under umask 002, as in a lab's shared folder.

One run's life, played once (each assertion names the item of the issue it checks).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from skimage import data as skdata

import tools.make_shards as make_shards
from benchmarks.local_servers import http_server
from tests.cluster_utils import finish, job_env, start, wait_for_step, write_recipe
from tests.data_fixtures import write_shards
from tests.ranks import REPO
from tests.test_first_hours import FIXTURE, assert_modes_follow

pytestmark = pytest.mark.slow
UMASK = 0o002
PROGRESS = (
    "read and checked",
    "reading the training data's index: 2 mixed sources",
    "train data: 2 mixed webdataset",
    "building the model tiny on 2 rank(s)",
    "frozen: the image tower; trainable",
)  # in this order


def _launch(recipe: Path, *overrides: str):  # noqa: ANN202 (a Popen)
    """`accelerate launch` of the recipe from a shell whose umask is 002."""
    env = job_env()
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):  # MLflow as installed
        env.pop(name, None)
    previous = os.umask(UMASK)
    try:
        return start(recipe, *overrides, env=env)
    finally:
        os.umask(previous)


def _run_tool(*args: str) -> str:
    previous = os.umask(UMASK)
    try:
        done = subprocess.run(
            [sys.executable, *args], cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=600
        )
    finally:
        os.umask(previous)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_a_lab_run_from_img2dataset_output_to_an_exported_model(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from fastflip import load_clip
    from train.checkpoint.consolidate import load_model

    index = tmp_path / "index"
    previous = os.umask(UMASK)
    try:
        make_shards.main(["manifest", "--shards", str(FIXTURE), "--out", str(index)])
        write_shards(str(tmp_path / "served"), [14, 9, 17])  # the second source, served over HTTP
    finally:
        os.umask(previous)

    with http_server(str(tmp_path / "served")) as (url, _):
        remote_shards = f"{url}/{{0000..0002}}-00.tar"
        previous = os.umask(UMASK)
        try:  # indexed where it is read from (one index for every copy is another issue's)
            make_shards.main(["manifest", "--shards", remote_shards, "--out", str(tmp_path / "index_http")])
        finally:
            os.umask(previous)
        sources = [
            {"path": str(FIXTURE), "index": str(index), "weight": 1.0},
            {"path": remote_shards, "index": str(tmp_path / "index_http"), "weight": 0.5},
        ]
        recipe = write_recipe(
            tmp_path,
            "",
            data={"path": "", "sources": sources},
            epochs=4,
            checkpoint={"every_steps": 4, "keep_last": 2},
            model={"name": "tiny", "lock_image": True},
            logging={"every_steps": 1, "trackers": ["tensorboard", "mlflow"]},
            eval={"zeroshot": str(tmp_path / "served"), "batch_size": 16},
        )
        run = tmp_path / "run"

        # 11: SIGTERM to the launcher; the entry point's last line says where it stopped and what to type
        job = _launch(recipe)
        wait_for_step(run, 2, job)
        os.kill(job.pid, signal.SIGTERM)
        code, out = finish(job)
        stopped = json.loads((run / "status.json").read_text())
        assert code != 0 and stopped["status"] == "preempted", out[-3000:]
        step = stopped["step"]
        line = f"preempted at step {step}, saved {run / 'checkpoints' / f'step_{step:08d}'}; resume with: "
        assert line + "accelerate launch [same options] " in out, out[-3000:]
        assert f"--config {recipe} checkpoint.resume=latest" in out

        # 2: progress lines before the first step, and samples/s with an ETA on the step line
        positions = [out.find(text) for text in PROGRESS]
        assert -1 not in positions and positions == sorted(positions), (positions, out[:4000])
        assert re.search(r"step 1/\d+ .* samples/s [\d.]+ .* eta \d+", out), out[:4000]

        # 5: the resumed run ends with its summary
        code, out = finish(_launch(recipe, "checkpoint.resume=latest"))
        assert code == 0, out[-4000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    last = max(losses)
    final = run / "checkpoints" / f"step_{last:08d}"
    evaluation = next(r for r in reversed(rows) if "eval/zeroshot_top1" in r)
    assert f"done: {last} steps" in out and f"final loss {losses[last]:.4f}" in out
    assert f"last evaluation (step {last}): " in out and f"zeroshot_top1 {evaluation['eval/zeroshot_top1']:.4f}" in out
    assert f"final checkpoint: {final}" in out
    assert re.search(r"frozen: the image tower; trainable [\d.]+M of [\d.]+M parameters", out.split("done:")[-1])
    export_line = next(line for line in out.splitlines() if "next: python tools/export.py" in line)
    # 12: the mixed sources are named, not "webdataset , N samples"
    assert "train data: 2 mixed webdataset sources, 44 samples" in out and "webdataset , " not in out

    # 1: MLflow as installed: the run directory's SQLite store holds every logged loss, across the resume
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("fastflip").experiment_id])
    history = {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, "train/loss")}
    assert history == pytest.approx(losses, rel=1e-12) and mlflow_run.info.status == "FINISHED"
    assert any((run / "tensorboard").iterdir())

    # 5: export with the printed command (12: no DeepSpeed accelerator warning); 3: every file follows the umask
    command = shlex.split(export_line.split("next: ", 1)[1].split("   (or --to hf)")[0])
    assert command[:2] == ["python", "tools/export.py"]
    exported = _run_tool(*command[1:])
    hf_dir = tmp_path / "hf"
    exported += _run_tool("tools/export.py", "--checkpoint", str(run), "--to", "hf", "--out", str(hf_dir))
    assert "Setting accelerator" not in exported and "DeepSpeed" not in exported, exported
    open_clip_dir = Path(command[command.index("--out") + 1])
    assert open_clip_dir == run / "export" / "open_clip" and (open_clip_dir / "open_clip_model.safetensors").is_file()
    for root in (run, index, tmp_path / "index_http", hf_dir):
        assert_modes_follow(root, UMASK)

    # 2: --info reads no weights and imports neither the model code nor the exporters
    probe = (
        "import runpy, sys; sys.argv = ['export.py', '--info', sys.argv[1]]\ntry:\n"
        " runpy.run_path('tools/export.py', run_name='__main__')\nexcept SystemExit:\n pass\n"
        "print(sorted(m for m in ('timm', 'transformers', 'open_clip', 'deepspeed', 'accelerate') if m in "
        "sys.modules))"
    )
    described = _run_tool("-c", probe, str(run / "checkpoints" / "latest"))
    assert f"step {last}, epoch" in described and described.rstrip().endswith("[]"), described

    # 6: `latest` everywhere, and the public API gives the export's embeddings
    model, meta = load_model(run / "checkpoints" / "latest")
    assert meta["step"] == last and not model.training
    images = [skdata.astronaut(), skdata.coffee()]
    from PIL import Image

    images = [Image.fromarray(a) for a in images]
    texts = ["an astronaut", "a cup of coffee"]
    ours = load_clip(run / "checkpoints" / "latest")
    for other in (load_clip(run), load_clip(open_clip_dir), load_clip(hf_dir)):
        for mine, theirs in (
            (ours.embed_images(images), other.embed_images(images)),
            (ours.embed_texts(texts), other.embed_texts(texts)),
        ):
            assert torch.allclose(mine, theirs, atol=1e-6), other.source
    logits = ours.logits(ours.embed_images(images), ours.embed_texts(texts))
    assert logits.shape == (2, 2) and torch.allclose(
        logits, model.logit_scale.exp() * ours.embed_images(images) @ ours.embed_texts(texts).T
    )
