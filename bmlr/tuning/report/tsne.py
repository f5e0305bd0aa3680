"""t-SNE as the report's two figures use it (van der Maaten and Hinton, JMLR 2008, the paper's
[56]): scikit-learn's `sklearn.manifold.TSNE`, seeded, with a perplexity suited to the number
of points, and one scatter panel coloured by class."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["RANDOM_STATE", "MIN_POINTS", "perplexity_for", "embed", "scatter_by_class"]

RANDOM_STATE = 0
MIN_POINTS = 5  # fewer points have no neighbourhoods to keep


def perplexity_for(n_points: int) -> float:
    """scikit-learn's default 30 where there are enough points, else (n - 1) / 3 (at least 2):
    the perplexity is roughly the number of neighbours each point keeps and must stay below n."""
    return float(max(2.0, min(30.0, (n_points - 1) / 3.0)))


def embed(points: np.ndarray) -> np.ndarray:
    """``[N, D]`` -> ``[N, 2]``: t-SNE (PCA start, automatic learning rate, fixed random
    state, so the same points give the same picture). ValueError under :data:`MIN_POINTS`."""
    from sklearn.manifold import TSNE

    points = np.asarray(points, dtype=np.float64)
    if len(points) < MIN_POINTS:
        raise ValueError(f"t-SNE needs at least {MIN_POINTS} points, got {len(points)}")
    tsne = TSNE(n_components=2, perplexity=perplexity_for(len(points)), init="pca", learning_rate="auto",
                random_state=RANDOM_STATE)
    return tsne.fit_transform(points)


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
