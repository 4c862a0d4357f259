"""The benchmark tables of the docs, generated from the committed runs in benchmarks/results/*.json.

Each table sits in a doc between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; this script rewrites what is
between the markers, so a table can never disagree with the run it reports.

    python benchmarks/doc_tables.py            # rewrite the tables in README.md and docs/*.md
    python benchmarks/doc_tables.py --check    # exit 1, naming each stale table (tests/test_docs.py runs it)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MARKER = re.compile(r"(<!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)

Rows = list[list[str]]


@dataclass(frozen=True)
class Table:
    """A table built from one or more result files (names relative to benchmarks/results)."""

    sources: tuple[str, ...]
    build: Callable[..., Rows]  # one loaded JSON per source -> header row + rows


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def _ratio(x: float) -> str:
    return f"{x:.2f}"


def _range(values: Iterable[float], digits: int = 0) -> str:
    values = list(values)
    return f"{_n(min(values), digits)}-{_n(max(values), digits)}"


PLACE = {"local": "local", "http": "HTTP", "s3": "S3 (moto)"}


def data_sources(d: dict) -> Rows:
    places = d["config"]["source"].split(",")
    workers = sorted({int(k.split("=")[1]) for k in d["samples_per_s_median"]})
    rows = [
        [
            "workers",
            *(f"{PLACE.get(p, p)} (samples/s)" for p in places),
            *(f"{PLACE.get(p, p)} / local" for p in places if p != "local"),
        ]
    ]
    for w in workers:
        rate = [_n(d["samples_per_s_median"][f"{p}/workers={w}"]) for p in places]
        ratio = [_ratio(d["ratio_vs_local"][f"{p}/workers={w}"]) for p in places if p != "local"]
        rows.append([str(w), *rate, *ratio])
    return rows


def data_index(d: dict) -> Rows:
    return [["shards read from", "indexing (samples/s)"]] + [
        [PLACE.get(p, p), _n(rate)] for p, rate in d["index_samples_per_s"].items()
    ]


def _sizes(d: dict) -> list[str]:
    return list(d["per_core"])


def data_photos(d: dict) -> Rows:
    sizes, core, cores, goal = _sizes(d), d["per_core"], d["cores_per_gpu"], d["goal_values"]

    def each(fn: Callable[[str], str]) -> list[str]:
        return [fn(s) for s in sizes]

    def per_mask(s: str, variant: str, bold_last: bool = False) -> str:
        values = [f"{v:.1f}" for v in cores[s][variant].values()]
        if bold_last:
            values[-1] = f"**{values[-1]}**"
        return " / ".join(values)

    masks = " / ".join(f"{float(m):g}" for m in cores[sizes[0]]["ours"])
    last = list(cores[sizes[0]]["ours"])[-1]
    decoders = ("decode:pil", "decode:torchvision", "decode:simplejpeg", "decode:simplejpeg_reused", "decode:pil_draft")
    return [
        ["per core, samples per CPU-second", *(f"{s} px" for s in sizes)],
        ["decode floor: tar read + fastest full decode", *each(lambda s: _n(core[s]["decode_floor"]))],
        [
            "decode: PIL / torchvision / simplejpeg / simplejpeg into a reused buffer / PIL `draft`",
            *each(lambda s: " / ".join(_n(core[s][k]) if k in core[s] else "-" for k in decoders)),
        ],
        [
            "**ours**, the GPU default (`data.resize: auto`): worker decodes, device resizes",
            *each(lambda s: f"**{_n(core[s]['ours'])}**"),
        ],
        [
            "ours, host path (`data.resize: host`, the CPU default): PIL decode + bicubic in the worker",
            *each(lambda s: _n(core[s]["ours_host"])),
        ],
        [
            "ours, `data.decode: device`: worker reads bytes and headers only",
            *each(lambda s: _n(core[s]["ours_decode_device"])),
        ],
        [
            "open_clip_train's webdataset pipeline + train transform (its own environment)",
            *each(lambda s: _n(core[s]["open_clip"])),
        ],
        [f"`ours_over_floor` (goal >= {goal['ours_over_floor']})", *each(lambda s: _ratio(d["ours_over_floor"][s]))],
        [
            f"`ours_over_open_clip` (goal >= {goal['ours_over_open_clip']})",
            *each(lambda s: _ratio(d["ours_over_open_clip"][s])),
        ],
        [
            f"`cores_per_gpu`, B/16 at mask {masks}, ours",
            *each(lambda s: f"{per_mask(s, 'ours', True)} (goal <= {goal['cores_per_gpu_0.75'][s]:g})"),
        ],
        [
            f"the same at {last}: host path / `decode: device` / open_clip",
            *each(
                lambda s: " / ".join(
                    f"{cores[s][v][last]:.1f}" for v in ("ours_host", "ours_decode_device", "open_clip")
                )
            ),
        ],
    ]


CANDIDATE = {
    "pil_bicubic": "Pillow bicubic in the worker (the host path)",
    "pil_bilinear": "Pillow bilinear in the worker",
    "pil_draft_bicubic": "Pillow `draft` (DCT downscale) + bicubic",
    "device_resize_on_a_cpu_core": "the batched device resize, run on one CPU core",
    "handoff_pooled": "decode into a pooled shared buffer the trainer gives back (ours)",
    "handoff_fresh": "decode into a fresh shared buffer per batch",
    "handoff_copied": "decode into an array, then copy into new shared memory (before)",
    "handoff_crops": "hand a resized crop over in fresh shared memory (host path; no decode)",
}


def photo_candidates(d: dict) -> Rows:
    rows = [["candidate", "size", "ms per image", "mean \\|levels off\\| vs Pillow bicubic", "max \\|levels off\\|"]]
    for s in _sizes(d):
        for name, c in d["candidates"][s].items():
            off = [f"{c['mean_abs_levels']:.4f}", str(c["max_abs_levels"])] if "max_abs_levels" in c else ["", ""]
            rows.append([CANDIDATE.get(name, name), f"{s} px", f"{c['ms_per_image']:.2f}", *off])
    return rows


def photo_model_rates(d: dict) -> Rows:
    rates = d["model_rates_b16_h200"]
    return [["mask ratio", *rates], ["ViT-B/16 samples/s (one H200)", *(_n(v) for v in rates.values())]]


def e2e(*runs: dict) -> Rows:
    rows = [
        [
            "setting",
            "shards",
            "rounds",
            "ours (samples/s, median and range)",
            "open_clip_train",
            "ours / open_clip_train (medians; per round)",
            "wall s, launch to exit: ours / theirs",
        ]
    ]
    for d in runs:
        st, sm = d["setting"], d["summary"]
        setting = (
            f"{st['model']}, {st['ranks']} ranks x {st['batch_per_rank']}, {st['loss']}, {st['precision']}, "
            f"mask {st['mask_ratio']:g}, {st['workers']} worker(s)/rank, {st['steps']} steps"
        )
        ours, peer = sm["ours_samples_per_s"], sm["peer_samples_per_s"]
        rows.append(
            [
                setting,
                f"`{st['shards']}`",
                str(len(d["rounds"])),
                f"{_n(ours['median'], 1)} ({_range([ours['min'], ours['max']], 1)})",
                f"{_n(peer['median'], 1)} ({_range([peer['min'], peer['max']], 1)})",
                f"{_ratio(sm['ours_over_peer'])} ({_ratio(sm['ratio']['min'])}-{_ratio(sm['ratio']['max'])})",
                f"{_n(sm['ours_wall_s']['median'])} / {_n(sm['peer_wall_s']['median'])}",
            ]
        )
    return rows


REFERENCE_MODE = {
    "none": "no reference",
    "model": "reference with the target's architecture",
    "model_2x_wide": "reference 2x wider",
    "precomputed": "precomputed reference features",
}


def reference(d: dict) -> Rows:
    rows = [["mode", "step (ms)", "samples/s", "step vs no reference", "reference's share of the step"]]
    for mode, m in d["modes"].items():
        rows.append(
            [
                REFERENCE_MODE.get(mode, mode),
                _n(m["step_ms"]),
                _n(m["samples_per_s"], 1),
                f"{m['step_vs_none']:.2f}x",
                f"{100 * m['reference_share_of_step']:.0f}%",
            ]
        )
    return rows


def train(d: dict) -> Rows:
    rows = [
        [
            "backend",
            "precision",
            "model",
            "ranks",
            "global batch",
            "mask",
            "loss",
            "rounds",
            "model-only samples/s",
            "trainer samples/s",
            "trainer / model",
            "vs first backend",
        ]
    ]
    for r in d["runs"]:
        rounds = r["trainer_samples_per_s_rounds"]
        rows.append(
            [
                r["backend"],
                r["precision"],
                r["model"],
                str(r["ranks"]),
                str(r["global_batch"]),
                f"{r['mask_ratio']:g}",
                r["loss"],
                str(len(rounds)),
                _n(r["model_samples_per_s"]),
                _n(r["trainer_samples_per_s"]),
                f"**{r['trainer_over_model']:.3f}**",
                _ratio(r["vs_first_backend"]),
            ]
        )
    return rows


def train_breakdown(d: dict) -> Rows:
    runs = d["runs"]
    phases = list(runs[0]["breakdown_ms_per_step"])
    rows = [["phase (ms per step)", *(r["backend"] for r in runs)]]
    for phase in phases:
        rows.append([phase.replace("_", " "), *(f"{r['breakdown_ms_per_step'][phase]:.1f}" for r in runs)])
    return rows


WATCH = {"alone": "nothing (training alone)", "watch": "the watcher, evaluating each checkpoint", "busy": "a busy loop"}


def watch(d: dict) -> Rows:
    rows = [["on the other core", "training samples/s (median)", "vs alone", "checkpoints evaluated while training"]]
    alone = d["medians"]["alone"]
    for beside, median in d["medians"].items():
        runs = [r for r in d["runs"] if r["beside"] == beside]
        done = (
            f"{sum(r['evaluated_while_training'] for r in runs)} of {sum(r['checkpoints'] for r in runs)}"
            f" ({len(runs)} rounds)"
        )
        rows.append(
            [WATCH.get(beside, beside), _n(median, 1), f"{median / alone:.2f}x", done if beside == "watch" else "-"]
        )
    return rows


TABLES: dict[str, Table] = {
    "data_sources": Table(("bench_data_sources.json",), data_sources),
    "data_index": Table(("bench_data_sources.json",), data_index),
    "data_photos": Table(("bench_data_photos.json",), data_photos),
    "photo_candidates": Table(("bench_data_photos.json",), photo_candidates),
    "photo_model_rates": Table(("bench_data_photos.json",), photo_model_rates),
    "e2e": Table(("bench_e2e_cpu.json", "bench_e2e_photos_cpu.json"), e2e),
    "reference": Table(("bench_reference_cpu.json",), reference),
    "train": Table(("bench_train_cpu.json",), train),
    "train_breakdown": Table(("bench_train_cpu.json",), train_breakdown),
    "watch": Table(("bench_watch_cpu.json",), watch),
}


def markdown(rows: Rows) -> str:
    """A GitHub table: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|---|" + "---:|" * (len(rows[0]) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def render(name: str, results: Path = RESULTS) -> str:
    """The text between a table's markers: the table and the files it was generated from."""
    if name not in TABLES:
        raise SystemExit(f"unknown benchmark table '{name}' in a <!-- bench:{name} --> marker; known: {sorted(TABLES)}")
    table = TABLES[name]
    data = [json.loads((results / src).read_text()) for src in table.sources]
    files = ", ".join(f"`benchmarks/results/{src}`" for src in table.sources)
    return f"{markdown(table.build(*data))}\n\n<sub>Generated by `benchmarks/doc_tables.py` from {files}.</sub>\n"


def refresh(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """`text` with every marked table regenerated, and the names of the tables that changed."""
    changed: list[str] = []

    def sub(m: re.Match[str]) -> str:
        body = render(m["name"], results)
        if body != m["body"]:
            changed.append(m["name"])
        return m[1] + body + m[4]

    return MARKER.sub(sub, text), changed


def docs(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    stale = []
    for path in docs():
        text, changed = refresh(path.read_text())
        stale += [f"{path.relative_to(REPO)}: {name}" for name in changed]
        if changed and not args.check:
            path.write_text(text)
    if args.check and stale:
        print("stale benchmark tables (run python benchmarks/doc_tables.py):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    print(f"{'checked' if args.check else 'wrote'}: {len(stale)} table(s) {'stale' if args.check else 'updated'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
