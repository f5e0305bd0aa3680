"""MLflow tracking of a study: the one place in :mod:`bmlr.tuning` that calls MLflow.

* :mod:`~bmlr.tuning.tracking.runs` - a study's parent run and its trial runs
  (:class:`StudyRuns`): created, reopened, tagged, synced with the trials table, the winner
  marked, ended;
* :mod:`~bmlr.tuning.tracking.trial_logger` - the Ray Tune callback that writes one nested run
  per trial while the study runs;
* :mod:`~bmlr.tuning.tracking.comparison` - a comparison's parent run and its rows' runs
  (imported from there: it reads the comparison's row records).

The store itself (URIs, the SQLite schema, experiments) is :mod:`bmlr.mlflow_store`, shared
with production tracking (:mod:`bmlr.production_tracking`).
"""
from bmlr.mlflow_store import (TrackingError, check_reachable, default_tracking_uri,  # noqa: F401
                               get_or_create_experiment, git_commit, source_tags)
from bmlr.tuning.tracking.runs import (StudyRuns, check_run, child_runs, create_parent_run, end_study_runs,
                                       log_artifacts_safely, log_epochs, log_metrics, log_params,
                                       logged_steps, mark_best, mark_lost_runs, save_table_view, trial_status)
from bmlr.tuning.tracking.trial_logger import MLflowTrialLogger

__all__ = ["StudyRuns", "MLflowTrialLogger", "TrackingError", "check_reachable", "check_run", "child_runs",
           "create_parent_run", "default_tracking_uri", "end_study_runs", "get_or_create_experiment", "git_commit",
           "log_artifacts_safely", "log_epochs", "log_metrics", "log_params", "logged_steps", "mark_best",
           "mark_lost_runs", "save_table_view", "source_tags", "trial_status"]
