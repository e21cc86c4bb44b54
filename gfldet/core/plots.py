"""Figures without a display: a matplotlib Figure on an Agg canvas, saved atomically.

They use matplotlib's Agg backend through its object API (Figure + FigureCanvasAgg), so they
need no display and leave pyplot's global state alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import atomic_open


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure of width x height inches on an Agg canvas (no display, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path) -> Path:
    """Writes `fig` to `path` as a PNG, atomically (a crash never leaves half a file)."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return Path(path)
