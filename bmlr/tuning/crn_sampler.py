"""Common random numbers for the searches of a comparison: an Optuna sampler whose random
(start-up) draw of a parameter depends only on the study seed, the parameter's name and the
trial's number, so that rows searching the same key draw the same values for it.

Why: Optuna's TPE draws its first ``n_startup_trials`` trials at random, from one random
stream for all keys in the order the trial asks for them. Two rows of a comparison (say
``baseline``: lr x fusion, and ``bmlr``: alpha x beta x lr x fusion) with the same seed then
get different lr values, because bmlr's alpha and beta use up the stream first; with a small
budget the rows' verdict is decided by which lr values happened to be drawn (issue 17, item
7). Seeding each draw by (seed, name, trial number) couples the rows: trial k of every row
tries the same lr (and the same fusion), and the rows differ only by the method and its own
keys. This is the classical variance-reduction device of simulation studies (common random
numbers: Glasserman & Yao, "Some guidelines and guarantees for common random numbers",
Management Science 38(6), 1992).

After the start-up the wrapped sampler (TPE) takes over unchanged: it learns from the trials
it was told, and its own random state was never used by the start-up draws (TPE keeps a
separate random sampler for them), so it proposes what a plain TPE with the same history would.

Each draw is one uniform number ``u`` mapped through the distribution's inverse CDF, uniform
in the internal space as :class:`optuna.samplers.RandomSampler` draws (log scale for ``log``
distributions, every grid point equally likely for ``step`` and integer ones, every choice
equally likely for categorical ones). Where two rows give a shared key different ranges, the
same ``u`` still gives values at the same quantile of each range.
"""
from __future__ import annotations

import inspect
import math
import zlib
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

__all__ = ["CommonRandomSampler", "tpe_startup_trials", "uniform_draw", "value_at"]

# the trial states TPE counts before it stops drawing at random (optuna.samplers.TPESampler)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


def tpe_startup_trials() -> int:
    """Optuna's default number of TPE start-up (random) trials (10 in Optuna 2-5)."""
    return int(inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default)


def uniform_draw(seed: int, name: str, number: int) -> float:
    """The uniform number in [0, 1) of parameter ``name`` in trial ``number`` of a study with
    ``seed``: the same in every study with that seed, whatever else the study searches."""
    key = [int(seed) % 2**64, zlib.crc32(name.encode("utf-8")), int(number)]
    return float(np.random.default_rng(key).random())


def value_at(distribution: BaseDistribution, u: float) -> Any:
    """The value of ``distribution`` at quantile ``u`` of the uniform law in its internal space
    (what :class:`optuna.samplers.RandomSampler` draws uniformly); ValueError for a kind of
    distribution Optuna does not have."""
    if isinstance(distribution, CategoricalDistribution):
        choices = distribution.choices
        return choices[min(int(u * len(choices)), len(choices) - 1)]
    if isinstance(distribution, FloatDistribution):
        return _float_at(distribution, u)
    if isinstance(distribution, IntDistribution):
        return _int_at(distribution, u)
    raise ValueError(f"no common-random-number draw for distribution {distribution!r}")


def _grid_point(low: float, step: float, points: int, u: float) -> float:
    """Grid point ``low + k * step``, k uniform on 0..points-1."""
    return low + min(int(u * points), points - 1) * step


def _float_at(d: FloatDistribution, u: float) -> float:
    if d.log:
        value = math.exp(math.log(d.low) + u * (math.log(d.high) - math.log(d.low)))
    elif d.step is not None:
        value = _grid_point(d.low, d.step, int(round((d.high - d.low) / d.step)) + 1, u)
    else:
        value = d.low + u * (d.high - d.low)
    return float(min(max(value, d.low), d.high))


def _int_at(d: IntDistribution, u: float) -> int:
    if d.log:  # as Optuna's transform: uniform on [log(low - 0.5), log(high + 0.5)], rounded
        low, high = math.log(d.low - 0.5), math.log(d.high + 0.5)
        value = int(round(math.exp(low + u * (high - low))))
    else:
        value = int(_grid_point(d.low, d.step, (d.high - d.low) // d.step + 1, u))
    return min(max(value, d.low), d.high)


class CommonRandomSampler(BaseSampler):
    """``base`` (e.g. TPE) with its random start-up draws replaced by common random numbers.

    While fewer than ``n_startup_trials`` trials have finished (complete or pruned: TPE's own
    rule, so pass the ``n_startup_trials`` ``base`` was built with), every parameter is drawn
    by :func:`uniform_draw` and :func:`value_at`; afterwards ``base`` samples. ``seed`` None:
    one drawn at random (no coupling with any other study). Reseeding (Optuna's parallel
    workers) reseeds ``base`` only: the start-up draws are deterministic on purpose.
    """

    def __init__(self, base: BaseSampler, seed: int | None, n_startup_trials: int):
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be >= 0, got {n_startup_trials}")
        self.base = base
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.n_startup_trials = n_startup_trials
        self._startup: dict[int, bool] = {}  # trial number -> drawn at random; decided once per trial

    def in_startup(self, study: "Study", trial: "FrozenTrial") -> bool:
        """Whether ``trial`` is one of the random start-up trials (decided when first asked,
        so a trial finishing elsewhere while this one is sampled does not split its draws)."""
        if trial.number not in self._startup:
            finished = study.get_trials(deepcopy=False, states=COUNTED)
            self._startup[trial.number] = len(finished) < self.n_startup_trials
        return self._startup[trial.number]

    def infer_relative_search_space(self, study: "Study", trial: "FrozenTrial") -> dict[str, BaseDistribution]:
        if self.in_startup(study, trial):
            return {}
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: "Study", trial: "FrozenTrial",
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self.in_startup(study, trial):
            return {}
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: "Study", trial: "FrozenTrial", param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if self.in_startup(study, trial):
            return value_at(param_distribution, uniform_draw(self.seed, param_name, trial.number))
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: "Study", trial: "FrozenTrial") -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: "Study", trial: "FrozenTrial", state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._startup.pop(trial.number, None)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
