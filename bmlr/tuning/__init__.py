"""Hyperparameter tuning of bmlr with Ray Tune (ASHA), Optuna (TPE) and MLflow.

This package adapts the library for tuning; the library itself (`bmlr/` outside this
package) never imports Ray or MLflow. Modules, one job each, lower ones never importing
higher ones:

* `options`      - the command-line options the commands share (argparse only);
* `search_space` - the YAML grammar of `search_spaces/<dataset>.yaml`, its validation, a
  method's view of it and its conversion to Optuna distributions (no Ray import);
* `store`        - the study folder: the only reader and writer of study.json, trials.csv;
* `selection`    - the one rule that picks a study's best trial;
* `ray_backend`  - Ray Tune's sampler, searcher, scheduler and session;
* `trainable`    - the Ray Tune function trainable over `bmlr.engine.Trainer`;
* `tracking`     - MLflow: one parent run per study, one nested run per trial;
* `export`       - a trial's configuration -> a production YAML for `bmlr.train`;
* `surface`, `plots` - alpha x beta grids and surfaces of scattered trials, the figures;
* `report`       - the study report (best trials, importances, surface, Figures 6, 3a, 4);
* `plan`, `results`, `study` - a study's settings and checks; its trial rows, winner, export
  and summary; running (or resuming) it: data cache, MLflow parent run, Ray, the tuner;
* `surface_study`, `staged` - the surface as a study; beta (with lr, fusion) first, then alpha;
* `recipes`, `compare` - the paper's tables as recipes; equal-budget comparisons of methods;
* `cli`          - `bmlr-tune` / `python tune.py` (on top: imported by nothing here).

The names below are the tuning layer's public API.
"""
from bmlr.tuning.export import ExportError, export_run
from bmlr.tuning.recipes import RECIPES, Arm, Recipe, get_recipe
from bmlr.tuning.search_space import (SearchSpace, SearchSpaceError, load_search_space, parse_search_space,
                                      resolve_search_space)
from bmlr.tuning.selection import choose_best, rank
from bmlr.tuning.store import StoreError, StudyStore, find_study
from bmlr.tuning.tracking import TrackingError
from bmlr.tuning.report import ReportError, write_report
from bmlr.tuning.study import StudyError, StudyOutcome, StudySettings, run_study
from bmlr.tuning.surface import SurfaceError, surface_from_study
from bmlr.tuning.surface_study import plan_surface, run_surface
from bmlr.tuning.staged import run_staged
from bmlr.tuning.compare import Comparison, ComparisonError, ComparisonOutcome, ComparisonSettings

__all__ = ["Arm", "Comparison", "ComparisonError", "ComparisonOutcome", "ComparisonSettings", "ExportError",
           "RECIPES", "Recipe", "ReportError", "SearchSpace", "SearchSpaceError", "StoreError", "StudyError",
           "StudyOutcome", "StudySettings", "StudyStore", "SurfaceError", "TrackingError", "choose_best",
           "export_run", "find_study", "get_recipe", "load_search_space", "parse_search_space", "plan_surface",
           "rank", "resolve_search_space", "run_staged", "run_study", "run_surface", "surface_from_study",
           "write_report"]
