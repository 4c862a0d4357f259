"""Data faults in launched jobs (accelerate launch, 2 CPU ranks with loader workers), played as the probe did:
the HTTP server of the shards stopped mid-run (briefly: the reads retry; for longer than
data.webdataset.remote_retry_s: the job saves and ends "data unavailable", and resumes once the server is back),
and a shard swapped for another of the same size (one line, exit 2)."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path

import pytest

import tools.make_shards as make_shards
from benchmarks.local_servers import http_server
from tests.cluster_utils import crash_report, finish, logged_steps, start, wait_for_step, write_recipe
from tests.data_fixtures import write_shards
from train.checkpoint.files import resolve_resume
from train.faults.rank_sync import free_port
from train.faults.status import read_status

pytestmark = pytest.mark.slow


class Server:
    """The shards' HTTP server on a fixed port, stopped and started again by the test."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = str(directory), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop, ready = threading.Event(), threading.Event()

        def serve() -> None:
            with http_server(self.directory, self.port):
                ready.set()
                self._stop.wait()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def remote_recipe(tmp_path: Path) -> tuple[Path, Server]:
    """A recipe whose shards come from a local HTTP server (indexed where a lab keeps them: the same index serves
    the mirror), with a one-shard cache so that every shard switch downloads again."""
    write_shards(str(tmp_path / "shards"), [14, 9, 17])
    make_shards.main(["manifest", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "index")])
    server = Server(tmp_path / "shards")
    recipe = write_recipe(
        tmp_path,
        f"{server.url}/{{0000..0002}}-00.tar",
        epochs=6,
        data={
            "webdataset": {
                "index": str(tmp_path / "index"),
                "cache_dir": str(tmp_path / "cache"),
                "cache_max_gb": 1e-6,
            },
            "batch_size": 4,
            "shuffle_window": 16,
            "workers": 1,
        },
    )
    return recipe, server


def test_a_short_outage_is_retried_and_the_run_completes(remote_recipe: tuple[Path, Server], tmp_path: Path) -> None:
    recipe, server = remote_recipe
    server.start()
    job = start(recipe, "data.webdataset.remote_retry_s=60")
    try:
        wait_for_step(tmp_path / "run", 2, job)
        server.stop()
        time.sleep(4)
        server.start()
        code, out = finish(job)
    finally:
        with contextlib.suppress(Exception):
            server.stop()
    status = read_status(tmp_path / "run")
    assert status is not None and status["status"] == "completed", crash_report(out)
    assert "retry 1 in 1 s (giving up after data.webdataset.remote_retry_s=60 s)" in out, crash_report(out)
    assert logged_steps(tmp_path / "run") == list(range(1, 31))


def test_a_long_outage_saves_ends_data_unavailable_and_resumes(
    remote_recipe: tuple[Path, Server], tmp_path: Path
) -> None:
    recipe, server = remote_recipe
    server.start()
    job = start(recipe, "data.webdataset.remote_retry_s=3")
    wait_for_step(tmp_path / "run", 2, job)
    server.stop()
    code, out = finish(job)
    status = read_status(tmp_path / "run")
    assert status is not None, crash_report(out)
    assert (status["status"], status["exit_code"]) == ("data unavailable", 69), crash_report(out)
    saved = resolve_resume(tmp_path / "run" / "checkpoints", "latest")
    assert saved is not None and int(saved.name[5:]) == status["step"] >= 2, crash_report(out)
    assert "unreachable for 3 s (data.webdataset.remote_retry_s=3)" in out and "reading " in out
    assert "config error" not in out and "Traceback" not in out.split("data unavailable on rank")[0]
    server.start()
    try:
        code, out = finish(start(recipe, "checkpoint.resume=latest", "data.webdataset.remote_retry_s=3"))
    finally:
        server.stop()
    status = read_status(tmp_path / "run")
    assert status is not None and status["status"] == "completed", crash_report(out)
    assert logged_steps(tmp_path / "run")[-1] == 30


def test_a_swapped_shard_stops_the_run_in_one_line(shards: str, tmp_path: Path) -> None:
    local = tmp_path / "shards"
    shutil.copytree(shards, local)
    write_shards(str(tmp_path / "other"), [14, 9, 17], keys=list(range(100, 140)))
    shutil.copy(tmp_path / "other" / "0001-00.tar", local / "0001-00.tar")  # same size: tar pads to 10 KiB
    code, out = finish(start(write_recipe(tmp_path, str(local))))
    status = read_status(tmp_path / "run")
    assert status is not None and (status["status"], status["exit_code"]) == ("config error", 2), crash_report(out)
    assert status["message"].startswith(f"changed shard: shard {local / '0001-00.tar'} changed since it was indexed")
    assert "\n" not in status["message"] and "fingerprint mismatch" in status["message"]
    assert "Original Traceback" not in out and "corrupt_image" not in out
