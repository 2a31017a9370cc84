"""Figures (PNG), drawn with matplotlib's Agg backend (no display needed) and written atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _save_atomic(fig: Any, path: str | os.PathLike) -> Path:
    """Save a figure as PNG: a temporary file in the same directory, then rename (never a half-written PNG)."""
    from fedw2v.atomic import atomic_file

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)


def client_minutes_histogram(minutes: Sequence[float], path: str | os.PathLike, title: str = "") -> Path:
    """Histogram of minutes of speech per client, with the median marked."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    values = np.asarray(minutes, dtype=float)
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if values.size:
        bins = int(min(60, max(5, np.sqrt(values.size) * 2)))
        ax.hist(values, bins=bins, color="#4477aa", edgecolor="white", linewidth=0.5)
        median = float(np.median(values))
        ax.axvline(median, color="#cc3311", linestyle="--", linewidth=1, label=f"median {median:.1f} min")
        ax.legend(frameon=False)
    ax.set_xlabel("minutes of speech per client")
    ax.set_ylabel("clients")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title or f"{values.size} clients")
    fig.tight_layout()
    return _save_atomic(fig, path)


def wer_per_round(
    rounds: Sequence[int], wer: Sequence[float], path: str | os.PathLike, cer: Sequence[float] | None = None,
    title: str = "",
) -> Path:
    """WER (and CER) of the global model per round, in percent: the paper's Figure 1. The best WER is marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if rounds:
        ax.plot(rounds, [100 * w for w in wer], marker="o", markersize=3, color="#4477aa", label="WER")
        if cer is not None:
            ax.plot(rounds, [100 * c for c in cer], marker=".", markersize=3, color="#228833", label="CER")
        best = min(range(len(wer)), key=lambda i: wer[i])
        ax.scatter([rounds[best]], [100 * wer[best]], color="#cc3311", zorder=3,
                   label=f"best WER {100 * wer[best]:.2f}% (round {rounds[best]})")
        ax.legend(frameon=False)
    ax.set_xlabel("round")
    ax.set_ylabel("error rate (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_title(title or "global model")
    fig.tight_layout()
    return _save_atomic(fig, path)


def eer_per_layer(
    layers: Sequence[str], eer_by_round: dict[int, Sequence[float] | None], path: str | os.PathLike,
    average: Sequence[float] | None = None, title: str = "",
) -> Path:
    """EER (%) of the footprint attack against layer, one line per round and their average: the paper's figure.
    Rounds given None (not measurable) are left out; 50% (chance) is marked."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.3 * len(layers) + 3), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = list(range(len(layers)))
    drawn = [(r, v) for r, v in sorted(eer_by_round.items()) if v is not None]
    cmap = colormaps["viridis"]
    for k, (r, values) in enumerate(drawn):
        colour = cmap(k / max(1, len(drawn) - 1) * 0.85)
        ax.plot(x, list(values), marker="o", markersize=3, linewidth=1, color=colour, label=f"round {r}")
    if average is not None:
        ax.plot(x, list(average), color="black", linewidth=2.2, label="average")
    ax.axhline(50, color="#999999", linestyle=":", linewidth=1, label="chance")
    labels = ["in" if name == "input" else name.replace("block ", "") for name in layers]
    ax.set_xticks(x, labels)
    ax.set_xlabel("layer (in = encoder input, then transformer blocks)")
    ax.set_ylabel("EER (%)")
    ax.set_ylim(0, max([55.0, *(v for _, vals in drawn for v in vals)]) + 2)
    ax.grid(alpha=0.3)
    if drawn or average is not None:
        ax.legend(frameon=False, fontsize=8, ncol=2)
    ax.set_title(title or "footprint attack: EER per layer (lower = more identity leaks)")
    fig.tight_layout()
    return _save_atomic(fig, path)


def _label_offsets(points: Sequence[dict]) -> list[tuple[int, int, str]]:
    """(dx, dy in points, alignment) of each point's label: beside its point, to the left near the right edge, and
    moved up or down, greedily, off the labels already placed (boxes estimated in data units: ~0.75 CER per
    character and 3 EER per line at 8 pt on the 7 x 4.5 in figure)."""
    right = max((p["cer"] for p in points), default=0.0)
    boxes: list[tuple[float, float, float, float]] = []
    out = []
    for p in points:
        width = 0.75 * len(p["label"])
        left = p["cer"] > right - 10 and right > 20
        x0 = p["cer"] - width - 1 if left else p["cer"] + 1
        for dy in (4, -10, 15, -21, 26, -32):
            y0 = p["eer"] + dy / 3.6  # points to EER units
            box = (x0, y0, x0 + width, y0 + 3.0)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                break
        boxes.append(box)
        out.append((-6 if left else 5, dy, "right" if left else "left"))
    return out


def privacy_utility(points: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """The privacy-utility sweep: lowest pooled footprint EER (with its interval) against test CER, one point per
    setting, coloured by defence and labelled with its ε. Keys of a point: mode, label, cer, eer, eer_ci."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = {"off": "#222222", "central": "#4477aa", "local": "#cc3311"}
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    seen: set[str] = set()
    for p in points:
        lo, hi = p["eer_ci"]
        mode = p["mode"]
        ax.errorbar([p["cer"]], [p["eer"]], yerr=[[p["eer"] - lo], [hi - p["eer"]]], fmt="o", capsize=3,
                    color=colours.get(mode, "#888888"), label=None if mode in seen else f"--dp {mode}")
        seen.add(mode)
    for p, (dx, dy, ha) in zip(points, _label_offsets(points)):
        ax.annotate(p["label"], (p["cer"], p["eer"]), textcoords="offset points", fontsize=8, xytext=(dx, dy),
                    ha=ha)
    ax.axhline(50, color="#888888", linestyle=":", linewidth=1, label="chance (50%)")
    ax.set_xlabel("test CER % of the final global model (higher = worse model)")
    ax.set_ylabel("lowest pooled footprint EER % (higher = more private)")
    ax.set_ylim(0, max([60.0] + [p["eer_ci"][1] + 5 for p in points]))  # every interval whole
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.set_title(title or "privacy-utility sweep")
    fig.tight_layout()
    return _save_atomic(fig, path)
