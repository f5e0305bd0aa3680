"""A study's MLflow runs, owned here: the parent run (created, reopened on a resume, tagged,
given its artifacts, ended), its trial runs (read, synced with the trials table, the lost ones
deleted) and the winner's marks (:meth:`StudyRuns.mark_winner`). Nothing else in
:mod:`bmlr.tuning` calls MLflow; the modules around a study say what to record and this one
records it.

Written with `MlflowClient` (no global active run, no autologging). The parent run's tags
(`dataset`, `method`, `search_space`, `git_commit`, `study`, ...) and params (the settings) are
set when it is created; at the end the search space, `best.yaml` and `trials.csv` are its
artifacts and tags `best_run_id`, `best_trial_id`, `best_score` name the winner (no metric: the
parent never sorts among its trials). The trial runs are written by
:class:`bmlr.tuning.tracking.trial_logger.MLflowTrialLogger`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from bmlr.mlflow_store import BEST_MARK, TrackingError, client_for
from bmlr.tuning.run_view import NOTE_TAG, VIEW_TAG_PREFIX, plain_name, table_view, view_key
from bmlr.tuning.search_space import to_flat_params

__all__ = ["StudyRuns", "create_parent_run", "log_params", "trial_status", "child_runs",
           "end_study_runs", "log_epochs", "logged_steps", "mark_lost_runs", "mark_best", "save_table_view",
           "log_artifacts_safely", "log_metrics", "check_run"]

TAG_LIMIT = 5000  # the longest tag value written (MLflow's own limit is 8000)


def create_parent_run(uri: str, experiment_id: str, name: str, tags: dict[str, str],
                      params: dict[str, Any]) -> str:
    client = client_for(uri)
    run = client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()})
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    flat = to_flat_params(params)
    items = [Param(k, v[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def _now_ms() -> int:
    return int(time.time() * 1000)


def trial_status(last_epoch: int | None, max_epochs: int, errored: bool) -> str:
    if errored:
        return "failed"
    if last_epoch is not None and last_epoch < max_epochs:
        return "stopped_early"
    return "completed"


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    """trial id -> MLflow Run of the study's nested runs."""
    client = client_for(uri)
    runs = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        for run in page:
            trial_id = run.data.tags.get("trial_id")
            if trial_id:
                runs[trial_id] = run
        token = page.token
        if not token:
            return runs


def end_study_runs(uri: str, experiment_id: str, parent_run_id: str, status: str) -> None:
    """End the study's parent run and every trial run still RUNNING as ``status`` (a study
    that stopped on an error: its records could not be written)."""
    client = client_for(uri)
    for run in child_runs(uri, experiment_id, parent_run_id).values():
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status)
    client.set_terminated(parent_run_id, status)


def log_epochs(client, run_id: str, history: list[dict[str, Any]], ts: int) -> None:
    """Log epochs of a trial's history (dicts of finite numbers with ``epoch``) at step = epoch."""
    from mlflow.entities import Metric

    metrics = [Metric(k, float(v), ts, int(h["epoch"])) for h in history for k, v in h.items()
               if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i:i + 500])


def logged_steps(client, run_id: str, key: str = "val_acc") -> list[int]:
    """The steps of the run's metric ``key``, as logged (a step logged twice appears twice)."""
    return [m.step for m in client.get_metric_history(run_id, key)]


def mark_lost_runs(client, runs: list[Any]) -> int:
    """Tag the runs of trials Ray never saved (started just before a killed driver, after Ray's
    last snapshot; Ray samples a new trial in their place) as lost, end them KILLED and delete
    them (MLflow's soft delete: the study's runs are its trials, none twice; `mlflow runs
    restore --run-id` brings one back). Returns how many there are."""
    for run in runs:
        client.set_tag(run.info.run_id, "trial_status", "lost")
        client.set_tag(run.info.run_id, "note", "the driver died before Ray saved this trial; Ray sampled "
                                                "a new trial in its place")
        client.set_tag(run.info.run_id, "best_trial", "false")
        client.set_terminated(run.info.run_id, "KILLED")
        client.delete_run(run.info.run_id)
    return len(runs)


def log_artifacts_safely(uri: str, run_id: str, paths: list[Path], folder: str, log=print) -> bool:
    """Copy files written on disk to a run's artifacts under ``folder``. The files are the
    result; MLflow holds a copy, so a store that refuses them is reported, not raised.
    Returns whether every file was logged."""
    from mlflow.exceptions import MlflowException

    try:
        client = client_for(uri)
        for path in paths:
            client.log_artifact(run_id, str(path), folder)
    except (MlflowException, OSError) as err:
        log(f"note: could not log {folder}/ to MLflow run {run_id} at {uri} ({type(err).__name__}: {err})")
        return False
    return True

def log_metrics(client, run_id: str, values: dict[str, float], step: int = 0) -> None:
    """Log ``values`` (name -> number) at ``step``, in batches MLflow accepts."""
    from mlflow.entities import Metric

    now = _now_ms()
    metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i:i + 500])


def check_run(uri: str, run_id: str) -> None:
    """TrackingError where the run ``run_id`` is not in the store at ``uri``."""
    from mlflow.exceptions import MlflowException

    try:
        client_for(uri).get_run(run_id)
    except MlflowException as err:
        raise TrackingError(type(err).__name__) from None


def mark_best(client, runs: Iterable[Any], best_run_id: str | None, note: str) -> None:
    """Mark the run ``best_run_id`` among ``runs`` (MLflow Run objects) as the winner: its name
    led by :data:`BEST_MARK`, ``note`` as its description, tag ``best_trial`` true. Any other run
    loses an earlier marker and description (a resumed study's winner can change)."""
    for run in runs:
        run_id, name = run.info.run_id, run.info.run_name or ""
        is_best = run_id == best_run_id
        client.set_tag(run_id, "best_trial", str(is_best).lower())
        if is_best:
            if not name.startswith(BEST_MARK):
                client.update_run(run_id, name=BEST_MARK + name)
            client.set_tag(run_id, NOTE_TAG, note)
        elif name.startswith(BEST_MARK):
            client.update_run(run_id, name=plain_name(name))
            if NOTE_TAG in run.data.tags:
                client.delete_tag(run_id, NOTE_TAG)


def save_table_view(client, experiment_id: str, parent_run_id: str, sampled: Iterable[str], score: str) -> str:
    """Save :func:`~bmlr.tuning.run_view.table_view` as the experiment's shared view for this
    study; returns its key."""
    key = view_key(parent_run_id)
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key,
                              json.dumps(table_view(parent_run_id, sampled, score)))
    return key


@dataclass
class StudyRuns:
    """A study's parent run (``parent_run_id`` in experiment ``experiment_id`` at ``uri``) and
    the trial runs nested under it."""

    uri: str
    experiment_id: str
    parent_run_id: str

    @property
    def client(self):
        return client_for(self.uri)

    @classmethod
    def create(cls, uri: str, experiment_id: str, name: str, tags: dict[str, Any],
               params: dict[str, Any]) -> "StudyRuns":
        return cls(uri, experiment_id, create_parent_run(uri, experiment_id, name, tags, params))

    # --- the parent run ------------------------------------------------------------------
    def reopen(self, count: bool = True) -> None:
        """The parent run is running again (a resume; with ``count``, its tag ``resumed`` + 1)."""
        self.client.update_run(self.parent_run_id, status="RUNNING")
        if count:
            resumed = int(self.tags().get("resumed", "0")) + 1
            self.client.set_tag(self.parent_run_id, "resumed", str(resumed))

    def status(self) -> str:
        return self.client.get_run(self.parent_run_id).info.status

    def tags(self) -> dict[str, str]:
        return self.client.get_run(self.parent_run_id).data.tags

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.parent_run_id, key, str(value)[:TAG_LIMIT])

    def log_metrics(self, values: dict[str, float]) -> None:
        log_metrics(self.client, self.parent_run_id, values)

    def log_artifacts(self, paths: Iterable[Path], folder: str | None = None) -> None:
        for path in paths:
            self.client.log_artifact(self.parent_run_id, str(path), folder)

    def end(self, status: str) -> None:
        """End the parent run: FINISHED, KILLED (interrupted; a resume reopens it) or FAILED."""
        self.client.set_terminated(self.parent_run_id, status)

    def end_all(self, status: str) -> None:
        """End the parent run and every trial run still RUNNING as ``status``."""
        end_study_runs(self.uri, self.experiment_id, self.parent_run_id, status)

    # --- the trial runs ----------------------------------------------------------------
    def trials(self) -> dict[str, Any]:
        """trial id -> MLflow Run of the study's trial runs."""
        return child_runs(self.uri, self.experiment_id, self.parent_run_id)

    def runs(self, run_ids: Iterable[str]) -> list[Any]:
        return [self.client.get_run(run_id) for run_id in run_ids]

    def mark_lost(self, runs: list[Any]) -> int:
        return mark_lost_runs(self.client, runs)

    def sync_trial(self, run, status: str, epochs: int, missing: list[dict[str, Any]]) -> None:
        """Make a trial's run match its row: the epochs ``missing`` from MLflow logged, its end
        state (FINISHED, FAILED; KILLED for a trial cut off) and its status tags."""
        run_id = run.info.run_id
        if missing:
            log_epochs(self.client, run_id, missing, _now_ms())
        end = {"interrupted": "KILLED", "failed": "FAILED"}.get(status, "FINISHED")
        if run.info.status != end or run.data.tags.get("trial_status") != status or missing:
            self.client.set_tag(run_id, "trial_status", status)
            self.client.set_tag(run_id, "epochs_trained", str(epochs))
            self.client.set_tag(run_id, "early_stopped", str(status == "stopped_early").lower())
            self.client.set_terminated(run_id, end)

    def logged_epochs(self, run_id: str) -> list[int]:
        return logged_steps(self.client, run_id)

    def mark_winner(self, runs: Iterable[Any], best: dict[str, Any], note: str, **tags: Any) -> None:
        """The winner's run marked among ``runs`` (name, description, tag ``best_trial``) and the
        parent's tags that name it (``best_run_id``, ``best_trial_id``, ``best_score``, and
        ``tags``)."""
        mark_best(self.client, runs, best.get("run_id"), note)
        self.set_tags({"best_run_id": best.get("run_id") or "", "best_trial_id": best["trial_id"],
                       "best_score": f"{float(best['score']):.6g}", **tags})

    def end_running(self, filter_string: str, trial_status: str) -> None:
        """End the experiment's runs that match ``filter_string`` and still run as KILLED, with
        tag ``trial_status`` (a confirmation stage that was interrupted)."""
        running = self.client.search_runs([self.experiment_id], f"{filter_string} and attributes.status = 'RUNNING'")
        for run in running:
            self.client.set_tag(run.info.run_id, "trial_status", trial_status)
            self.client.set_terminated(run.info.run_id, "KILLED")

    def save_table_view(self, sampled: Iterable[str], score: str) -> str:
        return save_table_view(self.client, self.experiment_id, self.parent_run_id, sampled, score)
