"""What the report's figures share: matplotlib without a display (Agg), one colour per modality,
integer epoch ticks, and :func:`save`, a whole PNG at one resolution. Each figure lives in its
section's module (as in Optuna's `visualization/`): a data function computes plain numbers, a
drawing function returns the matplotlib figure, and :func:`save` writes it."""
from __future__ import annotations

import os
from pathlib import Path

from bmlr.fileio import atomic_path

__all__ = ["DPI", "pyplot", "modality_colour", "integer_ticks", "save"]

os.environ.setdefault("MPLBACKEND", "Agg")

# one colour per modality, the same in every figure
MODALITY_COLOURS = {"multimodal": "#222222", "audio": "#d95f02", "visual": "#1b9e77", "text": "#7570b3",
                    "vision": "#1b9e77"}
EXTRA_COLOURS = ["#e7298a", "#66a61e", "#e6ab02", "#a6761d"]
DPI = 130


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def modality_colour(name: str, index: int = 0) -> str:
    return MODALITY_COLOURS.get(name, EXTRA_COLOURS[index % len(EXTRA_COLOURS)])


def integer_ticks(ax) -> None:
    """Whole numbers on the x axis (epochs)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save(fig, path: str | Path) -> Path:
    """Write the figure as a PNG, whole or not at all (a reader never sees half an image), and
    close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return Path(path)
