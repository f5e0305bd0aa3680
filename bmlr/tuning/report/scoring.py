"""How the report names a trial's score: the rule that made it (a row's ``score_rule``,
:mod:`bmlr.tuning.scores`; rows from before score rules are ``best``), the value beside its
binomial standard error (``score_se``), and whether the top trials are inside each other's
noise (the terminal summary's own check, :func:`bmlr.tuning.selection.noise_note`).

Every section that shows a score takes its words from here, so the page says one thing: which
rule ranked the trials and how far a score can move by the luck of the validation split.
"""
from __future__ import annotations

from typing import Any

from bmlr.fileio import finite_or_none
from bmlr.tuning.report.page import pct
from bmlr.tuning.scores import DEFAULT_RULE, ScoreRule, rule_of
from bmlr.tuning.selection import noise_note, score

__all__ = ["NOISE_TOP", "study_rules", "rule_text", "score_label", "target_name", "score_pm",
           "se_cell", "noise_text"]

NOISE_TOP = 5  # the top trials the noise check compares with the winner (as the terminal summary does)

Row = dict[str, Any]


def study_rules(rows: list[Row]) -> list[ScoreRule]:
    """The distinct rules of the rows' scores in first-seen order: one for any study (the
    default where no row has a score)."""
    return list(dict.fromkeys(rule_of(r) for r in rows if score(r) is not None)) or [DEFAULT_RULE]


def rule_text(rows: list[Row]) -> str:
    """``last-3: the mean validation accuracy of the last 3 epochs`` (several rules joined by ``; ``)."""
    return "; ".join(f"{rule.name}: {rule.describe()}" for rule in study_rules(rows))


def score_label(rows: list[Row]) -> str:
    """``score (last-3: the mean validation accuracy of the last 3 epochs)``: what a score is."""
    return f"score ({rule_text(rows)})"


def target_name(rows: list[Row]) -> str:
    """A short axis label for the score: ``score (last-3, validation accuracy)``."""
    return f"score ({', '.join(rule.name for rule in study_rules(rows))}, validation accuracy)"


def score_pm(row: Row) -> str:
    """The row's score in % beside its standard error: ``81.2 ± 3.6%`` (``81.2%`` without one)."""
    se = finite_or_none(row.get("score_se"))
    return f"{pct(score(row))}" + (f" \u00b1 {pct(se)}" if se is not None else "") + "%"


def se_cell(row: Row) -> str:
    """The row's standard error in percentage points ("-" where unknown)."""
    return pct(row.get("score_se"))


def noise_text(rows: list[Row], top: int = NOISE_TOP) -> str:
    """Where the next of the ``top`` trials score within two standard errors of the winner, the
    sentence that says so (:func:`~bmlr.tuning.selection.noise_note`); else ""."""
    note = noise_note(rows, top).removeprefix("note: ")
    return note[:1].upper() + note[1:] + "." if note else ""
