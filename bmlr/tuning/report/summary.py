"""The report's opening: what the study was (data set, method, strategy, trials and epochs
trained), its best trial (its score by the study's rule, with its standard error, and whether
the next trials are inside that noise) and where its production configuration is, and its
MLflow run."""
from __future__ import annotations

import shlex
from collections import Counter
from typing import Any

from bmlr.fileio import finite_or_none
from bmlr.tuning.report.page import Page, pct
from bmlr.tuning.report.scoring import noise_text, score_label, score_pm
from bmlr.tuning.report.study_view import Context, StudyView
from bmlr.tuning.selection import choose_best

__all__ = ["add_summary"]

KIND_TEXT = {"surface": "\u03b1 \u00d7 \u03b2 surface (grid, no early stopping)",
             "staged": "staged search (stage 1: \u03b2 with lr and fusion at a fixed \u03b1; stage 2: \u03b1)"}
SEARCH_TEXT = "joint search (Optuna TPE + ASHA)"


def _scope(study: StudyView) -> str:
    """One sentence: data set and sizes, method, strategy, trials by status, epochs trained."""
    counts = Counter(r.get("status", "?") for r in study.rows)
    total_epochs = sum(int(r.get("epochs") or 0) for r in study.rows)
    sizes = study.data.get("sizes") or {}
    return (f"Data set **{study.dataset}**"
            + (f" ({sizes.get('train', '?')} train / {sizes.get('val', '?')} validation samples)" if sizes else "")
            + f", method **{study.method}**, {KIND_TEXT.get(study.kind, SEARCH_TEXT)}. {len(study.rows)} trials ("
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"), {total_epochs} epochs trained in all"
            + (f", at most {study.trial_epochs()} per trial" if study.trial_epochs() else "") + ".")


def _staged_note(study: StudyView, best_stage: object) -> str:
    st = study.info.get("staged") or {}
    return (f"Stage 1 searched {', '.join(st.get('stage1_searched', []))} at \u03b1 = {st.get('stage1_alpha')} "
            f"({st.get('stage1_samples')} trials); stage 2 searched \u03b1 with the stage-1 winner fixed "
            f"({st.get('stage2_samples')} trials, the stage-1 winner counted as a stage-2 candidate). "
            f"The export is the stage-2 winner: trial {study.info.get('best_trial_id')} "
            f"(stage {best_stage}).")


def _best_text(study: StudyView, best: dict[str, Any]) -> str:
    """The winner in one paragraph: its score by the study's rule with its standard error, and
    why it won where a confirmation chose it."""
    n_val = (study.data.get("sizes") or {}).get("val")
    se = (f" (\u00b1 one binomial standard error of an accuracy that high on {n_val or 'the'} validation "
          f"samples)" if finite_or_none(best.get("score_se")) is not None else "")
    text = (f"Best trial **{best['trial_id']}**: {score_label(study.rows)} **{score_pm(best)}**{se}, reached at "
            f"epoch {best.get('best_epoch')} of {best.get('epochs')}; its highest validation accuracy at any "
            f"epoch: {pct(best.get('best_val_acc'))}%.")
    winner = study.confirmed_winner
    if winner is not None and winner.row is best:
        own = choose_best(study.rows)
        text += (f" It won the confirmation (see **Confirmation**): the best mean validation accuracy over "
                 f"{len(winner.values)} new seeds, {pct(winner.mean)}%"
                 + (f"; the search's own winner was trial {own['trial_id']}"
                    if own is not None and own["trial_id"] != best["trial_id"] else "") + ".")
    return text


def add_summary(page: Page, ctx: Context) -> None:
    """The title and the paragraphs above the first section."""
    study, best = ctx.study, ctx.best
    best_yaml = study.store.best_path
    page.h(1, f"Study report: {study.name}")
    page.p(_scope(study))
    page.p(_best_text(study, best) + f" Its production configuration is `{best_yaml}` "
           f"(`python -m bmlr.train --config {shlex.quote(str(best_yaml))}`). Everything here is measured on the "
           f"validation split; the test split is never read during tuning.")
    noise = noise_text(study.rows)
    if noise:
        page.p(f"**Noise.** {noise}" + (" The confirmation below does so." if study.candidates else ""))
    if study.info.get("tracking_uri"):
        page.p(f"MLflow: `{study.info['tracking_uri']}`, parent run `{study.info.get('parent_run_id')}` "
               f"(this report is its artifact `report/report.html`).")
    if study.kind == "staged":
        page.p(_staged_note(study, best.get("stage")))
