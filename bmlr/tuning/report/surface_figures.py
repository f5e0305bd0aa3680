"""The two figures of an alpha x beta surface (the paper's Figure 5): the layers over beta, one
per alpha, in 3-D, and the same grid as an annotated heat map. They draw a
:class:`bmlr.tuning.surface.SurfaceFigure` (its values and labels, computed there: a grid
study's cells or a study's trials binned), which reaches this module from `bmlr.tuning.surface`
and the report's surface section alike; nothing here reads a study."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bmlr.tuning.report import figure

__all__ = ["draw_3d", "draw_heatmap", "write"]


def draw_3d(info):
    """Multi-layer surface as in the paper's Figure 5: x = beta, y = alpha (log scale, one
    layer per alpha), z = value; the trials (`info.points`) as dots; the best cell circled at
    `info.best_point` and labelled. ValueError where there is no value to draw."""
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    plt = figure.pyplot()
    values = info.values
    finite = values[np.isfinite(values)]
    all_z = list(finite) + [p[2] for p in (info.points or [])]
    if not all_z:
        raise ValueError("surface_3d: no finite value to draw")
    lo, hi = min(all_z), max(all_z)
    pad = max(1.0, 0.08 * (hi - lo))
    floor = max(0.0, lo - pad)
    top = min(100.0, hi + pad) if hi <= 100 else hi + pad
    alphas, betas, ys = info.alphas, info.betas, np.log2(info.alphas)
    fig = plt.figure(figsize=(9.5, 7.0))
    ax = fig.add_subplot(111, projection="3d")
    cmap = plt.get_cmap("viridis")
    colours = [cmap(0.1 + 0.8 * i / max(1, len(alphas) - 1)) for i in range(len(alphas))]
    if len(alphas) > 1 and len(betas) > 1:  # a light mesh between the layers (where the whole quad is known)
        X, Y = np.meshgrid(betas, ys)
        ax.plot_wireframe(X, Y, np.ma.masked_invalid(values), color="0.55", linewidth=0.6, alpha=0.6)
    for i, (a, y) in enumerate(zip(alphas, ys)):  # each alpha's curve over beta, shaded down to the floor
        ok = np.isfinite(values[i])
        if not ok.any():
            continue
        xb, zb = np.asarray(betas)[ok], values[i][ok]
        if len(xb) > 1:
            verts = [(xb[0], y, floor)] + [(x, y, z) for x, z in zip(xb, zb)] + [(xb[-1], y, floor)]
            ax.add_collection3d(Poly3DCollection([verts], facecolors=[colours[i]], alpha=0.25, edgecolors="none"))
        ax.plot(xb, [y] * len(xb), zb, "-o", color=colours[i], linewidth=2.2, markersize=5,
                label=info.layer_label.format(info.label(a)))
    if info.points:
        ax.scatter([p[1] for p in info.points], np.log2([p[0] for p in info.points]), [p[2] for p in info.points],
                   color="0.25", s=10, alpha=0.6, depthshade=False, label="individual trials")
    if finite.size and info.best_point is not None:
        a, b, z = info.best_point
        ax.scatter([b], [np.log2(a)], [z], s=140, facecolors="none", edgecolors="red", linewidths=2,
                   depthshade=False, label=info.best_label)
    ax.set_xlabel("\u03b2 (reshaping threshold, unitless)", labelpad=10)
    ax.set_ylabel("\u03b1 (temperature scale, log axis)", labelpad=10)
    ax.set_zlabel("validation accuracy (%)", labelpad=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([info.label(a) for a in alphas])
    ticks = betas if len(betas) <= 9 else np.linspace(min(betas), max(betas), 6)
    ax.set_xticks(ticks)
    ax.set_xticklabels([info.label(b) for b in ticks])
    ax.set_zlim(floor, top)
    ax.view_init(elev=24, azim=-58)
    ax.set_title(info.title + (f"\n{info.subtitle}" if info.subtitle else ""), fontsize=11)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.85)
    return fig


def draw_heatmap(info):
    """The grid as a heat map: rows alpha (smallest at the bottom), columns beta, each cell
    annotated with its value and note; the best cell outlined in red and labelled; cells
    without a value grey."""
    plt = figure.pyplot()
    values = info.values
    n_a, n_b = values.shape
    fig, ax = plt.subplots(figsize=(max(6.5, 1.05 * n_b + 3.0), max(4.0, 0.75 * n_a + 2.4)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    im = ax.imshow(np.ma.masked_invalid(values), origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(im, ax=ax).set_label(info.colour_label)
    for (i, j), v in np.ndenumerate(values):  # each cell's value and its note; cells without a value say so
        extra = f"\n{info.notes[i][j]}" if info.notes and info.notes[i][j] else ""
        if np.isfinite(v):
            colour, text = "black" if (v - vmin) / (vmax - vmin) > 0.6 else "white", f"{v:.1f}{extra}"
        else:
            colour, text = "0.3", info.empty + extra
        ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=7 if values.size > 40 else 9)
    if finite.size and info.best is not None:
        i, j = info.best
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5,
                                   label=info.best_label))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=9, frameon=False)
    ax.set_xticks(range(n_b))
    ax.set_xticklabels(info.beta_ticks or [info.label(b) for b in info.betas], fontsize=9 if info.beta_ticks else None)
    ax.set_yticks(range(n_a))
    ax.set_yticklabels(info.alpha_ticks or [info.label(a) for a in info.alphas],
                       fontsize=9 if info.alpha_ticks else None)
    ax.set_xlabel("\u03b2 (reshaping threshold: reshape while 1 < \u03bb < 1/\u03b2)")
    ax.set_ylabel("\u03b1 (temperature scale)")
    ax.set_title(info.title + (f"\n{info.subtitle}" if info.subtitle else ""), fontsize=11)
    return fig


def write(info, path_3d: Path, path_heatmap: Path) -> list[Path]:
    """Both figures, each written whole; returns their paths."""
    return [figure.save(draw_3d(info), path_3d), figure.save(draw_heatmap(info), path_heatmap)]
