"""Section: t-SNE of the best model's features on validation clips (the paper's Figure 1):
one panel per modality (the encoder's output z^u) and one of the fused feature (what the
decision layer reads, `Fusion.fused_features`), coloured by class. A modality whose classes
form separate clusters maps to the label space easily; a mixed one does not."""
from __future__ import annotations

import numpy as np

from bmlr.tuning.report import figure
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


def _get_features_info(sample: ValidationSample) -> dict[str, np.ndarray]:
    """Panel title -> its points embedded in 2-D (one t-SNE per panel; ValueError: too few)."""
    return {name: embed(points) for name, points in feature_panels(sample).items()}


def draw_features(embedded: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str], title: str):
    """The embedded panels side by side, coloured by true class, one legend of the classes;
    returns the figure."""
    fig, axes = figure.pyplot().subplots(1, len(embedded), figsize=(4.2 * len(embedded), 4.2), squeeze=False)
    for ax, (name, xy) in zip(axes[0], embedded.items()):
        scatter_by_class(ax, xy, labels, class_names, name)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), title="true class", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def add_tsne_features(page: Page, ctx: Context, sample: ValidationSample | Unavailable) -> None:
    page.h(2, "Feature space, t-SNE (the paper's Figure 1)")
    if isinstance(sample, Unavailable):
        page.p(f"Not drawn: {sample}.")
        return
    n = len(sample.labels)
    try:
        embedded = _get_features_info(sample)
    except ValueError as err:
        page.p(f"Not drawn: {err}.")
        return
    fig = draw_features(embedded, sample.labels.numpy(), sample.class_names,
                        f"{ctx.study.dataset}: validation features of trial {ctx.best_id}'s configuration "
                        f"(the trial's own model), {n} samples")
    page.img(figure.save(fig, ctx.out / FIGURE), "t-SNE of per-modality and fused features")
    page.p(f"{n} of {sample.n_val} validation samples (a fixed random sample), embedded by scikit-learn's t-SNE "
           f"(perplexity {perplexity_for(n):.3g}, random_state 0), one embedding per panel, coloured by true class. "
           f"The model is the best trial's configuration (`best.yaml`, fusion `{sample.config.get('fusion')}`) "
           f"(the trial's own model) at its best validation epoch ({sample.best_epoch}: "
           f"{pct(sample.val_acc)}% validation accuracy; the trial: {pct(ctx.best.get('best_val_acc'))}%). "
           "Distinct clusters: a modality whose features map onto the classes easily; mixed colours: one the "
           "one-hot label space is hard to reach from.")
