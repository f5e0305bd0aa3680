"""Section 4: learning curves without and with BMLR (the paper's Figure 6): multimodal and
per-modality validation accuracy per epoch of the best trial, beside the best trial of
`--baseline-study`, or else the baseline counterpart of the best trial (`baseline.py`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bmlr.tuning import plots
from bmlr.tuning.report.baseline import CACHE_FILE, baseline_counterpart
from bmlr.tuning.report.page import Page
from bmlr.tuning.report.study_view import Context, StudyView

__all__ = ["add_learning_curves"]

Panel = dict[str, Any]


def _other_study_panel(baseline_study: str | Path) -> tuple[list[Panel], str]:
    """The best trial of another (baseline) study."""
    other = StudyView(baseline_study)
    best = other.best_row()
    if best is None:
        return [], ""
    return ([{"title": f"best trial of {other.name} (method {other.method}): trial {best['trial_id']}",
              "history": other.history(str(best["trial_id"])), "best_epoch": best.get("best_epoch")}],
            f"Left: the best trial of the baseline study `{other.dir}`.")


def _counterpart_panel(ctx: Context) -> tuple[list[Panel], str]:
    """The best trial's configuration trained again as the baseline (cached)."""
    counterpart = baseline_counterpart(ctx.study, ctx.best, ctx.out, ctx.log)
    if counterpart is None:
        return [], ""
    hist, cfg = counterpart
    best_epoch = max(hist, key=lambda h: (h.get("val_acc") or 0, -h["epoch"]))["epoch"] if hist else None
    return ([{"title": f"baseline counterpart (method baseline, seed {cfg['seeds'][0]})",
              "history": hist, "best_epoch": best_epoch}],
            "Left: the best trial's configuration trained again with `method: baseline` (multimodal "
            f"cross-entropy only), same seed and epochs (cached in `report/{CACHE_FILE}`).")


def _baseline_panels(ctx: Context, baseline_study: str | Path | None,
                     train_baseline: bool) -> tuple[list[Panel], str]:
    """The left panel (if any) and the sentence that says what it is."""
    if baseline_study:
        return _other_study_panel(baseline_study)
    if ctx.study.method == "baseline":
        return [], "The study's method is the baseline itself; pass `--baseline-study` of a BMLR study to compare."
    if train_baseline:
        return _counterpart_panel(ctx)
    return [], "No baseline shown (`--fast`); pass `--baseline-study DIR` or drop `--fast` to train the counterpart."


def add_learning_curves(page: Page, ctx: Context, baseline_study: str | Path | None, train_baseline: bool) -> None:
    page.h(2, "Learning curves without and with BMLR (the paper's Figure 6)")
    panels, note = _baseline_panels(ctx, baseline_study, train_baseline)
    panels.append({"title": f"best trial {ctx.best_id} (method {ctx.study.method})", "history": ctx.history,
                   "best_epoch": ctx.best.get("best_epoch")})
    if not ctx.history:
        page.p("Not drawn: the best trial's per-epoch results (ray/trial_<id>/result.json) are missing.")
        return
    path = plots.learning_curves(panels, ctx.modalities, ctx.out / "learning_curves.png",
                                 f"{ctx.study.dataset}: validation accuracy per epoch, multimodal and per modality")
    page.img(path, "learning curves")
    page.p(note + " Each modality's accuracy is that of its own head (W^u z^u + b/|M|): how well the encoder "
           "learned on its own. BMLR should lift the weaker modality and narrow the gap.")
