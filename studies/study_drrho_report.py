"""studies/results/study_drrho.md from study_drrho.json (and the main study's OpenCLIP / FastCLIP-v3 test arms).

python studies/study_drrho_report.py [--out studies/results]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from studies.study_drrho import CANDIDATES, CHOICE_SEEDS  # noqa: E402

METRIC, ZEROSHOT = "text_to_image_R@1", "zeroshot_top1"
# (row label, arm id prefix, results file): the arms on the test mosaics, seeds pooled
ROWS = [
    ("reference: OpenCLIP on disjoint mosaics", "reference-openclip-b64-e20", "study_drrho.json"),
    ("OpenCLIP (main study)", "openclip-b64-e20", "study.json"),
    ("FastCLIP-v3, validation-chosen gamma 1 (main study)", "fastclip-v3-g1-lt0.001-b64-e20", "study.json"),
    ("FastCLIP-v3, 2025 gamma rule (0.474 over 20 epochs)", "fastclip-v3-rule-b64-e20", "study_drrho.json"),
]


def _runs(out: Path, name: str) -> dict[str, dict]:
    path = out / name
    return json.loads(path.read_text())["runs"] if path.is_file() else {}


def _pooled(runs: dict[str, dict], prefix: str) -> list[dict]:
    return [r for k, r in sorted(runs.items()) if k.startswith(prefix + "-s") and r.get("status") == "done"]


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{100 * statistics.fmean(values):.1f}{sd}"


def _delta(a: list[float], b: list[float]) -> str:
    if len(a) < 2 or len(b) < 2:
        return "–"
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return f"{100 * (statistics.fmean(a) - statistics.fmean(b)):+.1f} (s.e. {100 * se:.1f})"


def _versus_one(a: list[float], single: list[float]) -> str:
    """Mean of `a` minus a single run (the reference: one seed), with `a`'s standard error."""
    if len(a) < 2 or len(single) != 1:
        return "–"
    return f"{100 * (statistics.fmean(a) - single[0]):+.1f} (s.e. {100 * statistics.stdev(a) / math.sqrt(len(a)):.1f})"


def report(out: Path) -> str:
    drrho, main = _runs(out, "study_drrho.json"), _runs(out, "study.json")
    files = {"study_drrho.json": drrho, "study.json": main}
    chosen_file = out / "study_drrho_chosen.json"
    chosen = json.loads(chosen_file.read_text())["chosen"] if chosen_file.is_file() else None
    rows = list(ROWS)
    if chosen:
        rows += [
            (f"DRRho ({chosen}, chosen on validation)", f"{chosen}-b64-e20", "study_drrho.json"),
            (
                f"DRRho ({chosen}), precomputed centre-crop features",
                f"{chosen}-precomputed-b64-e20",
                "study_drrho.json",
            ),
        ]
    pooled = {label: _pooled(files[f], prefix) for label, prefix, f in rows}
    r1 = {label: [r["final"][METRIC] for r in rs] for label, rs in pooled.items()}
    zs = {label: [r["final"][ZEROSHOT] for r in rs if ZEROSHOT in r["final"]] for label, rs in pooled.items()}
    reference, openclip, v3 = r1[ROWS[0][0]], r1[ROWS[1][0]], r1[ROWS[2][0]]
    lines = [
        "# Train with a reference model at small scale (DRRho-CLIP study)",
        "",
        "Text->image R@1 (%) on the 1000 test mosaics, mean ± std over seeds; Δ with the standard error of the "
        "difference of means. Zero-shot top-1 (%) on 1000 single test items.",
        "",
        "| arm | seeds | text→image R@1 | Δ vs OpenCLIP | Δ vs FastCLIP-v3 (gamma 1) | Δ vs reference | "
        "zero-shot top-1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, _, _ in rows:
        if not r1[label]:
            lines.append(f"| {label} | 0 | not run | | | | |")
            continue
        lines.append(
            f"| {label} | {len(r1[label])} | {_mean_sd(r1[label])} | {_delta(r1[label], openclip)} | "
            f"{_delta(r1[label], v3)} | {_versus_one(r1[label], reference)} | {_mean_sd(zs[label])} |"
        )
    lines += [
        "",
        f"Validation (500 mosaics, mean ± std over {CHOICE_SEEDS} seeds; choice only, never test):",
        "",
        "| candidate | val text→image R@1 |",
        "|---|---:|",
    ]
    for key in CANDIDATES:
        vals = [
            r["final"][METRIC]
            for k, r in sorted(drrho.items())
            if k.startswith(f"{key}-b64-e20-val-s") and r.get("status") == "done"
        ]
        lines.append(f"| {key}{' (chosen)' if key == chosen else ''} | {_mean_sd(vals)} |")
    seconds = {label: [r["train_seconds"] for r in rs] for label, rs in pooled.items() if rs}
    lines += [
        "",
        "Train seconds per arm (shared, loaded 2-core machine; see benchmarks/bench_reference.py for a "
        "side-by-side cost): " + ", ".join(f"{k}: {statistics.fmean(v):.0f}" for k, v in seconds.items()),
    ]
    text = "\n".join(lines) + "\n"
    (out / "study_drrho.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "studies" / "results"))
    print(report(Path(p.parse_args(argv).out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
