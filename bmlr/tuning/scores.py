"""A trial's score: one number from its per-epoch validation accuracies, by a rule the user
chooses (`--score`, or `score:` in the search-space YAML).

One trial is one seed and a few dozen noisy epochs; the maximum over its epochs (``best``)
rewards a lucky epoch (the winner's curse), so the rules that average are offered beside it:

* ``best``: the highest validation accuracy at any epoch (the production run keeps that epoch);
* ``last``: the accuracy at the last epoch trained;
* ``last-k``: the mean of the last k epochs trained (fewer where fewer were trained);
* ``smooth-k``: the best k-epoch moving mean (windows of min(k, epochs trained) epochs).

The trial reports its score after every epoch (metric ``score``, computed over the epochs
trained so far), so that Optuna learns from it, ASHA's rungs compare it, Ray's progress
table shows it and the trials table ranks by it: one score for every "best".
"""
from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Sequence

__all__ = ["ScoreRule", "ScoreError", "DEFAULT_SCORE", "DEFAULT_RULE", "VAL_ACC", "SCORE_HELP", "parse_score",
           "rule_of"]

DEFAULT_SCORE = "best"
VAL_ACC = "val_acc"  # an epoch's validation multimodal accuracy: what every rule reads
SCORE_HELP = "best | last | last-<k> | smooth-<k> (e.g. last-3: the mean of the last 3 epochs)"
_PATTERN = re.compile(r"(best|last|smooth)(?:-(\d+))?")


class ScoreError(ValueError):
    """A score rule that cannot be read."""


@dataclass(frozen=True)
class ScoreRule:
    kind: str  # best | last | smooth
    k: int = 1  # the window: last-k averages the last k epochs, smooth-k is a k-epoch moving mean

    @property
    def name(self) -> str:
        return self.kind if self.k == 1 and self.kind != "smooth" else f"{self.kind}-{self.k}"

    def describe(self) -> str:
        return {"best": "the best validation accuracy at any epoch",
                "last": "the validation accuracy at the last epoch" if self.k == 1 else
                f"the mean validation accuracy of the last {self.k} epochs",
                "smooth": f"the best {self.k}-epoch moving mean of the validation accuracy"}[self.kind]

    def windows(self, accs: Sequence[float]) -> list[tuple[int, float]]:
        """``(epoch, value)`` for each epoch where the rule could end: the value the trial would
        have if it stopped there (1-based epochs)."""
        width = min(self.k, len(accs))
        return [(end, statistics.fmean(accs[end - width:end])) for end in range(width, len(accs) + 1)]

    def value(self, accs: Sequence[float]) -> float | None:
        """The score of the epochs ``accs`` (validation accuracies, epoch 1 first); None for none
        or a non-finite accuracy among those the rule reads."""
        epoch = self.epoch(accs)
        if epoch is None:
            return None
        width = min(self.k, len(accs))
        result = statistics.fmean(accs[epoch - width:epoch]) if self.kind != "best" else accs[epoch - 1]
        return result if math.isfinite(result) else None

    def epoch(self, accs: Sequence[float]) -> int | None:
        """The epoch at which the score is reached (the first of equals; for ``last-k`` the last
        epoch), or None without epochs."""
        if not accs:
            return None
        if self.kind == "last":
            return len(accs)
        candidates = [(e, v) for e, v in (self.windows(accs) if self.kind == "smooth" else enumerate(accs, 1))
                      if math.isfinite(v)]
        if not candidates:
            return None
        return max(candidates, key=lambda ev: (ev[1], -ev[0]))[0]


def parse_score(text: str | None, source: str = "--score") -> ScoreRule:
    """``best``, ``last``, ``last-<k>`` or ``smooth-<k>`` (k >= 1; ``smooth`` needs a k)."""
    text = (text or DEFAULT_SCORE).strip()
    match = _PATTERN.fullmatch(text)
    if not match or (match.group(1) == "best" and match.group(2)) or (match.group(1) == "smooth"
                                                                     and not match.group(2)):
        raise ScoreError(f"{source}: {text!r} is not a score rule; expected {SCORE_HELP}")
    k = int(match.group(2) or 1)
    if k < 1:
        raise ScoreError(f"{source}: {text!r}: the window must be at least 1 epoch")
    return ScoreRule(match.group(1), k)


DEFAULT_RULE = parse_score(DEFAULT_SCORE)


def rule_of(row: dict) -> ScoreRule:
    """The rule of a trials-table row's score (its ``score_rule``; ``best`` for a row from before
    score rules)."""
    return parse_score(row.get("score_rule") or DEFAULT_SCORE, f"trials table: score_rule of trial "
                                                                f"{row.get('trial_id')}")
