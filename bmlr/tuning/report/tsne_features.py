"""Section: t-SNE of the best model's features on validation clips (the paper's Figure 1):
one panel per modality (the encoder's output z^u) and one of the fused feature (what the
decision layer reads, `Fusion.fused_features`), coloured by class. A modality whose classes
form separate clusters maps to the label space easily; a mixed one does not."""
from __future__ import annotations

import numpy as np

from bmlr.tuning import plots
from bmlr.tuning.report.best_model import Unavailable, ValidationSample
from bmlr.tuning.report.page import Page, pct
from bmlr.tuning.report.study_view import Context
from bmlr.tuning.report.tsne import embed, perplexity_for, scatter_by_class

__all__ = ["FIGURE", "add_tsne_features", "feature_panels", "draw_features"]

FIGURE = "tsne_features.png"


def feature_panels(sample: ValidationSample) -> dict[str, np.ndarray]:
    """Panel title -> the points it embeds: each modality's feature, then the fused one."""
    panels = {f"{u} feature z^{u} (d={z.shape[1]})": z.numpy() for u, z in sample.features.items()}
    panels[f"fused: decision-layer input (d={sample.fused.shape[1]})"] = sample.fused.numpy()
    return panels


def draw_features(sample: ValidationSample, path, title: str):
    """One t-SNE per panel, side by side, one legend of the classes; returns the PNG path."""
    plt = plots.pyplot()
    panels = feature_panels(sample)
    labels = sample.labels.numpy()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (name, points) in zip(axes[0], panels.items()):
        scatter_by_class(ax, embed(points), labels, sample.class_names, name)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), title="true class", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return plots.save_figure(fig, path)


def add_tsne_features(page: Page, ctx: Context, sample: ValidationSample | Unavailable) -> None:
    page.h(2, "Feature space, t-SNE (the paper's Figure 1)")
    if isinstance(sample, Unavailable):
        page.p(f"Not drawn: {sample}.")
        return
    n = len(sample.labels)
    try:
        path = draw_features(sample, ctx.out / FIGURE,
                             f"{ctx.study.dataset}: validation features of trial {ctx.best_id}'s configuration "
                             f"({sample.source}), {n} samples")
    except ValueError as err:
        page.p(f"Not drawn: {err}.")
        return
    page.img(path, "t-SNE of per-modality and fused features")
    page.p(f"{n} of {sample.n_val} validation samples (a fixed random sample), embedded by scikit-learn's t-SNE "
           f"(perplexity {perplexity_for(n):.3g}, random_state 0), one embedding per panel, coloured by true class. "
           f"The model is the best trial's configuration (`best.yaml`, fusion `{sample.config.get('fusion')}`) "
           f"({sample.source}) at its best validation epoch ({sample.best_epoch}: "
           f"{pct(sample.val_acc)}% validation accuracy; the trial: {pct(ctx.best.get('best_val_acc'))}%). Distinct clusters: a modality whose features map onto the classes "
           f"easily; mixed colours: one the one-hot label space is hard to reach from.")
