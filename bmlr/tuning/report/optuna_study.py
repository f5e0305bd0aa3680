"""A finished study's trials as an Optuna study, the one way the report turns trials into
Optuna's terms: its importances (`importances`) and its figures (`optuna_figures`) both
read the study built here.

Each finished trial (:func:`bmlr.tuning.selection.is_candidate`) becomes one completed
Optuna trial whose value is the score the study ranks it by (:func:`bmlr.tuning.selection.score`) and
whose params are its sampled values, under the search space's own distributions (float,
log float, int, categorical: :meth:`Param.to_optuna`), so Optuna draws a log-sampled key on
a log axis. Keys that did not vary across the trials (and a surface study's seeds) are left
out: Optuna has nothing to show for them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bmlr.tuning.search_space import SearchSpace
from bmlr.tuning.selection import is_candidate, score

if TYPE_CHECKING:
    import optuna

__all__ = ["searched_keys", "distributions", "trial_params", "optuna_study"]

Row = dict[str, Any]


def searched_keys(rows: list[Row], space: SearchSpace | None) -> list[str]:
    """The space's keys, or without a space the trials' `param.*` columns; never the seeds."""
    keys = space.params if space is not None else [c.removeprefix("param.") for c in (rows[0] if rows else {})
                                                    if c.startswith("param.")]
    return [k for k in keys if k != "seeds"]


def _numbers(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _choice(value: Any) -> Any:
    """A choice as Optuna holds one (None, bool, int, float or str; anything else as its text)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _distribution(param, values: list[Any]):
    """The space's distribution for one key, widened to the values the trials hold (a space
    edited since, or a grid value outside it); without the space, one from the values."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if param is not None and param.kind == "choice":
        choices = [_choice(c) for c in param.choices]
        return CategoricalDistribution(choices + sorted({str(v) for v in values} - {str(c) for c in choices}))
    if not _numbers(values):
        return CategoricalDistribution(sorted({str(v) for v in values}))
    low, high = min(values), max(values)
    if param is not None and param.low is not None and param.high is not None:
        low, high = min(low, param.low), max(high, param.high)
    if param is not None and param.kind == "int":
        return IntDistribution(int(low), int(high))
    log = param is not None and param.log and low > 0
    return FloatDistribution(float(low), float(high), log=log)


def distributions(rows: list[Row], space: SearchSpace | None) -> dict[str, Any]:
    """An Optuna distribution per searched key that varied across `rows`."""
    dists: dict[str, Any] = {}
    for key in searched_keys(rows, space):
        values = [r[f"param.{key}"] for r in rows if r.get(f"param.{key}") is not None]
        if len({str(v) for v in values}) >= 2:
            dists[key] = _distribution(space.params.get(key) if space is not None else None, values)
    return dists


def trial_params(row: Row, dists: dict[str, Any]) -> dict[str, Any]:
    """The row's values of the keys in `dists` it has, in the types the distributions hold (a
    choice as the choice itself)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    params = {}
    for key, dist in dists.items():
        value = row.get(f"param.{key}")
        if value is None:
            continue
        if isinstance(dist, CategoricalDistribution):
            value = next((c for c in dist.choices if str(c) == str(value)), value)
        elif isinstance(dist, IntDistribution):
            value = int(value)
        else:
            value = float(value)
        params[key] = value
    return params


def optuna_study(rows: list[Row], space: SearchSpace | None) -> "optuna.Study":
    """An in-memory Optuna study (maximize) of the finished trials among `rows`, in the order
    given (Optuna numbers them so: the optimization history's x axis); each trial keeps its
    `trial_id` and `run_id` as user attributes."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = [r for r in rows if is_candidate(r)]
    dists = distributions(rows, space)
    study = optuna.create_study(direction="maximize")
    for row in rows:
        params = trial_params(row, dists)
        attrs = {k: str(row[k]) for k in ("trial_id", "run_id") if row.get(k) is not None}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dists[k] for k in params},
                                                  value=float(score(row)), user_attrs=attrs))
    return study
