"""The one way curves are drawn: panels of labelled curves (optionally with a low-high band, shaded or as error
bars) in a grid, one colour per label across panels, a shared legend below, into a PNG. tools/plot_run.py (a run's
curves) and the study's report (studies/study_report.py) both draw through `draw_panels`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Curve:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    band: tuple[Sequence[float], Sequence[float]] | None = None  # (low, high) at each x
    bars: bool = False  # the band as error bars (separate x values) instead of a shaded area
    linestyle: str = "-"
    linewidth: float = 1.2
    marker: str | None = None


@dataclass
class Panel:
    title: str
    curves: list[Curve] = field(default_factory=list)
    xlabel: str = "samples seen"
    ylabel: str = ""
    zero_line: bool = False  # a grey line at y = 0 (differences)
    sci_y: bool = False  # scientific y tick labels (learning rates)


def palette(labels: Sequence[str]) -> dict[str, tuple]:
    """A colour per label, in order: ten distinct hues, then their light shades (up to 20 before repeating)."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    return {label: cmap((2 * i) % 20 + (i // 10) % 2) for i, label in enumerate(labels)}


def draw_panels(
    panels: list[Panel],
    out: Path,
    cols: int = 3,
    panel_size: tuple[float, float] = (5.2, 3.6),
    legend_cols: int = 6,
    dpi: int = 100,
) -> Path:
    """Draw `panels` in a grid of `cols` columns and save it to `out`; the legend appears when 2+ labels are drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError(f"{out}: nothing to draw (no panel has a curve)")
    labels = list(dict.fromkeys(c.label for p in panels for c in p.curves))
    colours = palette(labels)
    cols = min(cols, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows), squeeze=False)
    handles = {}
    for ax, panel in zip(axes.flat, panels, strict=False):
        for c in panel.curves:
            (line,) = ax.plot(
                c.xs,
                c.ys,
                color=colours[c.label],
                label=c.label,
                linestyle=c.linestyle,
                linewidth=c.linewidth,
                marker=c.marker,
                markersize=3,
            )
            handles.setdefault(c.label, line)
            if c.band is not None and c.bars:
                below = [y - low for y, low in zip(c.ys, c.band[0], strict=True)]
                above = [high - y for y, high in zip(c.ys, c.band[1], strict=True)]
                ax.errorbar(c.xs, c.ys, yerr=[below, above], color=colours[c.label], linestyle="none", capsize=3)
            elif c.band is not None:
                ax.fill_between(c.xs, c.band[0], c.band[1], color=colours[c.label], alpha=0.15)
        if panel.zero_line:
            ax.axhline(0, color="grey", lw=0.8)
        if panel.sci_y:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    bottom = 0.0
    if len(handles) > 1:
        ncol = min(len(handles), legend_cols)
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=8)
        legend_inches = 0.25 * math.ceil(len(handles) / ncol) + 0.15
        bottom = min(0.5, legend_inches / fig.get_figheight())
    fig.tight_layout(rect=(0, bottom, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
