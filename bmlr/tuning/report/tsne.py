"""t-SNE as the report's two figures use it (van der Maaten and Hinton, JMLR 2008, the paper's
[56]): scikit-learn's `sklearn.manifold.TSNE`, seeded, with a perplexity suited to the number
of points, and one scatter panel coloured by class.

An embedding is kept in memory by its points (seeded: the same points give the same picture),
so that one computed ahead (:mod:`bmlr.tuning.report.warmup`, while the study's references
train) is not computed again by the report."""
from __future__ import annotations

import hashlib
import threading
from typing import Sequence

import numpy as np

__all__ = ["RANDOM_STATE", "MIN_POINTS", "perplexity_for", "embed", "scatter_by_class"]

RANDOM_STATE = 0
MIN_POINTS = 5  # fewer points have no neighbourhoods to keep
_KEPT: dict[str, np.ndarray] = {}  # points' digest -> their embedding (the last few)
_KEEP = 8
_LOCK = threading.Lock()


def _digest(points: np.ndarray) -> str:
    return hashlib.sha1(repr(points.shape).encode() + points.tobytes()).hexdigest()


def perplexity_for(n_points: int) -> float:
    """scikit-learn's default 30 where there are enough points, else (n - 1) / 3 (at least 2):
    the perplexity is roughly the number of neighbours each point keeps and must stay below n."""
    return float(max(2.0, min(30.0, (n_points - 1) / 3.0)))


def embed(points: np.ndarray) -> np.ndarray:
    """``[N, D]`` -> ``[N, 2]``: t-SNE (PCA start, automatic learning rate, fixed random
    state, so the same points give the same picture). ValueError under :data:`MIN_POINTS`."""
    from sklearn.manifold import TSNE

    points = np.ascontiguousarray(points, dtype=np.float64)
    if len(points) < MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {MIN_POINTS} points, got {len(points)}")
    key = _digest(points)
    with _LOCK:
        if key in _KEPT:
            return _KEPT[key].copy()
    tsne = TSNE(n_components=2, perplexity=perplexity_for(len(points)), init="pca", learning_rate="auto",
                random_state=RANDOM_STATE)
    embedded = tsne.fit_transform(points)
    with _LOCK:
        while len(_KEPT) >= _KEEP:
            _KEPT.pop(next(iter(_KEPT)))
        _KEPT[key] = embedded
    return embedded.copy()


def scatter_by_class(ax, xy: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str) -> None:
    """One panel: the embedded points coloured by their true class (t-SNE's axes carry no
    units, so they are unlabelled)."""
    cmap = _colours(len(class_names))
    for c in np.unique(labels):
        mask = labels == c
        ax.scatter(xy[mask, 0], xy[mask, 1], s=14, alpha=0.8, color=cmap[int(c)], label=class_names[int(c)],
                   edgecolors="none")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")


def _colours(n: int) -> list:
    import matplotlib

    name = "tab10" if n <= 10 else "tab20"
    cmap = matplotlib.colormaps[name]
    return [cmap(i % cmap.N) for i in range(n)]
