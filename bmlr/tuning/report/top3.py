"""Section 6: per true class, the top-3 predicted classes of each modality's own head and of
the fused head at the best trial's best epoch (the paper's Figure 4), from the trial's
`trials/trial_<id>/val_top3.json` (written whenever a trial reaches a new best validation
accuracy)."""
from __future__ import annotations

from typing import Any

import numpy as np

from bmlr.tuning import plots
from bmlr.tuning.report.page import Page
from bmlr.tuning.report.study_view import Context

__all__ = ["top3_table", "add_top3"]


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


def add_top3(page: Page, ctx: Context) -> None:
    page.h(2, "Top-3 predicted classes per true class (the paper's Figure 4)")
    top3 = ctx.study.top3(ctx.best_id)
    if not top3:
        page.p("Not available: this trial has no `trials/trial_<id>/val_top3.json` (studies run before it was "
               "recorded).")
        return
    heads = [h for h in ctx.modalities if h in top3["top_k"]] + ["multimodal"]
    path = plots.top3_matrices(top3, heads, ctx.out / "top3_per_class.png",
                               f"{ctx.study.dataset}: how often each class is in the top-3 predictions, best trial "
                               f"{ctx.best_id} (validation, epoch {top3.get('epoch')})")
    page.img(path, "top-3 predicted classes per true class")
    head, body = top3_table(top3, heads)
    page.table(head, body)
    page.p("For each true class (rows) the three classes most often among a sample's top-3 predictions of each "
           "head, as a share of that class's validation samples (the true class in bold). Classes that share "
           "the top-3 of one modality are the relations its reshaped labels carry.")
