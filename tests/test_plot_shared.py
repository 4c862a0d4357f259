"""One drawing code for curves: tools/plot_run.py and the study's figure both go through evaluation.plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import evaluation.plots
import tools.plot_run
from studies.study_report import write_plot
from tools.plot_run import plot_runs

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """The panels each draw_panels call got (the call still draws). tools/plot_run.py holds the very function."""
    calls = []
    draw = evaluation.plots.draw_panels
    assert tools.plot_run.draw_panels is draw

    def spy(panels, out, **kwargs):
        calls.append(panels)
        return draw(panels, out, **kwargs)

    monkeypatch.setattr(evaluation.plots, "draw_panels", spy)
    monkeypatch.setattr(tools.plot_run, "draw_panels", spy)
    return calls


def _study_run(loss: str, seed: int, r1: list[float]) -> dict:
    arm = {"loss": loss, "batch": 64, "epochs": 20, "seed": seed, "group": "main"}
    evals = [
        {"text_to_image_R@1": v, "samples": 500 * (i + 1), "train_seconds": 5.0 * (i + 1) + seed}
        for i, v in enumerate(r1)
    ]
    return {
        "id": f"{loss}-b64-e20-s{seed}",
        "label": f"{loss}@64",
        "arm": arm,
        "status": "done",
        "final": evals[-1],
        "evals": evals,
    }


def test_the_study_figure_is_drawn_by_the_shared_panels(tmp_path: Path, drawn: list) -> None:
    """A small study.json: two arms x two seeds; curves are seed means with a min-max band, the gap is paired."""
    runs = [
        _study_run("openclip", 0, [0.02, 0.05]),
        _study_run("openclip", 1, [0.04, 0.07]),
        _study_run("fastclip-v3", 0, [0.03, 0.06]),
        _study_run("fastclip-v3", 1, [0.03, 0.10]),
    ]
    fixture = tmp_path / "study.json"
    fixture.write_text(json.dumps({"runs": {r["id"]: r for r in runs}}))
    settings = {"batch": 64, "epochs": 20, "sweep": [20]}
    out = tmp_path / "study.png"
    write_plot(json.loads(fixture.read_text())["runs"], settings, out)
    assert out.read_bytes()[:8] == PNG
    (panels,) = drawn
    by_samples, by_time, gap = panels
    openclip = next(c for c in by_samples.curves if c.label.startswith("openclip@64"))
    assert list(openclip.xs) == [500, 1000] and list(openclip.ys) == pytest.approx([3.0, 6.0])
    assert [list(b) for b in openclip.band] == [pytest.approx([2.0, 5.0]), pytest.approx([4.0, 7.0])]
    assert list(by_time.curves[0].xs) == pytest.approx([5.5, 10.5])  # mean seconds over the seeds
    (paired,) = gap.curves
    assert list(paired.xs) == [20] and list(paired.ys) == pytest.approx([(1 + 3) / 2])  # points: (6-5, 10-7)/2
    assert paired.bars and [list(b) for b in paired.band] == [pytest.approx([1.0]), pytest.approx([3.0])]


def test_plot_run_draws_by_the_shared_panels(tmp_path: Path, drawn: list) -> None:
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "train/loss": 2.0 / s, "schedule/lr": 1e-3 * s} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_runs([run], tmp_path / "curves.png", batch=8)
    assert out.read_bytes()[:8] == PNG
    (panels,) = drawn
    assert [p.title for p in panels] == ["loss", "learning rate"] and panels[1].sci_y
    assert list(panels[0].curves[0].xs) == [8, 16, 24] and list(panels[0].curves[0].ys) == pytest.approx([2, 1, 2 / 3])


def test_draw_panels_refuses_an_empty_figure(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to draw"):
        evaluation.plots.draw_panels([], tmp_path / "x.png")
