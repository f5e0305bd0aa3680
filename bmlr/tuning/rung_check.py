"""Where an epoch says little, say so: how well the trials' scores at ASHA's rung epochs rank
them against their final scores.

ASHA stops trials at its rungs (the grace period, then grace x factor, ...) by their score
there. That is only sound if an early score ranks configurations as their final scores do.
Where one modality learns late (modality imbalance seen from the tuner's side), the first
epochs of every configuration look alike and the first rung compares noise. A finished study
has what it takes to check: the trials that ran to the end have a score at every rung epoch
and a final one. The check is Spearman's rank correlation (``scipy.stats.spearmanr``) between
the two, per rung epoch, and a warning with the grace period to use where the first rung
ranked the trials no better than chance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = ["Agreement", "rung_epochs", "rank_agreement", "rung_warning", "MIN_TRIALS", "CHANCE", "AGREES"]

MIN_TRIALS = 4  # trials that ran to the end needed before a correlation means anything
CHANCE = 0.3  # at or below: the rung ranked the trials no better than chance (small samples: a loose bar)
AGREES = 0.6  # at or above: an epoch whose ranking agrees with the final one


@dataclass(frozen=True)
class Agreement:
    epoch: int
    rho: float | None  # Spearman's rank correlation with the final scores; None where undefined
    trials: int


def rung_epochs(grace_period: int, reduction_factor: int, max_epochs: int) -> list[int]:
    """ASHA's rung epochs below ``max_epochs``: grace, grace x factor, ..."""
    out, epoch = [], grace_period
    while epoch < max_epochs:
        out.append(epoch)
        epoch *= reduction_factor
    return out


def rank_agreement(curves: Sequence[Sequence[float]], epochs: Iterable[int]) -> list[Agreement]:
    """Per epoch k in ``epochs``: Spearman's correlation between the curves' k-th values and
    their last values, over the curves at least as long as the longest (the trials that ran to
    the end)."""
    from scipy.stats import spearmanr

    full = max((len(c) for c in curves), default=0)
    long_runs = [list(c) for c in curves if len(c) == full and full > 0]
    final = [c[-1] for c in long_runs]
    out = []
    for k in epochs:
        if len(long_runs) < MIN_TRIALS or not 1 <= k <= full:
            out.append(Agreement(k, None, len(long_runs)))
            continue
        at_k = [c[k - 1] for c in long_runs]
        rho = float(spearmanr(at_k, final).statistic) if len(set(at_k)) > 1 and len(set(final)) > 1 else None
        out.append(Agreement(k, rho if rho is not None and math.isfinite(rho) else None, len(long_runs)))
    return out


def rung_warning(curves: Sequence[Sequence[float]], grace_period: int, reduction_factor: int,
                 max_epochs: int) -> str:
    """One line on how the rung epochs ranked the trials; a warning, with the first epoch that
    agreed with the final ranking as the grace period to use, where the first rung did no better
    than chance. Empty where too few trials ran to the end to tell."""
    rungs = rung_epochs(grace_period, reduction_factor, max_epochs)
    if not rungs:
        return ""
    every = rank_agreement(curves, range(1, max_epochs))
    by_epoch = {a.epoch: a for a in every}
    first = by_epoch.get(rungs[0])
    if first is None or first.trials < MIN_TRIALS:
        return ""
    shown = ", ".join(f"epoch {k}: {_rho(by_epoch[k].rho)}" for k in rungs if k in by_epoch)
    line = f"rank agreement of the rung epochs with the final scores ({first.trials} trials ran to the end): {shown}"
    if first.rho is not None and first.rho > CHANCE:
        return line
    agreeing = next((a.epoch for a in every if a.epoch > rungs[0] and a.rho is not None and a.rho >= AGREES), None)
    advice = (f"the first epoch whose ranking agreed (Spearman >= {AGREES}) was {agreeing}: rerun with "
              f"--grace-period {agreeing}" if agreeing else
              "no epoch before the last ranked them as the end did: rerun with --scheduler none or a longer "
              "--grace-period")
    return (f"{line}\nwarning: ASHA's first rung (epoch {rungs[0]}) ranked the trials no better than chance; "
            f"trials it stopped there were judged on noise; {advice}")


def _rho(rho: float | None) -> str:
    return "undefined" if rho is None else f"{rho:+.2f}"
