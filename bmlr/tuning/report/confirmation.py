"""The confirmation section, present where the study ran a confirmation stage
(``confirmation.csv``, :mod:`bmlr.tuning.confirm`): its candidates (the search's top distinct
configurations) with their search score (one seed) +- its standard error beside the mean +- std
of the new seeds and each seed's value, the winner starred, as a table and a figure; the seeds,
the epochs and the cost in epochs.

The candidates and the winner come from :class:`~bmlr.tuning.report.study_view.StudyView`
(the stage's own rule, :func:`bmlr.tuning.selection.choose_confirmed`), so the page names the trial
``best.yaml`` holds. A search score above its confirmation mean is the winner's curse: the
highest of many noisy single-seed scores is an optimistic estimate.
"""
from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from bmlr.tuning.report import figure
from bmlr.tuning.report.page import Page, pct
from bmlr.tuning.report.scoring import score_label, score_pm, se_cell
from bmlr.tuning.report.study_view import Context, StudyView
from bmlr.tuning.selection import Candidate, score

__all__ = ["FIGURE_FILE", "WINNER_MARK", "confirmation_table", "confirmation_cost", "draw_confirmation",
           "add_confirmation"]

FIGURE_FILE = "confirmation.png"
WINNER_MARK = "\u2605 winner"

Row = dict[str, Any]


def _seed_cells(candidate: Candidate, rows: list[Row]) -> str:
    """Each seed's best validation accuracy (%), or its status where it did not complete."""
    mine = sorted((r for r in rows if str(r["candidate"]) == candidate.trial_id), key=lambda r: int(r["seed"]))
    return ", ".join(f"{r['seed']}: " + (pct(candidate.values[int(r["seed"])]) if int(r["seed"]) in candidate.values
                                         else str(r.get("status")))
                     for r in mine) or "-"


def confirmation_table(study: StudyView) -> tuple[list[str], list[list]]:
    """One row per candidate, in the search's order: its search trial, search score (%) and
    standard error, its confirmation mean and std over the completed seeds (%), each seed's
    value, and the winner's mark."""
    winner = study.confirmed_winner
    head = ["#", "search trial", "search score %", "\u00b1 SE", "confirmation mean %", "\u00b1 std",
            "per seed %", "winner"]
    body = [[i, c.trial_id, pct(score(c.row)), se_cell(c.row), pct(c.mean), pct(c.std),
             _seed_cells(c, study.confirmation), WINNER_MARK if c is winner else ""]
            for i, c in enumerate(study.candidates, 1)]
    return head, body


def confirmation_cost(study: StudyView) -> tuple[int, int]:
    """The epochs the confirmation trained (all its runs) and those the search trained."""
    return (sum(int(r.get("epochs") or 0) for r in study.confirmation),
            sum(int(r.get("epochs") or 0) for r in study.rows))


def _get_confirmation_info(study: StudyView) -> list[Row]:
    """Per candidate, in the search's order: its label, search score and standard error
    (fractions, None where unknown), its seeds' values and whether it won."""
    winner = study.confirmed_winner
    return [{"label": c.trial_id, "search": score(c.row), "search_se": c.row.get("score_se"),
             "seeds": [c.values[s] for s in sorted(c.values)], "winner": c is winner} for c in study.candidates]


def draw_confirmation(candidates: list[Row], title: str, subtitle: str = ""):
    """One column per candidate (values in %): its search score beside its seeds' values and their
    mean (+- std), joined by a grey line, so a drop from search to confirmation (the winner's
    curse) reads at a glance; the winner's label starred. `candidates`: dicts with
    `label`, `search` and `search_se` (fractions, None where unknown), `seeds` (the seeds'
    values, fractions) and `winner` (bool). Returns the figure."""
    fig, ax = figure.pyplot().subplots(figsize=(max(6.0, 1.6 * len(candidates) + 2.5), 4.8))
    labelled: set[str] = set()

    def once(label: str) -> str | None:  # each legend entry once, whichever candidate draws it first
        new = label not in labelled
        labelled.add(label)
        return label if new else None

    offset = 0.17
    for x, c in enumerate(candidates):  # search score (hollow square, +- SE) left, seeds and their mean right
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
    return fig


def _protocol(study: StudyView) -> str:
    """The seeds, the epochs and the cost in one sentence."""
    seeds = sorted({int(r["seed"]) for r in study.confirmation})
    epochs = sorted({int(r["epochs"]) for r in study.confirmation if r.get("status") == "completed"})
    trained, searched = confirmation_cost(study)
    return (f"The search's top {len(study.candidates)} distinct configurations, trained again with the seeds "
            f"{seeds} (the search trained with the study seed {study.settings.get('seed', '?')}) for "
            f"{', '.join(map(str, epochs)) or '?'} epochs each, by the production protocol (every epoch, the best "
            f"validation epoch kept). Cost: {trained} epochs, {trained / max(searched, 1):.2f}x the search's "
            f"{searched} (the parent run's tag `confirmation_cost_epochs`).")


def _drift(study: StudyView) -> str:
    """How far the candidates' confirmation means lie from their search scores, on average."""
    gaps = [c.mean - score(c.row) for c in study.candidates if c.mean is not None]
    gap = 100 * statistics.fmean(gaps)
    where = (f"{-gap:.1f} points below" if gap < 0 else f"{gap:.1f} points above")
    return (f"On average a candidate's confirmation mean lies {where} its search score. The search score is one "
            f"seed's; the highest of many such noisy numbers is optimistic (the winner's curse), which is why "
            f"the export is chosen by the mean over new seeds. (The confirmation's values are what production "
            f"training keeps: each seed's best validation epoch at the production epochs.)")


def _verdict(study: StudyView) -> str:
    """Who won, against whom, and how the search scores compare with the confirmation's means."""
    winner = study.confirmed_winner
    if winner is None:
        return "No confirmation seed completed: `best.yaml` stays the search's winner."
    first = study.candidates[0]
    return (f"The winner ({WINNER_MARK.split()[0]}) is trial **{winner.trial_id}**, the highest mean: "
            f"**{pct(winner.mean)}%** over {len(winner.values)} seeds, against its search "
            f"{score_label(study.rows)} of {score_pm(winner.row)}"
            + ("" if winner is first else f"; the search ranked trial {first.trial_id} first")
            + f". `best.yaml` holds it. {_drift(study)}")


def add_confirmation(page: Page, ctx: Context) -> None:
    """The section, where the study ran a confirmation stage; nothing otherwise."""
    study = ctx.study
    if not study.confirmation:
        return
    page.h(2, "Confirmation (new seeds for the top configurations)")
    page.p(_protocol(study))
    head, body = confirmation_table(study)
    page.table(head, body)
    if any(c.values for c in study.candidates):
        candidates = _get_confirmation_info(study)
        fig = draw_confirmation(candidates, f"{study.dataset}: the confirmation of the search's top "
                                f"{len(candidates)} configurations", "search score (one seed) beside the mean over "
                                "new seeds (validation)")
        page.img(figure.save(fig, ctx.out / FIGURE_FILE), "confirmation: search score beside the mean over new seeds")
    page.p(_verdict(study) + " `\u00b1 SE`: the search score's binomial standard error; `\u00b1 std`: the standard "
           "deviation over the confirmation's seeds (the spread a new seed gives); `per seed`: each seed's best "
           "validation accuracy, or its status where it did not complete.")
