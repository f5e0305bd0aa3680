"""The one rule that ranks a study's trials and picks its winner.

Every place that names a "best" trial (a study's summary and ``best.yaml``, the staged
search's stage-2 winner, a surface's best cell, the report, a comparison's rows) calls
these functions, so the rule is written once.

A trial row is a ``trials.csv`` row (``bmlr.tuning.store``): ``trial_id``, ``status``,
``best_epoch`` (the epoch at which its score is reached) and the score column :data:`SCORE`:
the study's score rule (:mod:`bmlr.tuning.scores`, ``best`` by default: the highest validation
accuracy at any epoch) over the trial's validation accuracies (one seed); a row written before
there were rules has ``best_val_acc`` only, which is the ``best`` rule's score. Failed trials
never win (their configuration diverged). Ties go to the trial that reached its score in
fewer epochs, then to the smaller trial id, so the choice never depends on the order of the rows.

Beside the rule: how noisy a score is (:func:`standard_error`, binomial on the validation
split's size; :func:`noise_note` where the top trials lie within two of them), and the
confirmation stage's rule (:func:`choose_confirmed`: the candidate with the best mean over new
seeds, :mod:`bmlr.tuning.confirm`).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable

from bmlr.fileio import finite_or_none

__all__ = ["SCORE", "LEGACY_SCORE", "score", "is_candidate", "rank", "table_order", "choose_best", "group_scores", "choose_best_group",
           "standard_error", "noise_note", "difference_text", "Candidate", "choose_confirmed"]

SCORE = "score"  # the trials-table column the rule ranks by (higher is better)
LEGACY_SCORE = "best_val_acc"  # the column of the same score in a trials table from before score rules

Row = dict[str, Any]


def score(row: Row) -> float | None:
    """The row's score, or None where it has none (no epoch reported, not a finite number)."""
    return finite_or_none(row[SCORE] if SCORE in row else row.get(LEGACY_SCORE))


def is_candidate(row: Row) -> bool:
    """A trial that may win: not failed, with a score."""
    return row.get("status") != "failed" and score(row) is not None


def _order(row: Row) -> tuple:
    return (-score(row), finite_or_none(row.get("best_epoch")) or 0, str(row["trial_id"]))


def rank(rows: Iterable[Row]) -> list[Row]:
    """The candidates, best first (score, then fewer epochs to reach it, then trial id)."""
    return sorted((r for r in rows if is_candidate(r)), key=_order)


def table_order(rows: Iterable[Row]) -> list[Row]:
    """Every row, the candidates by :func:`rank` (so the first is the one :func:`choose_best`
    names), then the rest (failed or unscored) by score, then trial id."""
    rows = list(rows)
    rest = [r for r in rows if not is_candidate(r)]
    rest.sort(key=lambda r: (score(r) is None, -(score(r) or 0.0), str(r["trial_id"])))
    return rank(rows) + rest


def choose_best(rows: Iterable[Row], prefer: Callable[[Row], bool] | None = None) -> Row | None:
    """The best candidate, or None. ``prefer``: among the rows tied on the best score, those
    it accepts win first (e.g. a staged search's stage-1 incumbent: a new alpha must do
    better, not as well, to replace it)."""
    ranked = rank(rows)
    if not ranked:
        return None
    if prefer is not None:
        top = score(ranked[0])
        preferred = [r for r in ranked if score(r) == top and prefer(r)]
        if preferred:
            return preferred[0]
    return ranked[0]


def group_scores(rows: Iterable[Row], key: Callable[[Row], Hashable | None]) -> dict[Hashable, list[float]]:
    """The candidates' scores grouped by ``key(row)`` (rows whose key is None are left out),
    e.g. a surface's (alpha, beta) cells over their training seeds."""
    groups: dict[Hashable, list[float]] = {}
    for row in rows:
        k = key(row)
        if k is not None and is_candidate(row):
            groups.setdefault(k, []).append(score(row))
    return groups


def choose_best_group(rows: list[Row], key: Callable[[Row], Hashable | None],
                      tie: Callable[[Hashable], Any] = lambda k: k) -> Row | None:
    """The best trial of the group with the highest mean score (ties: the smaller
    ``tie(group)``): that group's best trial by :func:`rank`. A surface's best cell over its
    seeds, then that cell's best seed for ``best.yaml``."""
    groups = group_scores(rows, key)
    if not groups:
        return None
    best = min(groups, key=lambda k: (-statistics.fmean(groups[k]), tie(k)))
    members = [r for r in rows if key(r) == best]
    return rank(members)[0]


# --- noise: how far a score can move by the luck of the validation split ---------------------------
def standard_error(accuracy: float | None, n: int | None) -> float | None:
    """The binomial standard error of an accuracy measured on ``n`` samples (None without n)."""
    if accuracy is None or not n:
        return None
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)


def noise_note(rows: list[Row], top: int) -> str:
    """Where the best trials' scores lie within two standard errors of the winner's, a line that
    says their order is inside the validation noise; else nothing."""
    ranked = rank(rows)
    if len(ranked) < 2 or finite_or_none(ranked[0].get("score_se")) is None:
        return ""
    margin = 2 * ranked[0]["score_se"]
    close = [r for r in ranked[1:top] if score(ranked[0]) - score(r) <= margin]
    if not close:
        return ""
    return (f"note: the next {len(close)} of the top {min(top, len(ranked))} trials score within two standard "
            f"errors ({100 * margin:.1f} points) of the best: their order is inside the validation noise; "
            f"compare them with several seeds before trusting it")


# --- the confirmation's rule: the best mean over new seeds ------------------------------------------
@dataclass
class Candidate:
    """One configuration the confirmation trains again, and what its seeds gave."""

    row: Row  # the search trial's row
    sampled: dict[str, Any]
    values: dict[int, float]  # seed -> best validation accuracy over the production epochs

    @property
    def trial_id(self) -> str:
        return str(self.row["trial_id"])

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values.values()) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values.values()) if len(self.values) > 1 else None

    def text(self) -> str:
        if self.mean is None:
            return f"trial {self.trial_id}: no confirmation seed finished"
        std = f" +- {self.std:.4f}" if self.std is not None else ""
        seeds = ", ".join(f"{s}: {v:.4f}" for s, v in sorted(self.values.items()))
        return f"trial {self.trial_id}: {self.mean:.4f}{std} (seeds {seeds}; search score {score(self.row):.4f})"


def choose_confirmed(candidates: list[Candidate], results: list[Row]) -> Candidate | None:
    """Fill each candidate's seed values from the confirmation's rows and return the winner
    (highest mean; ties and missing means: the search's order), or None where no seed finished."""
    by_id = {c.trial_id: c for c in candidates}
    for row in results:
        if row.get("best_val_acc") is not None and row["status"] == "completed":
            by_id[row["candidate"]].values[int(row["seed"])] = float(row["best_val_acc"])
    scored = [c for c in candidates if c.mean is not None]
    return max(scored, key=lambda c: (c.mean, -candidates.index(c))) if scored else None


def difference_text(a: float, a_se: float | None, b: float, b_se: float | None) -> str:
    """``+4.2 points (2 SE of the difference: 3.1)``: the difference of two accuracies and two
    standard errors of it, with "; within the noise" where the difference is inside that band."""
    diff = 100 * (a - b)
    if a_se is None or b_se is None:
        return f"{diff:+.1f} points"
    band = 200 * math.sqrt(a_se ** 2 + b_se ** 2)
    inside = "; within the noise" if abs(diff) <= band else ""
    return f"{diff:+.1f} points (2 SE of the difference: {band:.1f}{inside})"
