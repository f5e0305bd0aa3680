"""Figures of the tuning tools, drawn with matplotlib (Agg, no display) to PNG files.

Every function takes plain numbers (no Ray, no MLflow), writes one PNG and returns its
path. Each figure has a title, axis labels with units and a legend or colour bar, so it
reads on its own. Optuna draws its own views of a study (history, parallel coordinates,
slice, contour, importances: `bmlr.tuning.report.optuna_figures`); these are the figures
Optuna has no counterpart for:

* `surface_3d`        - the paper's Figure 5: validation accuracy over beta, one layer per alpha
* `surface_heatmap`   - the same grid as an annotated heat map (every cell's value written in it)
* `learning_curves`   - the paper's Figure 6: multimodal and per-modality validation accuracy
                        per epoch, without and with BMLR
* `reshaped_counts`   - the paper's Figure 3a: reshaped training samples per modality per epoch
* `top3_matrices`     - the paper's Figure 4: per true class, how often each class is among the
                        top-3 predictions of each modality's head
* `confirmation`      - the confirmation stage: each candidate's search score (one seed) beside
                        its seeds' values and their mean +- std (the winner's curse in one look)
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bmlr.fileio import atomic_path

os.environ.setdefault("MPLBACKEND", "Agg")

# one colour per modality, the same in every figure
MODALITY_COLOURS = {"multimodal": "#222222", "audio": "#d95f02", "visual": "#1b9e77", "text": "#7570b3",
                    "vision": "#1b9e77"}
_EXTRA = ["#e7298a", "#66a61e", "#e6ab02", "#a6761d"]
DPI = 130


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def modality_colour(name: str, index: int = 0) -> str:
    return MODALITY_COLOURS.get(name, _EXTRA[index % len(_EXTRA)])


def _save(fig, path: str | Path) -> Path:
    """Write the figure as a PNG, whole or not at all (a reader never sees half an image), and
    close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return Path(path)


def save_figure(fig, path: str | Path) -> Path:
    """A figure drawn elsewhere (e.g. by Optuna) written as every figure here is: a whole PNG
    at this module's resolution; the figure is closed."""
    return _save(fig, path)


def fmt_value(value: float) -> str:
    """Grid values as typed: 0.5, 0.275, 2, 0.25 (no trailing zeros)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


# --- the alpha x beta surface ---------------------------------------------------------------------
def best_cell_label(value: float, alpha: float, beta: float) -> str:
    """The legend text of a grid's best cell: its value (%) and its alpha and beta."""
    return f"best cell: {value:.1f}% at \u03b1={fmt_value(alpha)}, \u03b2={fmt_value(beta)}"


def surface_3d(alphas: Sequence[float], betas: Sequence[float], values: np.ndarray, path: str | Path,
               title: str, subtitle: str = "", z_label: str = "validation accuracy (%)",
               points: Sequence[tuple[float, float, float]] | None = None,
               layer_label: str = "\u03b1 = {}", best: tuple[int, int] | None = None,
               best_trial: tuple[float, float, float] | None = None, best_label: str | None = None) -> Path:
    """Multi-layer surface as in the paper's Figure 5: x = beta, y = alpha (log scale, one
    layer per alpha), z = value. Each layer is the curve over beta with its area shaded down
    to the floor; a light mesh joins the layers; the best cell is marked and labelled.
    `values` is [len(alphas), len(betas)] (NaN: no value). `points` (alpha, beta, value) are
    drawn as dots (the individual trials of a study's scattered surface). `best` (i, j): the
    cell to mark (default: the largest value). `best_trial` (alpha, beta, value): where a
    binned surface's best trial really lies (marked there instead of at its bin's centre),
    `best_label` its legend text (default: the cell's values)."""
    plt = pyplot()
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    values = np.asarray(values, dtype=float)
    alphas, betas = [float(a) for a in alphas], [float(b) for b in betas]
    ys = np.log2(alphas)
    finite = values[np.isfinite(values)]
    all_z = list(finite) + [p[2] for p in (points or [])]
    if not all_z:
        raise ValueError("surface_3d: no finite value to draw")
    lo, hi = min(all_z), max(all_z)
    pad = max(1.0, 0.08 * (hi - lo))
    floor = max(0.0, lo - pad)
    top = min(100.0, hi + pad) if hi <= 100 else hi + pad

    fig = plt.figure(figsize=(9.5, 7.0))
    ax = fig.add_subplot(111, projection="3d")
    cmap = plt.get_cmap("viridis")
    colours = [cmap(0.1 + 0.8 * i / max(1, len(alphas) - 1)) for i in range(len(alphas))]
    # mesh between layers (only where the whole quad is known)
    if len(alphas) > 1 and len(betas) > 1:
        X, Y = np.meshgrid(betas, ys)
        Z = np.ma.masked_invalid(values)
        ax.plot_wireframe(X, Y, Z, color="0.55", linewidth=0.6, alpha=0.6)
    for i, (a, y) in enumerate(zip(alphas, ys)):
        row = values[i]
        ok = np.isfinite(row)
        if not ok.any():
            continue
        xb = np.asarray(betas)[ok]
        zb = row[ok]
        if len(xb) > 1:
            verts = [(xb[0], y, floor)] + [(x, y, z) for x, z in zip(xb, zb)] + [(xb[-1], y, floor)]
            poly = Poly3DCollection([verts], facecolors=[colours[i]], alpha=0.25, edgecolors="none")
            ax.add_collection3d(poly)
        ax.plot(xb, [y] * len(xb), zb, "-o", color=colours[i], linewidth=2.2, markersize=5,
                label=layer_label.format(fmt_value(a)))
    if points:
        pa = np.log2([p[0] for p in points])
        ax.scatter([p[1] for p in points], pa, [p[2] for p in points], color="0.25", s=10, alpha=0.6,
                   depthshade=False, label="individual trials")
    if finite.size:
        i, j = best if best is not None else np.unravel_index(np.nanargmax(values), values.shape)
        a, b, z = best_trial if best_trial is not None else (alphas[i], betas[j], values[i, j])
        ax.scatter([b], [np.log2(a)], [z], s=140, facecolors="none", edgecolors="red", linewidths=2,
                   depthshade=False, label=best_label or best_cell_label(values[i, j], alphas[i], betas[j]))
    ax.set_xlabel("\u03b2 (reshaping threshold, unitless)", labelpad=10)
    ax.set_ylabel("\u03b1 (temperature scale, log axis)", labelpad=10)
    ax.set_zlabel(z_label, labelpad=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([fmt_value(a) for a in alphas])
    ax.set_xticks(betas if len(betas) <= 9 else np.linspace(min(betas), max(betas), 6))
    ax.set_xticklabels([fmt_value(b) for b in (betas if len(betas) <= 9 else np.linspace(min(betas), max(betas), 6))])
    ax.set_zlim(floor, top)
    ax.view_init(elev=24, azim=-58)
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.85)
    return _save(fig, path)


def surface_heatmap(alphas: Sequence[float], betas: Sequence[float], values: np.ndarray, path: str | Path,
                    title: str, subtitle: str = "", cells: Sequence[Sequence[str]] | None = None,
                    colour_label: str = "validation accuracy (%)", empty: str = "no value",
                    best: tuple[int, int] | None = None, alpha_ticks: Sequence[str] | None = None,
                    beta_ticks: Sequence[str] | None = None, best_label: str | None = None) -> Path:
    """The grid as a heat map: rows alpha (smallest at the bottom), columns beta, each cell
    annotated with its value (and `cells[i][j]` below it, e.g. '± 1.2' or 'n = 3'); the best
    cell is outlined in red and labelled `best_label` (default: the cell's values); cells
    without a value are grey and say `empty`."""
    plt = pyplot()
    values = np.asarray(values, dtype=float)
    n_a, n_b = values.shape
    fig, ax = plt.subplots(figsize=(max(6.5, 1.05 * n_b + 3.0), max(4.0, 0.75 * n_a + 2.4)))
    masked = np.ma.masked_invalid(values)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    im = ax.imshow(masked, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    bar = fig.colorbar(im, ax=ax)
    bar.set_label(colour_label)
    small = n_a * n_b > 40
    for i in range(n_a):
        for j in range(n_b):
            v = values[i, j]
            extra = cells[i][j] if cells else ""
            if np.isfinite(v):
                shade = (v - vmin) / (vmax - vmin)
                colour = "black" if shade > 0.6 else "white"
                text = f"{v:.1f}" + (f"\n{extra}" if extra else "")
            else:
                colour, text = "0.3", empty + (f"\n{extra}" if extra else "")
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=7 if small else 9)
    if finite.size:
        i, j = best if best is not None else np.unravel_index(np.nanargmax(values), values.shape)
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5,
                                   label=best_label or best_cell_label(values[i, j], alphas[i], betas[j])))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=9, frameon=False)
    ax.set_xticks(range(n_b))
    ax.set_xticklabels(beta_ticks or [fmt_value(b) for b in betas], fontsize=9 if beta_ticks else None)
    ax.set_yticks(range(n_a))
    ax.set_yticklabels(alpha_ticks or [fmt_value(a) for a in alphas], fontsize=9 if alpha_ticks else None)
    ax.set_xlabel("\u03b2 (reshaping threshold: reshape while 1 < \u03bb < 1/\u03b2)")
    ax.set_ylabel("\u03b1 (temperature scale)")
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    return _save(fig, path)


# --- study report figures ---------------------------------------------------------------------------
def _acc_series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for h in history:
        if key in h and h[key] is not None and np.isfinite(float(h[key])):
            xs.append(int(h["epoch"]))
            ys.append(100.0 * float(h[key]))
    return xs, ys


def learning_curves(panels: Sequence[dict[str, Any]], modalities: Sequence[str], path: str | Path,
                    title: str) -> Path:
    """One panel per run (the paper's Figure 6: without and with BMLR), each with the
    multimodal validation accuracy and every modality's own head's validation accuracy per
    epoch; the best epoch is marked. `panels`: dicts with `title`, `history` (per-epoch dicts
    with `epoch`, `val_acc`, `val_acc_<modality>`) and optional `best_epoch`."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        history = panel["history"]
        xs, ys = _acc_series(history, "val_acc")
        ax.plot(xs, ys, "-o", color=modality_colour("multimodal"), linewidth=2.4, markersize=3.5,
                label="multimodal (fused head)")
        for k, u in enumerate(modalities):
            xu, yu = _acc_series(history, f"val_acc_{u}")
            ax.plot(xu, yu, "--s", color=modality_colour(u, k), linewidth=1.8, markersize=3,
                    label=f"{u} alone (its own head)")
        best = panel.get("best_epoch")
        if best:
            best = int(best)
            ax.axvline(best, color="0.5", linestyle=":", linewidth=1.2, label=f"best epoch ({best})")
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("epoch")
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8, framealpha=0.9)  # curves differ per study: let matplotlib avoid them
        if xs:
            ax.set_xlim(0.5, max(xs) + 0.5)
    axes[0][0].set_ylabel("validation accuracy (%)")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def reshaped_counts(history: list[dict[str, Any]], modalities: Sequence[str], n_train: int | None,
                    path: str | Path, title: str) -> Path:
    """Per epoch, how many training samples had their label reshaped, per modality (solid),
    and how many of those reshaped targets have a top class other than the label (dotted).
    A right-hand axis gives the same counts as a share of the training set."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    drawn = False
    for k, u in enumerate(modalities):
        xs = [int(h["epoch"]) for h in history if f"reshaped/{u}" in h]
        ys = [float(h[f"reshaped/{u}"]) for h in history if f"reshaped/{u}" in h]
        if xs:
            drawn = True
            ax.plot(xs, ys, "-o", color=modality_colour(u, k), linewidth=2.2, markersize=4,
                    label=f"{u}: labels reshaped")
        xw = [int(h["epoch"]) for h in history if f"wrong_top/{u}" in h]
        yw = [float(h[f"wrong_top/{u}"]) for h in history if f"wrong_top/{u}" in h]
        if xw and any(yw):
            ax.plot(xw, yw, ":", color=modality_colour(u, k), linewidth=1.6,
                    label=f"{u}: reshaped target's top class \u2260 label")
    if not drawn:
        ax.text(0.5, 0.5, "this method logs no reshaped-sample counts", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("epoch")
    _integer_ticks(ax)
    ax.set_ylabel("training samples per epoch (count)")
    ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]) * 1.25)  # room for the legend
    ax.grid(alpha=0.3)
    if n_train:
        lo, hi = ax.get_ylim()
        right = ax.twinx()
        right.set_ylim(100 * lo / n_train, 100 * hi / n_train)
        right.set_ylabel(f"% of the {n_train} training samples")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper center", fontsize=8, ncol=2, framealpha=0.9)
    fig.tight_layout()
    return _save(fig, path)


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def top3_matrices(data: dict[str, Any], heads: Sequence[str], path: str | Path, title: str) -> Path:
    """One matrix per head: row = true class, column = predicted class, cell = % of that
    class's validation samples with the column's class among their top-3 predictions (the
    diagonal is the top-3 accuracy; off-diagonal mass shows the class relations the head
    learned). Cells are annotated where the classes are few enough to read."""
    plt = pyplot()
    names = list(data["class_names"])
    support = np.asarray(data["support"], dtype=float)
    n = len(names)
    size = max(4.2, min(9.0, 0.42 * n + 2.2))
    fig, axes = plt.subplots(1, len(heads), figsize=(size * len(heads) + 1.6, size + 1.0), squeeze=False,
                             layout="constrained")
    im = None
    for k, (ax, head) in enumerate(zip(axes[0], heads)):
        counts = np.asarray(data["top_k"][head], dtype=float)
        share = 100.0 * counts / np.maximum(support[:, None], 1)
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    if share[i, j] >= 0.5:
                        ax.text(j, i, f"{share[i, j]:.0f}", ha="center", va="center", fontsize=7 if n > 10 else 8,
                                color="white" if share[i, j] > 60 else "black")
        for i in range(n):  # the true class of each row
            ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#e6ab02", linewidth=1.5))
        acc = data.get("accuracy", {}).get(head)
        ax.set_title(f"{head}" + (f" (top-1 accuracy {100 * acc:.1f}%)" if acc is not None else ""), fontsize=10)
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        fs = 8 if n <= 12 else 6
        ax.set_xticklabels(names, rotation=60 if max(map(len, names)) > 3 else 0, ha="right" if
                           max(map(len, names)) > 3 else "center", fontsize=fs)
        ax.set_yticklabels(names if k == 0 else [], fontsize=fs)
        ax.set_xlabel("predicted class (among the top 3)")
        if k == 0:
            ax.set_ylabel("true class")
    bar = fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    bar.set_label("% of the true class's validation samples")
    fig.suptitle(title + "\n(yellow squares: the true class; epoch of the best validation accuracy)", fontsize=11)
    return _save(fig, path)


# --- the confirmation stage -----------------------------------------------------------------------
def confirmation(candidates: Sequence[dict[str, Any]], path: str | Path, title: str, subtitle: str = "") -> Path:
    """One column per candidate (in the search's order), values in %: on the left its search
    score (hollow square, bar +- one standard error where known), on the right each
    confirmation seed's value (dots) and their mean (filled circle, bar +- one standard
    deviation), joined by a grey line, so a drop from search to confirmation (the winner's curse)
    reads at a glance. The winner's label is starred. `candidates`: dicts with `label`,
    `search` and `search_se` (fractions, None where unknown), `seeds` (the seeds' values,
    fractions) and `winner` (bool)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(candidates) + 2.5), 4.8))
    offset = 0.17
    labelled: set[str] = set()

    def once(label: str) -> str | None:  # each legend entry once, whichever candidate draws it first
        new = label not in labelled
        labelled.add(label)
        return label if new else None

    for x, c in enumerate(candidates):
        seeds = [100 * float(v) for v in c["seeds"]]
        mean = float(np.mean(seeds)) if seeds else None
        std = float(np.std(seeds, ddof=1)) if len(seeds) > 1 else 0.0
        if c.get("search") is not None:
            se = 100 * float(c["search_se"]) if c.get("search_se") is not None else 0.0
            ax.errorbar([x - offset], [100 * float(c["search"])], yerr=[se], fmt="s", mfc="white", mec="#3b75af",
                        ecolor="#3b75af", capsize=4, markersize=8, label=once("search score (one seed) \u00b1 SE"))
            if mean is not None:
                ax.plot([x - offset, x + offset], [100 * float(c["search"]), mean], color="#999999", linewidth=1,
                        zorder=1)
        if seeds:
            ax.scatter([x + offset] * len(seeds), seeds, s=22, color="#d95f02", alpha=0.9, zorder=5,
                       label=once("confirmation: each seed"))
            ax.errorbar([x + offset], [mean], yerr=[std], fmt="o", color="#222222", capsize=5, markersize=8,
                        zorder=4, label=once("confirmation: mean \u00b1 std"))
    ax.set_xticks(range(len(candidates)))
    ax.set_xticklabels([("\u2605 " if c.get("winner") else "") + str(c["label"]) for c in candidates], fontsize=9)
    ax.set_xlim(-0.6, len(candidates) - 0.4)
    ax.set_xlabel("candidate (search trial, in the search's order; \u2605 the confirmed winner)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return _save(fig, path)
