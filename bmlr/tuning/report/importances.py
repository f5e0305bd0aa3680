"""Section 2: Optuna's hyperparameter importances (fANOVA, seeded) over the finished trials'
best validation accuracy; a staged study's from its stage 1 (stage 2 varies alpha alone)."""
from __future__ import annotations

from typing import Any

from bmlr.tuning import plots
from bmlr.tuning.report.page import Page
from bmlr.tuning.report.study_view import Context
from bmlr.tuning.search_space import SearchSpace
from bmlr.tuning.selection import SCORE, is_candidate

__all__ = ["param_importances", "add_importances"]

Row = dict[str, Any]


def _searched_keys(rows: list[Row], space: SearchSpace | None) -> list[str]:
    """The space's keys, or without a space the trials' `param.*` columns; never the seeds."""
    keys = space.params if space is not None else [c.removeprefix("param.") for c in (rows[0] if rows else {})
                                                    if c.startswith("param.")]
    return [k for k in keys if k != "seeds"]


def _distributions(rows: list[Row], space: SearchSpace | None) -> dict[str, Any]:
    """An Optuna distribution per key that varied across the trials: int, float (log where the
    space says so) or categorical (the space's choices, else the values seen)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists: dict[str, Any] = {}
    for key in _searched_keys(rows, space):
        values = [r.get(f"param.{key}") for r in rows if r.get(f"param.{key}") is not None]
        if len(set(map(str, values))) < 2:
            continue
        param = space.params.get(key) if space is not None else None
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            if param is not None and param.kind == "int":
                dists[key] = IntDistribution(int(min(values)), int(max(values)))
            else:
                log = param is not None and param.kind == "loguniform" and min(values) > 0
                dists[key] = FloatDistribution(float(min(values)), float(max(values)), log=log)
        else:
            choices = (list(param.choices) if param is not None and param.kind == "choice"
                       else sorted(set(map(str, values))))
            dists[key] = CategoricalDistribution(choices)
    return dists


def _trial_params(row: Row, dists: dict[str, Any]) -> dict[str, Any]:
    """The row's values in the types its distributions hold (a choice as the choice itself)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    params = {}
    for key, dist in dists.items():
        value = row[f"param.{key}"]
        if isinstance(dist, CategoricalDistribution):
            value = next((c for c in dist.choices if str(c) == str(value)), value)
        elif isinstance(dist, IntDistribution):
            value = int(value)
        else:
            value = float(value)
        params[key] = value
    return params


def param_importances(rows: list[Row], space: SearchSpace | None) -> tuple[dict[str, float], int]:
    """fANOVA importances (Optuna, seeded) of the searched keys for the trials' best validation
    accuracy; keys that did not vary are left out. Returns ({}, n) when it cannot be computed
    (n: the usable trials)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    rows = [r for r in rows if is_candidate(r)]
    dists = _distributions(rows, space)
    usable = [r for r in rows if all(r.get(f"param.{k}") is not None for k in dists)]
    if not dists or len(usable) < 3 or len({float(r[SCORE]) for r in usable}) < 2:
        return {}, len(usable)  # nothing varied, too few trials, or every trial scored the same
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for r in usable:
        study.add_trial(optuna.trial.create_trial(params=_trial_params(r, dists), distributions=dists,
                                                  value=float(r[SCORE])))
    result = optuna.importance.get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    return {k: float(v) for k, v in result.items()}, len(usable)


def _inputs(ctx: Context) -> tuple[list[Row], SearchSpace | None, str]:
    """The trials and space to explain, and a note for the figure's title."""
    study = ctx.study
    if study.kind == "staged" and study.stage_dirs:
        rows = [r for r in study.rows if str(r.get("stage")) == "1"]
        return rows, study.search_space(ctx.log, study.stage_dirs[0]), " (stage 1; stage 2 varied \u03b1 only)"
    return study.rows, study.search_space(ctx.log), ""


def add_importances(page: Page, ctx: Context) -> None:
    from optuna.exceptions import OptunaError

    page.h(2, "Hyperparameter importances")
    rows, space, note = _inputs(ctx)
    try:
        imp, n_used = param_importances(rows, space)
    except (OptunaError, ValueError, RuntimeError) as err:  # a convenience: the page says it is missing
        imp, n_used = {}, 0
        ctx.log(f"report: importances failed ({type(err).__name__}: {err})")
    if not imp:
        page.p(f"Not computed: it needs at least 3 finished trials, a hyperparameter that varied and "
               f"scores that differ ({n_used} usable trials).")
        return
    path = plots.importances(imp, ctx.out / "importances.png",
                             f"{ctx.study.dataset}: hyperparameter importances{note}",
                             f"fANOVA (Optuna) over {n_used} finished trials' best validation accuracy")
    page.img(path, "hyperparameter importances")
    page.table(["hyperparameter", "importance %"], [[k, f"{100 * v:.1f}"] for k, v in imp.items()])
    page.p("Importance: the share of the variance of validation accuracy across trials that each "
           "hyperparameter explains (Optuna's fANOVA evaluator, seed 0). Few trials make it noisy.")
