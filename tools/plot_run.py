"""Curves of one or more runs against samples seen, into a PNG: loss, lr, tau, gamma, samples/s, the in-loop
evaluation and each suite task's main metric (written by tools/evaluate.py --watch).

  python tools/plot_run.py runs/X                       # runs/X/curves.png
  python tools/plot_run.py runs/X runs/Y --out cmp.png  # runs overlaid, one colour each

Rows come from each run's metrics.jsonl, merged with the watcher's own eval_watch/results.jsonl (its record
survives a metrics.jsonl rewritten by a resumed job). Samples seen = step x global batch (data.batch_size x
ranks, from the newest checkpoint's meta.json, or --global-batch). evaluation.plots draws the panels, as it
draws the study's figure (studies/study_report.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from evaluation.plots import Curve, Panel, draw_panels

TRAIN_PANELS = (
    ("train/loss", "loss"),
    ("schedule/lr", "learning rate"),
    ("schedule/tau", "temperature tau"),
    ("schedule/gamma", "gamma"),
    ("perf/samples_per_s", "samples/s"),
)
IN_LOOP_EVAL = ("eval/zeroshot_top1", "eval/text_to_image_R@1", "eval/image_to_text_R@1")


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a torn last line
            continue
    return out


def global_batch(run_dir: Path) -> int | None:
    """data.batch_size x world size of the run's newest checkpoint."""
    metas = sorted(run_dir.glob("checkpoints/step_*/meta.json"))
    if not metas:
        return None
    meta = json.loads(metas[-1].read_text())
    return int(meta["world_size"]) * int(meta["config"]["data"]["batch_size"])


def read_run(run_dir: Path) -> tuple[dict[str, dict[int, float]], list[str]]:
    """{scalar: {step: value}} from metrics.jsonl and the watcher's record, and the suite's main-metric keys."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for row in _rows(run_dir / "metrics.jsonl"):
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                series[key][row["step"]] = float(value)
    mains: list[str] = []
    for record in _rows(run_dir / "eval_watch" / "results.jsonl"):
        for key, value in record["scalars"].items():
            series[f"suite/{key}"][record["step"]] = float(value)
        for task in record["results"]["tasks"]:
            key = f"suite/{task['task']}/{task['main_metric']}"
            if task["status"] == "ok" and key not in mains:
                mains.append(key)
    if mains:
        mains.append("suite/average")
    return dict(series), mains


def run_panels(runs: list[tuple[str, dict[str, dict[int, float]], list[str], int]]) -> list[Panel]:
    """One panel per quantity any run has (training curves, in-loop evaluation, suite main metrics), each run a
    curve against samples seen; `runs`: (name, series, suite main-metric keys, global batch)."""
    keys = [(k, t) for k, t in TRAIN_PANELS if any(k in s for _, s, _, _ in runs)]
    keys += [(k, k.removeprefix("eval/")) for k in IN_LOOP_EVAL if any(k in s for _, s, _, _ in runs)]
    for _, _, mains, _ in runs:
        keys += [(k, k.removeprefix("suite/")) for k in mains if (k, k.removeprefix("suite/")) not in keys]
    panels = []
    for key, title in keys:
        panel = Panel(title, sci_y=key == "schedule/lr")
        for name, series, _, gb in runs:
            points = sorted(series.get(key, {}).items())
            if points:
                panel.curves.append(
                    Curve(
                        name,
                        [s * gb for s, _ in points],
                        [v for _, v in points],
                        marker="o" if key.startswith(("suite/", "eval/")) else None,
                    )
                )
        panels.append(panel)
    return panels


def plot_runs(run_dirs: list[Path], out: Path, batch: int | None = None) -> Path:
    """One panel per quantity any run has; each run one colour."""
    runs = []
    for run_dir in run_dirs:
        series, mains = read_run(run_dir)
        if not series:
            raise FileNotFoundError(f"{run_dir}: no metrics.jsonl rows (is it a run directory?)")
        gb = batch or global_batch(run_dir)
        if gb is None:
            raise ValueError(f"{run_dir}: no checkpoint to read the global batch from; pass --global-batch")
        runs.append((run_dir.name, series, mains, gb))
    return draw_panels(run_panels(runs), out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories (run.output_dir)")
    parser.add_argument("--out", default="", help="PNG to write (default: <first run>/curves.png)")
    parser.add_argument("--global-batch", type=int, default=None, help="samples per step (default: from meta.json)")
    args = parser.parse_args()
    run_dirs = [Path(r) for r in args.runs]
    out = plot_runs(run_dirs, Path(args.out) if args.out else run_dirs[0] / "curves.png", args.global_batch)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
