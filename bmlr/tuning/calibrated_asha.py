"""ASHA whose grace period the study measures instead of being told (``grace_period: auto``,
the default where neither ``--grace-period`` nor the search space sets one).

ASHA stops a trial at its first rung by its score there, which is only sound where an early
score ranks configurations as the final one does. Under modality imbalance the first epochs of
every configuration look alike (the fast modality's plateau), and on data we have not seen
nobody knows for how long. So :class:`CalibratedASHA` stops nothing until ``calibration``
trials have run to the end (every trial running meanwhile runs on too), then measures on their
curves how early the ranking settles (:func:`choose_grace`: the first epoch from which every
later epoch ranks them as the end does, Spearman >= ``rung_check.AGREES``), and from then on
is Ray's ASHA (or Hyperband) with that grace period, its rungs filled with every result seen
so far. Where no epoch before the last agrees, it stops nothing at all.

The decision is written to ``record`` (JSON: the grace period or null, the trials it used, the
agreement per epoch), which the study's summary reads. A resumed study reads it back and keeps
the grace period it learned (Ray does not keep a scheduler's state across a restore: the rungs
start empty and fill with the trials that report after the resume); where the study stopped
before it decided, it calibrates on the trials that end after the resume.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from bmlr.fileio import read_json, write_json
from bmlr.tuning.rung_check import AGREES, MIN_TRIALS, Agreement, rank_agreement

__all__ = ["CalibratedASHA", "Decision", "choose_grace"]


@dataclass(frozen=True)
class Decision:
    grace_period: int | None  # None: no epoch before the last ranked the trials as the end did
    trials: int  # the trials that ran to the end and were measured
    agreement: tuple[Agreement, ...]

    def as_record(self) -> dict[str, Any]:
        return {"grace_period": self.grace_period, "trials": self.trials,
                "agreement": {str(a.epoch): a.rho for a in self.agreement}}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Decision":
        """The decision :meth:`as_record` wrote."""
        trials = int(record["trials"])
        return cls(record["grace_period"], trials,
                   tuple(Agreement(int(e), rho, trials) for e, rho in record.get("agreement", {}).items()))


def choose_grace(curves: list[list[float]], max_t: int) -> Decision:
    """The first epoch k < ``max_t`` from which every epoch up to ``max_t - 1`` ranks the
    ``curves`` (full-length score curves) with Spearman >= AGREES against their last values; None
    where epoch ``max_t - 1`` does not (or there is no such epoch)."""
    every = tuple(rank_agreement(curves, range(1, max_t)))
    grace = None
    for agreement in reversed(every):
        if agreement.rho is None or agreement.rho < AGREES:
            break
        grace = agreement.epoch
    return Decision(grace, max((a.trials for a in every), default=0), every)


class CalibratedASHA(FIFOScheduler):
    """FIFO until ``calibration`` trials reached ``max_t``; then ASHA with the measured grace
    period (one bracket, or ``brackets(grace, reduction_factor)`` of them: Hyperband), or FIFO
    where none was found. ``brackets`` must pickle (Ray stores the scheduler with the tuner)."""

    def __init__(self, time_attr: str, max_t: int, reduction_factor: int,
                 brackets: Callable[[int, int], int] | None = None, calibration: int = MIN_TRIALS,
                 record: Path | None = None):
        super().__init__()
        self._time_attr, self._max_t, self._rf = time_attr, max_t, reduction_factor
        self._brackets, self._calibration, self._record = brackets, calibration, record
        self._mode: str | None = None
        self._curves: dict[str, dict[int, float]] = {}  # trial id -> epoch -> score (a retry overwrites)
        self._trials: dict[str, Any] = {}  # trial id -> Ray's Trial, in the order they were added
        self._finished: list[str] = []  # reached max_t, in that order
        self._ended: set[str] = set()  # completed or removed (a failed trial may be retried)
        self._in_inner: set[str] = set()  # the live trials the inner scheduler judges
        self._stop_next: set[str] = set()  # live trials the replayed rungs would have stopped
        self.decision: Decision | None = None
        self._inner: ASHAScheduler | None = None

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        self._mode = mode or self._mode
        return super().set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller, trial) -> None:
        if self.decision is None and self._record is not None and self._record.is_file():
            # restored by Ray as it was pickled when the study started: the decision is on disk
            self.decision = Decision.from_record(read_json(self._record))
            if self.decision.grace_period is not None:
                self._start_inner()
        self._trials[trial.trial_id] = trial
        self._curves.setdefault(trial.trial_id, {})
        if self._inner is not None:
            self._inner.on_trial_add(tune_controller, trial)
            self._in_inner.add(trial.trial_id)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        epoch = int(result[self._time_attr])
        self._curves.setdefault(trial.trial_id, {})[epoch] = float(result[self._metric])
        if trial.trial_id in self._stop_next:
            self._stop_next.discard(trial.trial_id)
            return TrialScheduler.STOP
        if trial.trial_id in self._in_inner:
            return self._inner.on_trial_result(tune_controller, trial, result)
        if epoch < self._max_t:
            return TrialScheduler.CONTINUE
        if trial.trial_id not in self._finished:
            self._finished.append(trial.trial_id)
        if self.decision is None and len(self._finished) >= self._calibration:
            self._decide()
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._ended.add(trial.trial_id)
        if trial.trial_id in self._in_inner:
            self._in_inner.discard(trial.trial_id)
            self._inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._ended.add(trial.trial_id)
        if trial.trial_id in self._in_inner:
            self._in_inner.discard(trial.trial_id)
            self._inner.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        if self.decision is None:
            return f"calibrating ASHA: {len(self._finished)} of {self._calibration} trials ran to the end"
        return f"calibrated ASHA: grace period {self.decision.grace_period}"

    def _decide(self) -> None:
        curves = [[value for _, value in sorted(self._curves[tid].items())] for tid in self._finished]
        self.decision = choose_grace(curves, self._max_t)
        if self._record is not None:
            write_json(self._record, self.decision.as_record())
        if self.decision.grace_period is not None:
            self._start_inner()
            self._replay()

    def _start_inner(self) -> None:
        """Ray's ASHA (or Hyperband) with the decided grace period, its rungs empty."""
        grace = self.decision.grace_period
        brackets = self._brackets(grace, self._rf) if self._brackets else 1
        self._inner = ASHAScheduler(time_attr=self._time_attr, metric=self._metric, mode=self._mode,
                                    max_t=self._max_t, grace_period=grace, reduction_factor=self._rf,
                                    brackets=brackets)

    def _replay(self) -> None:
        """Every result so far into the new rungs, in the order trials were added; a live trial
        that its rungs would have stopped stops at its next result."""
        for tid, trial in self._trials.items():
            self._inner.on_trial_add(None, trial)
            action = TrialScheduler.CONTINUE
            for epoch, value in sorted(self._curves[tid].items()):
                action = self._inner.on_trial_result(None, trial, {self._time_attr: epoch, self._metric: value})
                if action == TrialScheduler.STOP:
                    break
            over = tid in self._ended or tid in self._finished
            if over or action == TrialScheduler.STOP:
                self._inner.on_trial_remove(None, trial)  # its results stay in the rungs
                if not over:
                    self._stop_next.add(tid)
            else:
                self._in_inner.add(tid)
