"""The trial runs of a study: a Ray Tune callback that opens one MLflow run per trial, nested
under the study's parent run (tag `mlflow.parentRunId`, which the MLflow UI nests), named by
what was sampled (:func:`bmlr.tuning.run_view.trial_run_name`; the winner's name marked):

* the sampled keys and the whole trial configuration as params (its `epochs` is the production
  run's, the learning-rate schedule's horizon; param `max_epochs` is where the trial stops),
  `config.yaml` (that configuration) as an artifact;
* one metric point per epoch (step = epoch, never logged twice; epochs a killed driver missed
  come from the trial's `history.json`);
* its final status (FINISHED / FAILED / KILLED) and tags `trial_status` (completed,
  stopped_early, failed, interrupted; lost: deleted, see
  :func:`bmlr.tuning.tracking.runs.mark_lost_runs`), `early_stopped` (true when ASHA stopped it
  before `--max-epochs`), `epochs_trained`, `error` for failed trials and `best_trial` (true on
  the best, which also gets a description, `mlflow.note.content`, saying why it won);
* tags `export.epochs` / `export.seeds`: the production settings, so `bmlr-tune export
  --run-id` rebuilds a production YAML from any trial run.

A Tune callback runs in the driver; Tune pickles it into the experiment state,
so it holds only plain data and opens its MLflow client lazily.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from bmlr.mlflow_store import client_for
from bmlr.tuning.remote import store_here
from bmlr.tuning.run_view import trial_run_name
from bmlr.tuning.store import history_path, read_history
from bmlr.tuning.tracking.runs import log_epochs, log_params, trial_status

__all__ = ["MLflowTrialLogger", "RAY_KEYS", "STATE_GRACE_S"]

# Keys Ray adds to every result: not metrics of ours.
RAY_KEYS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
            "time_total_s", "pid", "hostname", "node_ip", "config", "time_since_restore",
            "iterations_since_restore", "experiment_tag", "should_checkpoint", "time_this_iter_s",
            "warmup_time", "experiment_id"}
# Ray snapshots the experiment every few seconds (TUNE_GLOBAL_CHECKPOINT_S, set by the study);
# a trial's state file is kept this long after the trial ended.
STATE_GRACE_S = 60.0


class MLflowTrialLogger(Callback):
    """Nested MLflow run per trial under the study's parent run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, base_config: dict,
                 max_epochs: int, export_epochs: int, export_seeds: list[int], study: str,
                 state_dir: str | None = None, extras_dir: str | None = None, order: list[str] | None = None,
                 confirms: dict[str, str | None] | None = None, mirror=None):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.base_config = dict(base_config)
        self.max_epochs = int(max_epochs)
        self.export_epochs = int(export_epochs)
        self.export_seeds = list(export_seeds)
        self.study = study
        self.state_dir = state_dir
        self.extras_dir = extras_dir  # the trials' history.json files (bmlr.tuning.store.history_path)
        self.order = list(order or [])  # the searched keys in the search space's order (run names)
        # a confirmation stage (bmlr.tuning.confirm): trial config `name` -> the run of the search
        # trial it confirms, under which its runs nest
        self.confirms = dict(confirms or {})
        self.mirror = mirror  # object storage (bmlr.tuning.remote.Mirror): histories pulled, states deleted there too
        self._reset()

    def _reset(self) -> None:
        self._client = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._last_step: dict[str, int] = {}  # run id -> last epoch logged
        self._last_epoch: dict[str, int] = {}  # trial id -> last epoch reported
        self._ended: dict[str, float] = {}  # trial id -> when it ended (its state goes later)

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in ("_client", "_runs", "_last_step", "_last_epoch", "_ended"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update({"order": [], "confirms": {}, "mirror": None, **state})  # pickled before those keys
        if self.mirror is not None:  # Ray restores the logger it pickled, maybe on another machine: this one's copy
            self.state_dir = self.state_dir and str(self.mirror.here(self.state_dir))
            self.extras_dir = self.extras_dir and str(self.mirror.here(self.extras_dir))
            self.tracking_uri = store_here(self.mirror.storage, self.tracking_uri)
        self._reset()

    @property
    def client(self):
        if self._client is None:
            self._client = client_for(self.tracking_uri)
        return self._client

    # --- runs ---------------------------------------------------------------------
    def find_run(self, trial_id: str, parent_run_id: str | None = None) -> str | None:
        parent = parent_run_id or self.parent_run_id
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.trial_id = '{trial_id}'",
            max_results=1)
        return runs[0].info.run_id if runs else None

    def new_run(self, trial) -> tuple[str, dict[str, str]]:
        """A new trial run's name and tags: nested under the study's parent run, named by what
        was sampled; a confirmation's run nested under the trial it confirms."""
        config = dict(trial.config)
        tags = {"mlflow.parentRunId": self.parent_run_id, "trial_id": trial.trial_id, "study": self.study,
                "trial_status": "running", "export.epochs": str(self.export_epochs),
                "export.seeds": yaml.safe_dump(self.export_seeds, default_flow_style=True).strip()}
        name = str(config.get("name") or "")
        if name not in self.confirms:
            return trial_run_name(config, self.order), tags
        confirmed = name.removeprefix("confirm-")
        tags.update({"confirmation_of": confirmed, "bmlr.role": "confirmation", "seed": str(config["seeds"][0])})
        if self.confirms[name]:
            tags["mlflow.parentRunId"] = self.confirms[name]
        return f"confirm {confirmed} seed {config['seeds'][0]}", tags

    def run_for(self, trial) -> str:
        trial_id = trial.trial_id
        if trial_id in self._runs:
            return self._runs[trial_id]
        run_id = self.find_run(trial_id, self.confirms.get(str(dict(trial.config).get("name") or "")))
        if run_id is None:
            name, tags = self.new_run(trial)
            run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
            run_id = run.info.run_id
            config = {**self.base_config, **dict(trial.config)}
            # `epochs` is the production run's (the schedule's horizon); the trial stops after max_epochs
            log_params(self.client, run_id, {**config, "max_epochs": self.max_epochs})
            self.client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
            self.client.set_tag(run_id, "sampled", ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items()))
            self._last_step[run_id] = 0
        else:  # a resumed study: continue the trial's run, never log an epoch twice
            history = self.client.get_metric_history(run_id, "val_acc")
            self._last_step[run_id] = max((m.step for m in history), default=0)
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "trial_status", "running")
        if getattr(trial, "path", None):  # None before Ray has given the trial its storage
            self.client.set_tag(run_id, "trial_dir", str(trial.path))
        self._runs[trial_id] = run_id
        return run_id

    # --- Tune hooks -----------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        run_id = self.run_for(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        self._last_epoch[trial.trial_id] = max(epoch, self._last_epoch.get(trial.trial_id, 0))
        if epoch <= self._last_step.get(run_id, 0):
            return  # already logged before the study was interrupted
        # epochs trained before a restore that MLflow missed (the driver died before it logged
        # them) come from the trial's history.json, the rest from this result
        last = self._last_step.get(run_id, 0)  # only a gap needs the history (on object storage: a download)
        earlier = [h for h in self._history(trial.trial_id) if last < h["epoch"] < epoch] if epoch > last + 1 else []
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, epoch) for k, v in result.items()
                   if k not in RAY_KEYS and k != "epoch" and isinstance(v, (int, float))
                   and not isinstance(v, bool)]
        if "time_this_iter_s" in result:
            metrics.append(Metric("epoch_seconds", float(result["time_this_iter_s"]), ts, epoch))
        log_epochs(self.client, run_id, earlier, ts)
        for i in range(0, len(metrics), 500):
            self.client.log_batch(run_id, metrics=metrics[i:i + 500])
        self._last_step[run_id] = epoch

    def _history(self, trial_id: str) -> list[dict[str, Any]]:
        if not self.extras_dir:
            return []
        path = history_path(self.extras_dir, trial_id)
        if self.mirror is not None:  # the trial may have run on another node: its upload is the record
            self.mirror.get(path)
        return read_history(path) or []

    def _last_epoch_of(self, trial) -> int | None:
        """The last epoch the trial trained: its history.json, else what it reported."""
        history = self._history(trial.trial_id)
        if history:
            return int(history[-1]["epoch"])
        if trial.trial_id in self._last_epoch:
            return self._last_epoch[trial.trial_id]
        last = trial.last_result or {}
        return int(last["epoch"]) if "epoch" in last else None

    def _log_missing(self, trial, run_id: str) -> None:
        """The epochs of the trial's history.json MLflow lacks (a trial restored after its last
        epoch reports nothing again)."""
        last = self._last_step.get(run_id, 0)
        missing = [h for h in self._history(trial.trial_id) if h["epoch"] > last]
        if missing:
            log_epochs(self.client, run_id, missing, int(time.time() * 1000))
            self._last_step[run_id] = int(missing[-1]["epoch"])

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_for(trial)
        self._log_missing(trial, run_id)
        last_epoch = self._last_epoch_of(trial)
        status = trial_status(last_epoch, self.max_epochs, errored=False)
        self.client.set_tag(run_id, "trial_status", status)
        self.client.set_tag(run_id, "early_stopped", str(status == "stopped_early").lower())
        self.client.set_tag(run_id, "epochs_trained", str(last_epoch or 0))
        self.client.set_terminated(run_id, "FINISHED")
        self._drop_state(trial)

    def _drop_state(self, trial) -> None:
        """Forget the trial's Trainer state once Ray's experiment snapshot surely knows the
        trial ended (a driver killed before that snapshot restarts the trial, which then
        continues from this state instead of starting over)."""
        if self.state_dir:
            self._ended[trial.trial_id] = time.monotonic()

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        for trial_id, ended in list(self._ended.items()):
            if now - ended > STATE_GRACE_S:
                Path(self.state_dir, f"trial_{trial_id}.pt").unlink(missing_ok=True)
                if self.mirror is not None:
                    self.mirror.delete(Path(self.state_dir, f"trial_{trial_id}.pt"))
                del self._ended[trial_id]

    def on_trial_recover(self, iteration, trials, trial, **info):
        run_id = self.run_for(trial)
        retries = int(getattr(trial.run_metadata, "num_failures", 0) or 0)
        self.client.set_tag(run_id, "trial_status", "retrying")
        self.client.set_tag(run_id, "retries", str(retries))
        self.client.set_tag(run_id, "last_error", _error_text(trial)[:4000])

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_for(trial)
        self._log_missing(trial, run_id)
        self.client.set_tag(run_id, "trial_status", "failed")
        self.client.set_tag(run_id, "early_stopped", "false")
        self.client.set_tag(run_id, "epochs_trained", str(self._last_epoch_of(trial) or 0))
        self.client.set_tag(run_id, "error", _error_text(trial)[:4000])
        self.client.set_terminated(run_id, "FAILED")
        self._drop_state(trial)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _error_text(trial) -> str:
    """The last line of the trial's error (e.g. 'FloatingPointError: training loss became nan ...')."""
    path = getattr(trial, "error_file", None)
    try:
        if path and os.path.isfile(path):
            lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
            errors = [line for line in lines if "Error" in line.split(":")[0]]
            return (errors or lines or ["error"])[-1].strip()
    except OSError as err:  # the file went away or cannot be read
        return f"trial raised an error ({path} cannot be read: {err})"
    return "trial raised an error (see the trial's error.txt)"


