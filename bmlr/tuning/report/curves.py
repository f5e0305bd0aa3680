"""Section 4: learning curves without and with BMLR (the paper's Figure 6): multimodal and
per-modality validation accuracy per epoch of the best trial, beside the best trial of
`--baseline-study`, or else the study's baseline reference: the best trial's configuration with
`method: baseline`, trained once after the search by :mod:`bmlr.tuning.references`, whose
per-epoch history `references.json` holds. The report trains nothing: a study without that
reference shows the best trial alone and says so."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bmlr.fileio import finite_or_none, read_json
from bmlr.tuning.report import figure
from bmlr.tuning.report.page import Page
from bmlr.tuning.report.study_view import Context, StudyView

__all__ = ["FIGURE", "REFERENCES_FILE", "draw_learning_curves", "add_learning_curves"]

FIGURE = "learning_curves.png"
REFERENCES_FILE = "references.json"  # written by bmlr.tuning.references (its FILE) into the study folder

Panel = dict[str, Any]
History = list[dict[str, Any]]


def _curve(history: History, key: str) -> tuple[list[int], list[float]]:
    """(epochs, validation accuracy in %) of one head, where the history has a finite value."""
    points = [(int(h["epoch"]), 100.0 * v) for h in history if (v := finite_or_none(h.get(key))) is not None]
    return [e for e, _ in points], [v for _, v in points]


def _panel(title: str, history: History, best_epoch: Any, modalities: list[str]) -> Panel:
    """One run's curves: the fused head's, then each modality's own head's."""
    curves = {"multimodal": _curve(history, "val_acc")}
    curves.update((u, _curve(history, f"val_acc_{u}")) for u in modalities)
    return {"title": title, "curves": curves, "best_epoch": int(best_epoch) if best_epoch else None}


def _other_study(baseline_study: str | Path, modalities: list[str]) -> tuple[list[Panel], str]:
    """The best trial of another (baseline) study."""
    other = StudyView(baseline_study)
    best = other.best_row()
    if best is None:
        return [], ""
    title = f"best trial of {other.name} (method {other.method}): trial {best['trial_id']}"
    return ([_panel(title, other.history(str(best["trial_id"])), best.get("best_epoch"), modalities)],
            f"Left: the best trial of the baseline study `{other.dir}`.")


def _reference(ctx: Context) -> tuple[list[Panel], str]:
    """The study's baseline reference (`references.json`), or the line that says why none is shown."""
    path = ctx.study.dir / REFERENCES_FILE
    try:
        record = read_json(path) if path.is_file() else {}
        entry = (record.get("references") or {}).get("baseline") or {}
        trial, seeds = (record.get("winner") or {}).get("trial_id"), (entry.get("config") or {}).get("seeds") or ["?"]
    except (OSError, ValueError, AttributeError) as err:
        return [], f"No baseline shown: `{REFERENCES_FILE}` is unreadable ({type(err).__name__}: {err})."
    if not entry.get("history"):
        return [], (f"No baseline shown: the study has no baseline reference (`{REFERENCES_FILE}`, trained after "
                    "the search of a study run with `--references`); pass `--baseline-study DIR` to compare.")
    title = f"baseline reference: trial {trial}'s configuration (method baseline, seed {seeds[0]})"
    return ([_panel(title, entry["history"], entry.get("best_epoch"), ctx.modalities)],
            f"Left: the study's baseline reference (`{REFERENCES_FILE}`): the best trial's configuration with "
            "`method: baseline` (multimodal cross-entropy only), same seed and epochs, trained once after the search.")


def _get_learning_curves_info(ctx: Context, baseline_study: str | Path | None) -> tuple[list[Panel], str]:
    """The panels, left to right (a baseline where there is one, then the best trial), and the
    sentence that says what the left one is."""
    if baseline_study:
        panels, note = _other_study(baseline_study, ctx.modalities)
    elif ctx.study.method == "baseline":
        panels, note = [], ("The study's method is the baseline itself; pass `--baseline-study` of a BMLR study "
                            "to compare.")
    else:
        panels, note = _reference(ctx)
    title = f"best trial {ctx.best_id} (method {ctx.study.method})"
    return panels + [_panel(title, ctx.history, ctx.best.get("best_epoch"), ctx.modalities)], note


def draw_learning_curves(panels: list[Panel], title: str):
    """One panel per run, each with the fused head's validation accuracy and every modality's
    own head's per epoch; the best epoch is marked. Returns the figure."""
    plt = figure.pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for k, (head, (xs, ys)) in enumerate(panel["curves"].items()):
            if head == "multimodal":
                ax.plot(xs, ys, "-o", color=figure.modality_colour(head), linewidth=2.4, markersize=3.5,
                        label="multimodal (fused head)")
            else:
                ax.plot(xs, ys, "--s", color=figure.modality_colour(head, k - 1), linewidth=1.8, markersize=3,
                        label=f"{head} alone (its own head)")
        best = panel["best_epoch"]
        if best:
            ax.axvline(best, color="0.5", linestyle=":", linewidth=1.2, label=f"best epoch ({best})")
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlabel("epoch")
        figure.integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8, framealpha=0.9)  # curves differ per study: let matplotlib avoid them
        epochs = panel["curves"]["multimodal"][0]
        if epochs:
            ax.set_xlim(0.5, max(epochs) + 0.5)
    axes[0][0].set_ylabel("validation accuracy (%)")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def add_learning_curves(page: Page, ctx: Context, baseline_study: str | Path | None) -> None:
    page.h(2, "Learning curves without and with BMLR (the paper's Figure 6)")
    if not ctx.history:
        page.p("Not drawn: the best trial's per-epoch results (ray/trial_<id>/result.json) are missing.")
        return
    panels, note = _get_learning_curves_info(ctx, baseline_study)
    fig = draw_learning_curves(panels, f"{ctx.study.dataset}: validation accuracy per epoch, multimodal and per "
                                       "modality")
    page.img(figure.save(fig, ctx.out / FIGURE), "learning curves")
    page.p(note + " Each modality's accuracy is that of its own head (W^u z^u + b/|M|): how well the encoder "
           "learned on its own. BMLR should lift the weaker modality and narrow the gap.")
