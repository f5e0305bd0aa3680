"""Section 5: reshaped training samples per modality per epoch of the best trial (the
paper's Figure 3a), as a figure and a table."""
from __future__ import annotations

from typing import Any

from bmlr.tuning.report import figure
from bmlr.tuning.report.page import Page, count, val
from bmlr.tuning.report.study_view import Context

__all__ = ["FIGURE", "draw_reshaped_counts", "add_reshaped"]

FIGURE = "reshaped_counts.png"

Series = tuple[list[int], list[float]]


def _series(history: list[dict[str, Any]], key: str) -> Series:
    kept = [h for h in history if key in h]
    return [int(h["epoch"]) for h in kept], [float(h[key]) for h in kept]


def _get_reshaped_info(history: list[dict[str, Any]], modalities: list[str]) -> dict[str, tuple[Series, Series]]:
    """Per modality: (epochs, samples whose label was reshaped) and (epochs, reshaped targets whose
    top class is not the label)."""
    return {u: (_series(history, f"reshaped/{u}"), _series(history, f"wrong_top/{u}")) for u in modalities}


def draw_reshaped_counts(info: dict[str, tuple[Series, Series]], n_train: int | None, title: str):
    """Per epoch and modality the reshaped samples (solid) and those whose reshaped target's top
    class is not the label (dotted, where any); a right-hand axis gives the counts as a share of
    the `n_train` training samples. Returns the figure."""
    plt = figure.pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    drawn = False
    for k, (u, ((xs, ys), (xw, yw))) in enumerate(info.items()):
        if xs:
            drawn = True
            ax.plot(xs, ys, "-o", color=figure.modality_colour(u, k), linewidth=2.2, markersize=4,
                    label=f"{u}: labels reshaped")
        if xw and any(yw):
            ax.plot(xw, yw, ":", color=figure.modality_colour(u, k), linewidth=1.6,
                    label=f"{u}: reshaped target's top class \u2260 label")
    if not drawn:
        ax.text(0.5, 0.5, "this method logs no reshaped-sample counts", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("epoch")
    figure.integer_ticks(ax)
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
    return fig


def add_reshaped(page: Page, ctx: Context) -> None:
    page.h(2, "Reshaped training samples per epoch (the paper's Figure 3a)")
    history, modalities = ctx.history, ctx.modalities
    if not any(k.startswith("reshaped/") for h in history for k in h):
        page.p(f"Method {ctx.study.method} reshapes no labels (no `reshaped/<modality>` counts logged).")
        return
    sizes = ctx.study.data.get("sizes") or {}
    fig = draw_reshaped_counts(_get_reshaped_info(history, modalities), sizes.get("train"),
                               f"{ctx.study.dataset}: training samples whose label was reshaped, best trial "
                               f"{ctx.best_id}")
    page.img(figure.save(fig, ctx.out / FIGURE), "reshaped samples per epoch")
    page.table(["epoch"] + [f"reshaped {u}" for u in modalities] + [f"wrong top {u}" for u in modalities],
               [[h["epoch"]] + [val(count(h.get(f"reshaped/{u}"))) for u in modalities]
                + [val(count(h.get(f"wrong_top/{u}"))) for u in modalities] for h in history])
    page.p("Only the more confident modality of a sample is reshaped, and only while it is less than 1/\u03b2 "
           "times as confident as the other. `wrong top`: reshaped targets whose largest entry is not the "
           "label (possible for \u03b2 < 0.5).")
