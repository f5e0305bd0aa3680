"""Section 5: reshaped training samples per modality per epoch of the best trial (the
paper's Figure 3a), as a figure and a table."""
from __future__ import annotations

from bmlr.tuning import plots
from bmlr.tuning.report.page import Page, count, val
from bmlr.tuning.report.study_view import Context

__all__ = ["add_reshaped"]


def add_reshaped(page: Page, ctx: Context) -> None:
    page.h(2, "Reshaped training samples per epoch (the paper's Figure 3a)")
    history, modalities = ctx.history, ctx.modalities
    if not any(k.startswith("reshaped/") for h in history for k in h):
        page.p(f"Method {ctx.study.method} reshapes no labels (no `reshaped/<modality>` counts logged).")
        return
    sizes = ctx.study.data.get("sizes") or {}
    path = plots.reshaped_counts(history, modalities, sizes.get("train"), ctx.out / "reshaped_counts.png",
                                 f"{ctx.study.dataset}: training samples whose label was reshaped, best trial "
                                 f"{ctx.best_id}")
    page.img(path, "reshaped samples per epoch")
    page.table(["epoch"] + [f"reshaped {u}" for u in modalities] + [f"wrong top {u}" for u in modalities],
               [[h["epoch"]] + [val(count(h.get(f"reshaped/{u}"))) for u in modalities]
                + [val(count(h.get(f"wrong_top/{u}"))) for u in modalities] for h in history])
    page.p("Only the more confident modality of a sample is reshaped, and only while it is less than 1/\u03b2 "
           "times as confident as the other. `wrong top`: reshaped targets whose largest entry is not the "
           "label (possible for \u03b2 < 0.5).")
