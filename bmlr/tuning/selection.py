"""The one rule that ranks a study's trials and picks its winner.

Every place that names a "best" trial (a study's summary and ``best.yaml``, the staged
search's stage-2 winner, a surface's best cell, the report, a comparison's rows) calls
these functions, so the rule is written once.

A trial row is a ``trials.csv`` row (``bmlr.tuning.store``): ``trial_id``, ``status``,
``best_epoch`` and the score column :data:`SCORE`. The score is the highest validation
accuracy the trial reached at any epoch (one seed); failed trials never win (their
configuration diverged). Ties go to the trial that reached its score in fewer epochs, then
to the smaller trial id, so the choice never depends on the order of the rows.
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, Hashable, Iterable

from bmlr.fileio import finite_or_none

__all__ = ["SCORE", "score", "is_candidate", "rank", "choose_best", "group_scores", "choose_best_group"]

SCORE = "best_val_acc"  # the trials-table column the rule ranks by (higher is better)

Row = dict[str, Any]


def score(row: Row) -> float | None:
    """The row's score, or None where it has none (no epoch reported, not a finite number)."""
    return finite_or_none(row.get(SCORE))


def is_candidate(row: Row) -> bool:
    """A trial that may win: not failed, with a score."""
    return row.get("status") != "failed" and score(row) is not None


def _order(row: Row) -> tuple:
    return (-score(row), finite_or_none(row.get("best_epoch")) or 0, str(row["trial_id"]))


def rank(rows: Iterable[Row]) -> list[Row]:
    """The candidates, best first (score, then fewer epochs to reach it, then trial id)."""
    return sorted((r for r in rows if is_candidate(r)), key=_order)


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
