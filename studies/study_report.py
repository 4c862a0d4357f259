"""The study's report: studies/results/study.md (tables, diagnostics) and study.png (curves), from its runs."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

METRIC = "text_to_image_R@1"


def _key(run: dict) -> str:
    """An arm without its seed: runs that differ only in the seed are pooled."""
    return run["id"].rsplit("-s", 1)[0]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _pct(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return f"{100 * mean:.1f}" + ("" if math.isnan(std) else f" ± {100 * std:.1f}")


def pooled(runs: dict[str, dict]) -> dict[str, list[dict]]:
    """Finished runs grouped by arm (seeds pooled), in the study's run order."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs.values():
        if run["status"] == "done":
            groups[_key(run)].append(run)
    return dict(groups)


def gap_to_openclip(groups: dict[str, list[dict]], settings: dict, loss: str = "fastclip-v3") -> dict | None:
    """`loss`@b minus OpenCLIP@b at the main epochs: mean difference of R@1 and its standard error."""
    b, e = settings["batch"], settings["epochs"]
    fast, base = groups.get(f"{loss}-b{b}-e{e}", []), groups.get(f"openclip-b{b}-e{e}", [])
    if not fast or not base:
        return None
    f = [r["final"][METRIC] for r in fast]
    o = [r["final"][METRIC] for r in base]
    se = math.sqrt(sum(statistics.variance(x) / len(x) for x in (f, o))) if min(len(f), len(o)) > 1 else math.nan
    return {"gap": statistics.fmean(f) - statistics.fmean(o), "se": se, "n_fast": len(f), "n_openclip": len(o)}


def _baseline(arm: dict, settings: dict) -> str:
    """The OpenCLIP@b arm an arm is compared with: same epochs (FLIP: same wall clock; 4b: same steps)."""
    epochs = settings["scale_epochs"] if arm["group"] == "scale" else arm["epochs"]
    return f"openclip-b{settings['batch']}-e{epochs}"


def _on_test(groups: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The arms evaluated on the test mosaics (not the loss choice's validation candidates)."""
    return {k: rs for k, rs in groups.items() if rs[0]["arm"].get("split", "test") == "test"}


def _setting(loss: dict) -> str:
    """What the loss choice varies, from an arm's `loss:` section."""
    if loss["name"] == "siglip":
        return f"bias init {loss['bias_init']:g}"
    if loss["name"] == "fastclip":
        return f"gamma_min {loss['gamma_min']:g}, lr_tau {loss['lr_tau']:g}"
    return f"tau init {loss['tau_init']:g}, learnt at the model lr"


def _choice(groups: dict[str, list[dict]], settings: dict, chosen: dict[str, str]) -> list[str]:
    """The loss choice: every candidate on validation, then the chosen settings on test once."""
    b, e = settings["batch"], settings["epochs"]
    val = [rs for rs in groups.values() if rs[0]["arm"]["group"] == "choice"]
    if not val:
        return []
    order = ["openclip", "fastclip", "siglip"]
    val.sort(key=lambda rs: (order.index(rs[0]["config"]["loss"]["name"]), _setting(rs[0]["config"]["loss"])))
    lines = [
        "",
        "### Which loss at small batch: settings chosen on validation",
        "",
        f"Every candidate trains on seeds 0-{settings['choice_seeds'] - 1} and is evaluated on the "
        f"{settings['val_size']} validation mosaics only (train images no training mosaic uses). The best mean "
        "text→image R@1 is chosen; only the chosen settings are evaluated on the test mosaics.",
        "",
        "| loss | setting | seeds | val text→image R@1 | val image→text R@1 | chosen |",
        "|---|---|---:|---:|---:|---|",
    ]
    for rs in val:
        mark = "**yes**" if rs[0]["arm"]["loss"] in chosen.values() else ""
        t2i, i2t = _pct([r["final"][METRIC] for r in rs]), _pct([r["final"]["image_to_text_R@1"] for r in rs])
        lines.append(
            f"| {rs[0]['config']['loss']['name']} | {_setting(rs[0]['config']['loss'])} | {len(rs)} "
            f"| {t2i} | {i2t} | {mark} |"
        )
    lines += [
        "",
        f"The chosen settings on the 1000 test mosaics ({e} epochs at b = {b}; mean ± std over seeds; "
        "Δ: mean difference to OpenCLIP with its standard error):",
        "",
        "| loss | setting | seeds | text→image R@1 | Δ vs OpenCLIP | text→image R@5 | image→text R@1 "
        "| zero-shot top-1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in chosen.values():
        rs = groups.get(f"{key}-b{b}-e{e}", [])
        if not rs:
            lines.append(f"| {key} | not run yet | | | | | | |")
            continue
        final = [r["final"] for r in rs]
        gap = gap_to_openclip(groups, settings, key) if key != "openclip" else None
        delta = "" if gap is None else f"{100 * gap['gap']:+.1f} (s.e. {100 * gap['se']:.1f})"
        metrics = (METRIC, "text_to_image_R@5", "image_to_text_R@1", "zeroshot_top1")
        cells = [_pct([f[k] for f in final]) for k in metrics]
        lines.append(
            f"| {rs[0]['config']['loss']['name']} | {_setting(rs[0]['config']['loss'])} | {len(rs)} "
            f"| {cells[0]} | {delta} | {cells[1]} | {cells[2]} | {cells[3]} |"
        )
    return lines


def _table(groups: dict[str, list[dict]], settings: dict) -> list[str]:
    lines = [
        "| arm | group | epochs | seeds | samples seen | train s | text→image R@1 | Δ vs OpenCLIP@b | text→image R@5 "
        "| image→text R@1 | zero-shot top-1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, rs in groups.items():
        arm = rs[0]["arm"]
        final = [r["final"] for r in rs]
        secs = statistics.fmean(r["train_seconds"] for r in rs)
        base = groups.get(_baseline(arm, settings), [])
        delta = ""
        if base and _baseline(arm, settings) != key:
            mean = statistics.fmean(f[METRIC] for f in final)
            delta = f"{100 * (mean - statistics.fmean(r['final'][METRIC] for r in base)):+.1f}"
        lines.append(
            f"| {rs[0]['label']} | {arm['group']} | {arm['epochs']} | {len(rs)} | {rs[0]['final']['samples']:,} "
            f"| {secs:.0f} | {_pct([f[METRIC] for f in final])} | {delta} | "
            f"{_pct([f['text_to_image_R@5'] for f in final])} | {_pct([f['image_to_text_R@1'] for f in final])} "
            f"| {_pct([f['zeroshot_top1'] for f in final])} |"
        )
    return lines


def _sweep(groups: dict[str, list[dict]], settings: dict) -> list[str]:
    b = settings["batch"]
    lines = ["| epochs per sample | OpenCLIP@b R@1 | FastCLIP-v3@b R@1 | gap (points) |", "|---:|---:|---:|---:|"]
    for ep in sorted({*settings["sweep"], *settings.get("long_sweep", ()), settings["epochs"]}):
        o = groups.get(f"openclip-b{b}-e{ep}", [])
        f = groups.get(f"fastclip-v3-b{b}-e{ep}", [])
        if o and f:  # seed 0 only, so every point is one run per loss
            o0, f0 = o[0]["final"][METRIC], f[0]["final"][METRIC]
            lines.append(f"| {ep} | {100 * o0:.1f} | {100 * f0:.1f} | {100 * (f0 - o0):+.1f} |")
    return lines


def _diagnostics(groups: dict[str, list[dict]], settings: dict, data: dict) -> list[str]:
    lines = []
    if data:
        lines += [
            "",
            "### False negatives in a batch",
            "",
            f"{data['train_mosaics']} training mosaics, {data['distinct_train_captions']} distinct captions. For a "
            f"batch of {data['batch']}, the chance that a negative has the anchor's exact caption is "
            f"{100 * data['p_negative_same_caption']:.3f}% ({data['false_negatives_per_anchor_in_batch']['mosaic']:.3f}"
            f" per anchor); it shares 3 of 4 cells {100 * data['p_negative_3_of_4_cells']:.2f}% of the time. With "
            f"Fashion-MNIST class names as captions it would be {100 * data['p_negative_same_class_single_items']:.1f}%"
            f" ({data['false_negatives_per_anchor_in_batch']['single_items']:.1f} per anchor).",
        ]
    b, e = settings["batch"], settings["epochs"]
    diag = [r for r in groups.get(f"fastclip-v3-b{b}-e{e}", []) if "u_staleness" in r]
    if diag:
        lines += [
            "",
            "### Staleness of u (FastCLIP-v3@b, seed 0, end of each epoch)",
            "",
            "|log u − log g| against the exact dataset-wide g of the current model (median over samples; "
            "image anchors), next to the error of a fresh single-batch estimate g(batch) as the mini-batch "
            "loss uses it. Mean signed log(u/g) > 0: u overestimates g.",
            "",
            "| epoch | tau | median abs log u/g | mean log u/g | median abs log g(batch)/g |",
            "|---:|---:|---:|---:|---:|",
        ]
        spe = -(-settings["train_size"] // b)
        rows = diag[0]["u_staleness"]
        shown = rows[:: max(1, len(rows) // 8)]
        if shown[-1] is not rows[-1]:
            shown.append(rows[-1])
        for row in shown:
            lines.append(
                f"| {row['step'] / spe:.0f} | {row['tau']:.4f} | {row['median_abs_log_u_over_g1']:.3f} "
                f"| {row['mean_log_u_over_g1']:+.3f} | {row['median_abs_log_batch_over_g1']:.3f} |"
            )
    taus = {k: rs[0]["trajectory"] for k, rs in groups.items() if rs[0]["arm"]["group"] != "sweep"}
    if taus:
        epochs = [t["epoch"] for t in next(iter(taus.values()))]
        shown = [ep for ep in epochs if ep == 1 or ep % max(1, len(epochs) // 5) == 0]
        lines += [
            "",
            "### Temperature tau at the end of epochs (seed 0)",
            "",
            "| arm | " + " | ".join(f"ep {ep}" for ep in shown) + " |",
            "|---|" + "---:|" * len(shown),
        ]
        for key, traj in taus.items():
            by_epoch = {t["epoch"]: t.get("schedule/tau", math.nan) for t in traj}
            lines.append(
                f"| {groups[key][0]['label']} | "
                + " | ".join(f"{by_epoch.get(ep, math.nan):.4f}" for ep in shown)
                + " |"
            )
    return lines


def write_markdown(
    runs: dict[str, dict], settings: dict, calibration: dict, data: dict, chosen: dict[str, str], path: Path
) -> None:
    groups = pooled(runs)
    tested = _on_test(groups)
    lines = [
        "# FastCLIP vs OpenCLIP vs SigLIP at small batch on Fashion-MNIST mosaics",
        "",
        f"Tiny CLIP (56 px, patch 14), {settings['train_size']} training mosaics, b = {settings['batch']}, "
        f"one CPU process per run; final evaluation on 1000 test mosaics with distinct captions (R@k, %) and "
        f"{settings['zeroshot_size']} single test items (zero-shot, %). Mean ± std over seeds.",
        "",
    ]
    lines += _table(tested, settings)
    b = settings["batch"]
    for loss in sorted({rs[0]["arm"]["loss"] for rs in tested.values() if len(rs) > 1} - {"openclip"}):
        gap = gap_to_openclip(groups, settings, loss)
        if gap:
            se = "n/a" if math.isnan(gap["se"]) else f"{100 * gap['se']:.2f}"
            lines += [
                "",
                f"**{loss}@{b} − openclip@{b}, text→image R@1 at {settings['epochs']} epochs: "
                f"{100 * gap['gap']:+.2f} points** (standard error {se}; {gap['n_fast']} vs "
                f"{gap['n_openclip']} seeds).",
            ]
    lines += ["", "### Epochs per sample (seed 0)", "", *_sweep(groups, settings)]
    lines += _choice(groups, settings, chosen)
    lines += _diagnostics(tested, settings, data)
    if calibration:
        r = calibration["ratio_to_b"]
        lines += [
            "",
            f"FLIP budget: step time relative to b unmasked, measured side by side: 2b {r['2b']:.2f}, "
            f"2b with 50% masking {r['2b_mask0.5']:.2f}.",
        ]
    missing = [r["id"] + ": " + r["status"] for r in runs.values() if r["status"] != "done"]
    if missing:
        lines += ["", "Not finished: " + "; ".join(missing)]
    path.write_text("\n".join(lines) + "\n")


def write_plot(runs: dict[str, dict], settings: dict, path: Path) -> None:
    """R@1 against samples seen and against training seconds (mean over seeds, min-max band), and the FastCLIP-v3
    minus OpenCLIP gap per epoch count, drawn by evaluation.plots as tools/plot_run.py draws a run."""
    from evaluation.plots import Curve, Panel, draw_panels  # noqa: PLC0415 (plotting only when writing the report)

    groups = _on_test(pooled(runs))
    styles = {
        "main": ("-", 2.5),
        "flip": ("-.", 1.2),
        "scale": (":", 1.5),
        "ablation": ("--", 1.2),
        "tuning": ("--", 1.2),
    }
    by_samples = Panel("R@1 vs samples seen", ylabel="text→image R@1 (%)")
    by_time = Panel(
        "R@1 vs time",
        xlabel="training wall-clock seconds (one core of a shared, loaded machine)",
        ylabel="text→image R@1 (%)",
    )
    for rs in (rs for rs in groups.values() if rs[0]["arm"]["group"] != "sweep"):
        n = min(len(r["evals"]) for r in rs)
        ys = [[100 * r["evals"][i][METRIC] for r in rs] for i in range(n)]
        band = ([min(y) for y in ys], [max(y) for y in ys]) if len(rs) > 1 else None
        label = rs[0]["label"] + f" ({len(rs)} seed{'s' if len(rs) > 1 else ''}, {rs[0]['arm']['epochs']} ep)"
        style, width = styles.get(rs[0]["arm"]["group"], ("-", 1.2))
        for panel, axis in ((by_samples, "samples"), (by_time, "train_seconds")):
            xs = [statistics.fmean(r["evals"][i][axis] for r in rs) for i in range(n)]
            panel.curves.append(
                Curve(label, xs, [statistics.fmean(y) for y in ys], band, linestyle=style, linewidth=width, marker=".")
            )
    b = settings["batch"]
    gap = Panel(
        f"gap at batch {b} (paired seeds; range)",
        xlabel="epochs per sample",
        ylabel="FastCLIP-v3 − OpenCLIP R@1 (points)",
        zero_line=True,
    )
    points = []
    for ep in sorted({*settings["sweep"], *settings.get("long_sweep", ()), settings["epochs"]}):
        o, f = groups.get(f"openclip-b{b}-e{ep}"), groups.get(f"fastclip-v3-b{b}-e{ep}")
        if o and f:
            gaps = [100 * (fr["final"][METRIC] - orr["final"][METRIC]) for fr, orr in zip(f, o, strict=False)]
            points.append((ep, statistics.fmean(gaps), min(gaps), max(gaps)))
    if points:
        eps, mean, lo, hi = zip(*points, strict=True)
        gap.curves.append(Curve("FastCLIP-v3 − OpenCLIP", eps, mean, (lo, hi), bars=True, marker="o"))
    draw_panels([by_samples, by_time, gap], path, panel_size=(17 / 3, 6.2), legend_cols=4, dpi=110)


def write_report(
    runs: dict[str, dict], settings: dict, calibration: dict, data: dict, out: Path, chosen: dict[str, str]
) -> None:
    """study.md and study.png; `chosen`: each loss's setting chosen on validation ({} before the choice)."""
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(runs, settings, calibration, data, chosen, out / "study.md")
    if pooled(runs):
        write_plot(runs, settings, out / "study.png")
