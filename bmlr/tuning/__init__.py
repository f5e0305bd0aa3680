"""Hyperparameter tuning of bmlr with Ray Tune (ASHA), Optuna (TPE) and MLflow.

This package adapts the library for tuning; the library itself (`bmlr/` outside this
package) never imports Ray or MLflow. Modules, one job each, lower ones never importing
higher ones:

* `options`      - the command-line options the commands share (argparse only);
* `search_space` - the YAML grammar of `search_spaces/<dataset>.yaml` (`search_space_parse`: its
  checks), a method's view of it and its conversion to Optuna distributions (no Ray import);
* `store`        - the study folder: the only reader and writer of study.json, trials.csv;
* `selection`    - the one rule that picks a study's best trial;
* `ray_backend`  - Ray Tune's sampler, searcher, scheduler and session;
* `trainable`    - the Ray Tune function trainable over `bmlr.engine.Trainer`;
* `tracking`     - MLflow, and the only modules here that import it: a study's runs, the
  trial callback, a comparison's runs;
* `strategies`   - how a study chooses its trials: `Search` (TPE + ASHA), `Grid` (a surface);
* `export`       - a trial's configuration -> a production YAML for `bmlr.train`;
* `surface`      - alpha x beta grids and surfaces of scattered trials;
* `report`       - the study report (best trials, importances, surface, Figures 6, 3a, 4);
* `plan`, `results`, `study` - a study's settings resolved once and checked; its trial rows,
  winner, export and summary; running (or resuming) it once: data, MLflow, Ray, the stages;
* `confirm`, `references` - the stages after a search: the top configurations on new seeds; the
  winner against the method untuned and the baseline;
* `surface_study`, `staged` - the surface as a study; beta (with lr, fusion) first, then alpha;
* `recipes`, `compare` - the paper's tables as recipes; equal-budget comparisons of methods;
* `cli`          - `bmlr-tune` / `python tune.py`: one parser, a subcommand each for run (the
  default), export, compare, report, surface, recipe (on top: imported by nothing here).

The names below are the tuning layer's public API. Each is imported from its module when first
used (PEP 562 `__getattr__`), so importing a module of this package (`bmlr.tuning.cli` for
`bmlr-tune --help`) imports neither torch nor Ray nor MLflow unless that module does.
"""
from __future__ import annotations

import importlib
from typing import Any

# module (in this package) -> the public names it defines
EXPORTS = {
    "export": ("ExportError", "export_run"),
    "recipes": ("RECIPES", "Arm", "Recipe", "get_recipe"),
    "search_space": ("SearchSpace", "SearchSpaceError", "load_search_space", "parse_search_space",
                     "resolve_search_space"),
    "selection": ("choose_best", "rank"),
    "store": ("StoreError", "StudyStore", "find_study"),
    "tracking": ("TrackingError", "StudyRuns"),
    "strategies": ("Search", "Grid", "strategy_for"),
    "report": ("ReportError", "write_report"),
    "study": ("StudyError", "StudyOutcome", "StudySettings", "Runtime", "Plan", "plan_study", "run_study"),
    "surface": ("SurfaceError", "surface_from_study"),
    "surface_study": ("plan_surface", "run_surface"),
    "staged": ("run_staged",),
    "compare": ("Comparison", "ComparisonError", "ComparisonOutcome", "ComparisonSettings"),
}
MODULE_OF = {name: module for module, names in EXPORTS.items() for name in names}

__all__ = sorted(MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in MODULE_OF:  # (a submodule not imported yet: `from bmlr.tuning import store` imports it)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{MODULE_OF[name]}"), name)
    globals()[name] = value  # the next look-up finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
