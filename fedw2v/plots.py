"""Figures (PNG), drawn with matplotlib's Agg backend (no display needed) and written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _save_atomic(fig: Any, path: str | os.PathLike) -> Path:
    """Save a figure as PNG: a temporary file in the same directory, then rename (never a half-written PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
