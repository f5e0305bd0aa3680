"""Section 2: Optuna's hyperparameter importances (fANOVA, seeded) over the finished trials'
scores (the study's rule), as Optuna's own figure and a table; a staged study's from its
stage 1 (stage 2 varies alpha alone). The trials reach Optuna through
:func:`bmlr.tuning.report.optuna_study.optuna_study`, as Optuna's other views do."""
from __future__ import annotations

from typing import Any

from bmlr.tuning.report.optuna_figures import FIGURE, MIN_IMPORTANCE_TRIALS, StudyInputs, show
from bmlr.tuning.report.optuna_study import optuna_study
from bmlr.tuning.report.page import Page
from bmlr.tuning.report.scoring import score_label
from bmlr.tuning.report.study_view import Context
from bmlr.tuning.search_space import SearchSpace

__all__ = ["param_importances", "add_importances"]

Row = dict[str, Any]


def param_importances(rows: list[Row], space: SearchSpace | None) -> tuple[dict[str, float], int]:
    """fANOVA importances (Optuna, seeded) of the searched keys for the trials' scores; keys that
    did not vary are left out. Returns ({}, n) when it cannot be computed (n: the finished trials)."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    study = optuna_study(rows, space)
    n = len(study.trials)
    varied = {k for t in study.trials for k in t.params}
    if not varied or n < MIN_IMPORTANCE_TRIALS or len({t.value for t in study.trials}) < 2:
        return {}, n  # nothing varied, too few trials, or every trial scored the same
    result = optuna.importance.get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    return {k: float(v) for k, v in result.items()}, n


def add_importances(page: Page, ctx: Context, inputs: StudyInputs) -> None:
    from optuna.exceptions import OptunaError

    page.h(2, "Hyperparameter importances")
    try:
        imp, n_used = param_importances(inputs.rows, inputs.space)
    except (OptunaError, ValueError, RuntimeError) as err:  # a convenience: the page says it is missing
        imp, n_used = {}, 0
        ctx.log(f"report: importances failed ({type(err).__name__}: {err})")
    if not imp:
        page.p(f"Not computed: it needs at least {MIN_IMPORTANCE_TRIALS} finished trials, a hyperparameter that varied "
               f"and scores that differ ({n_used} usable trials).")
        return
    show(page, ctx, FIGURE["param_importances"], inputs)
    page.table(["hyperparameter", "importance %"], [[k, f"{100 * v:.1f}"] for k, v in imp.items()])
    page.p(f"Importance: the share of the variance of the {score_label(inputs.rows)} across the {n_used} "
           f"finished trials{inputs.note} that each hyperparameter explains (Optuna's fANOVA evaluator, seed 0). "
           f"Few trials make it noisy.")
