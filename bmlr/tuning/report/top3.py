"""Section 6: per true class, the top-3 predicted classes of each modality's own head and of
the fused head at the best trial's best epoch (the paper's Figure 4), from the trial's
`trials/trial_<id>/val_top3.json` (written whenever a trial reaches a new best validation
accuracy)."""
from __future__ import annotations

from typing import Any

import numpy as np

from bmlr.tuning.report import figure
from bmlr.tuning.report.page import Page
from bmlr.tuning.report.study_view import Context

__all__ = ["FIGURE", "top3_table", "draw_top3", "add_top3"]

FIGURE = "top3_per_class.png"


def _top3_cell(counts: np.ndarray, names: list[str], true: int, support: int) -> str:
    """The three classes most often in the head's top-3 for samples of class `true`, as a
    share of the class (the true class in bold)."""
    cells = []
    for j in np.argsort(-counts, kind="stable")[:3]:
        if counts[j] <= 0:
            continue
        label = f"{names[j]} {100 * counts[j] / max(support, 1):.0f}%"
        cells.append(f"**{label}**" if j == true else label)
    return ", ".join(cells) or "-"


def top3_table(data: dict[str, Any], heads: list[str]) -> tuple[list[str], list[list]]:
    """One row per true class: its validation samples and each head's top-3 classes."""
    names, support = data["class_names"], data["support"]
    head = ["true class", "val samples"] + [f"{h}: top-3 classes (% of the class)" for h in heads]
    body = [[name, support[i]] + [_top3_cell(np.asarray(data["top_k"][h][i], dtype=float), names, i, support[i])
                                  for h in heads]
            for i, name in enumerate(names)]
    return head, body


def _get_top3_info(data: dict[str, Any], heads: list[str]) -> dict[str, np.ndarray]:
    """Per head: cell [i, j] = % of class i's validation samples with class j among the head's top-3."""
    support = np.asarray(data["support"], dtype=float)
    return {h: 100.0 * np.asarray(data["top_k"][h], dtype=float) / np.maximum(support[:, None], 1) for h in heads}


def draw_top3(shares: dict[str, np.ndarray], names: list[str], accuracy: dict[str, float], title: str):
    """One matrix per head: row = true class, column = predicted class, cell = % of that class's
    validation samples with the column's class among their top-3 predictions (the diagonal is
    the top-3 accuracy; off-diagonal mass shows the class relations the head learned). Returns
    the figure."""
    plt, n = figure.pyplot(), len(names)
    size = max(4.2, min(9.0, 0.42 * n + 2.2))
    fig, axes = plt.subplots(1, len(shares), figsize=(size * len(shares) + 1.6, size + 1.0), squeeze=False,
                             layout="constrained")
    im = None
    for k, (ax, (head, share)) in enumerate(zip(axes[0], shares.items())):
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
        if n <= 15:  # annotated where the classes are few enough to read
            for (i, j), v in np.ndenumerate(share):
                if v >= 0.5:
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7 if n > 10 else 8,
                            color="white" if v > 60 else "black")
        for i in range(n):  # the true class of each row
            ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#e6ab02", linewidth=1.5))
        acc = accuracy.get(head)
        ax.set_title(f"{head}" + (f" (top-1 accuracy {100 * acc:.1f}%)" if acc is not None else ""), fontsize=10)
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        fs, long = 8 if n <= 12 else 6, max(map(len, names)) > 3
        ax.set_xticklabels(names, rotation=60 if long else 0, ha="right" if long else "center", fontsize=fs)
        ax.set_yticklabels(names if k == 0 else [], fontsize=fs)
        ax.set_xlabel("predicted class (among the top 3)")
        if k == 0:
            ax.set_ylabel("true class")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8).set_label("% of the true class's validation samples")
    fig.suptitle(title + "\n(yellow squares: the true class; epoch of the best validation accuracy)", fontsize=11)
    return fig


def add_top3(page: Page, ctx: Context) -> None:
    page.h(2, "Top-3 predicted classes per true class (the paper's Figure 4)")
    top3 = ctx.study.top3(ctx.best_id)
    if not top3:
        page.p("Not available: this trial has no `trials/trial_<id>/val_top3.json` (studies run before it was "
               "recorded).")
        return
    heads = [h for h in ctx.modalities if h in top3["top_k"]] + ["multimodal"]
    fig = draw_top3(_get_top3_info(top3, heads), list(top3["class_names"]), top3.get("accuracy", {}),
                    f"{ctx.study.dataset}: how often each class is in the top-3 predictions, best trial "
                    f"{ctx.best_id} (validation, epoch {top3.get('epoch')})")
    page.img(figure.save(fig, ctx.out / FIGURE), "top-3 predicted classes per true class")
    head, body = top3_table(top3, heads)
    page.table(head, body)
    page.p("For each true class (rows) the three classes most often among a sample's top-3 predictions of each "
           "head, as a share of that class's validation samples (the true class in bold). Classes that share "
           "the top-3 of one modality are the relations its reshaped labels carry.")
