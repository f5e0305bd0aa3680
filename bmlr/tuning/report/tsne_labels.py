"""Section: t-SNE of label distributions on validation clips (the paper's Figure 3b-d).

For the best model's unimodal logits on a sample of validation clips, each
modality's target is built three ways by `bmlr.reshaping.compute_reshaping` (its public rules,
the study's alpha and beta):

* **Uniform** (Figure 3b, Uni-Reshaping as in LFM): rule ``uniform``, ``xi/C + (1 - xi) y``: the
  same small share on every class, whatever the clip;
* **BMLR** (Figure 3c, equation 8): rule ``bmlr``, ``xi d + (1 - xi) y`` with ``d`` the partner
  modality's tempered prediction;
* **Per-sample** (Figure 3d, the clips' own class relations): rule ``distill`` with
  ``label_weight = 0``, the partner modality's plain prediction ``softmax(z^w)`` for every clip:
  where BMLR draws its class relations from (with three modalities the intermediate one has no
  partner and keeps its one-hot label, as in BMLR).

The paper selects three classes "for clarity"; so does the figure (the three most frequent in
the sample), one row per modality, the three panels of a row embedded together (one t-SNE of
their stacked points), so the same position means the same distribution across a row. The
table gives every clip of the sample (all classes).
"""
from __future__ import annotations

import numpy as np
import torch

from bmlr.reshaping import Reshaping, compute_reshaping
from bmlr.tuning.report import figure
from bmlr.tuning.report.best_model import Unavailable, ValidationSample
from bmlr.tuning.report.page import Page, pct
from bmlr.tuning.report.study_view import Context
from bmlr.tuning.report.tsne import embed, perplexity_for, scatter_by_class

__all__ = ["FIGURE", "PANELS", "SHOWN_CLASSES", "label_distributions", "shown_classes", "sample_reshaping",
           "label_points", "draw_labels", "add_tsne_labels"]

FIGURE = "tsne_labels.png"
SHOWN_CLASSES = 3
# panel -> (compute_reshaping rule, its extra arguments, what the panel shows)
PANELS = {
    "uniform": ("uniform", {}, "Uniform (Uni-Reshaping, LFM)"),
    "bmlr": ("bmlr", {}, "BMLR (equation 8)"),
    "per-sample": ("distill", {"label_weight": 0.0}, "per-sample: partner's prediction"),
}


def label_distributions(labels: torch.Tensor, unimodal: dict[str, torch.Tensor], alpha: float,
                        beta: float) -> dict[str, Reshaping]:
    """Panel name -> the reshaping of every clip and modality under that panel's rule."""
    return {name: compute_reshaping(labels, unimodal, alpha, beta, rule=rule, **kwargs)
            for name, (rule, kwargs, _) in PANELS.items()}


def shown_classes(labels: np.ndarray, k: int = SHOWN_CLASSES) -> list[int]:
    """The `k` most frequent classes of the sample (ties: the lower class index), ascending."""
    values, counts = np.unique(labels, return_counts=True)
    order = sorted(range(len(values)), key=lambda i: (-counts[i], values[i]))[:k]
    return sorted(int(values[i]) for i in order)


def sample_reshaping(sample: ValidationSample) -> dict[str, Reshaping]:
    """:func:`label_distributions` of the sample's clips under its configuration's alpha and beta."""
    return label_distributions(sample.labels, sample.unimodal, float(sample.config["alpha"]),
                               float(sample.config["beta"]))


def label_points(sample: ValidationSample, shaped: dict[str, Reshaping]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per modality, every panel's targets (``shaped``: :func:`sample_reshaping`) of the shown
    classes' clips stacked (a row's panels embedded together, so the same position means the
    same distribution across it); and those clips' labels."""
    labels = sample.labels.numpy()
    keep = np.isin(labels, shown_classes(labels))
    return ({u: np.concatenate([shaped[p].labels[u].numpy()[keep] for p in PANELS]) for u in sample.unimodal},
            labels[keep])


def _get_labels_info(sample: ValidationSample, shaped: dict[str, Reshaping]) -> tuple[dict[str, list], np.ndarray]:
    """Per modality, each panel's points of :func:`label_points` embedded in 2-D, and the shown
    clips' labels. ValueError: too few clips."""
    stacked, labels = label_points(sample, shaped)
    return {u: np.split(embed(points), len(PANELS)) for u, points in stacked.items()}, labels


def draw_labels(rows: dict[str, list], labels: np.ndarray, class_names: list[str], title: str):
    """One row per modality, one panel per rule of PANELS, coloured by true class; returns the figure."""
    fig, axes = figure.pyplot().subplots(len(rows), len(PANELS), figsize=(4 * len(PANELS), 3.8 * len(rows)),
                                         squeeze=False)
    for row, (u, xy) in zip(axes, rows.items()):
        for ax, (_, _, what), points in zip(row, PANELS.values(), xy):
            scatter_by_class(ax, points, labels, class_names, f"{u}: {what}")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), title="true class", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _table(sample: ValidationSample, shaped: dict[str, Reshaping]) -> list[list]:
    """Per modality: clips BMLR reshapes, their mean intensity xi, and each rule's mean target
    probability on the true class (1 = one-hot)."""
    y = sample.labels[:, None]
    rows = []
    for u in sample.unimodal:
        xi = shaped["bmlr"].intensity[u]
        on_label = [pct(float(shaped[p].labels[u].gather(1, y).mean())) for p in PANELS]
        rows.append([u, f"{int((xi > 0).sum())} / {len(xi)}", f"{float(xi.mean()):.3f}", *on_label])
    return rows


def _reason(ctx: Context, sample: ValidationSample | Unavailable) -> str | None:
    if isinstance(sample, Unavailable):
        return str(sample)
    if not any(k.startswith("reshaped/") for h in ctx.history for k in h):
        return (f"method `{ctx.study.method}` reshapes no labels (its trials logged no `reshaped/<modality>` "
                f"counts), so there are no reshaped labels to compare")
    if not 2 <= len(sample.unimodal) <= 3:
        return f"label reshaping needs 2 or 3 modalities, this data set has {len(sample.unimodal)}"
    return None


def add_tsne_labels(page: Page, ctx: Context, sample: ValidationSample | Unavailable) -> None:
    page.h(2, "Label space, t-SNE: uniform vs BMLR vs per-sample (the paper's Figure 3b-d)")
    reason = _reason(ctx, sample)
    if reason is not None:
        page.p(f"Not drawn: {reason}.")
        return
    alpha, beta = float(sample.config["alpha"]), float(sample.config["beta"])
    shaped = sample_reshaping(sample)
    try:
        rows, shown_labels = _get_labels_info(sample, shaped)
    except ValueError as err:
        page.p(f"Not drawn: {err}.")
        return
    fig = draw_labels(rows, shown_labels, sample.class_names, f"{ctx.study.dataset}: label distributions of "
                      f"validation samples, trial {ctx.best_id}'s configuration (alpha {alpha:.3g}, beta {beta:.3g})")
    path, shown = figure.save(fig, ctx.out / FIGURE), len(shown_labels)
    page.img(path, "t-SNE of uniform, BMLR and per-sample label distributions")
    page.p(f"{shown} validation samples of the {SHOWN_CLASSES} most frequent classes in a sample of "
           f"{len(sample.labels)} "
           f"(t-SNE perplexity {perplexity_for(3 * shown):.3g}, random_state 0; a row's panels embedded together). "
           f"Targets from the best model's unimodal logits at its best epoch (the trial's own model), by "
           f"`bmlr.reshaping.compute_reshaping`: uniform `xi/C + (1 - xi) y`; BMLR `xi d + (1 - xi) y`; per-sample "
           f"the partner modality's prediction `softmax(z^w)`. Clips with xi = 0 keep their one-hot label under "
           f"uniform and BMLR (one point per class). On validation, after training, fewer samples are reshaped than "
           f"during it (the paper draws training labels).")
    page.table(["modality", "reshaped by BMLR", "mean xi"] + [f"on label % ({p})" for p in PANELS],
               _table(sample, shaped))
