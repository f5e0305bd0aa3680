"""MLflow tracking of a production run (`python -m bmlr.train`), with `MlflowClient` (no
global active run): the store is the one named by `--tracking-uri`, else
`MLFLOW_TRACKING_URI`, else the configuration's `source` (the study that exported it).

* one run per job, named `production <method> <dataset>` (and the trial's run name when the
  configuration reproduces a trial), in the study's experiment when the configuration came
  from that study's store (else `--experiment`, default `bmlr-train-<dataset>`): the
  configuration as params and `config.yaml`, the summary over seeds (`test_acc_mean`,
  `test_acc_std`, ...), `results.json`, tags `source_run_id`, `source_study`,
  `source_trial_id`, `source_experiment_id` and a description (`mlflow.note.content`) saying
  what it reproduces; FINISHED, or KILLED / FAILED when interrupted / failed;
* one nested run per seed (tag `mlflow.parentRunId`): the epoch metrics (step = epoch), the
  test metrics of the chosen epoch logged once, the checkpoint `model.pt` as an artifact and
  the chosen epoch as an MLflow model (:mod:`bmlr.model_logging`: ``mlflow.pytorch.log_model`` of a
  :class:`bmlr.predictor.Predictor`, with a signature naming each modality's tensor): the
  experiment's "Logged models", loaded back with ``mlflow.pytorch.load_model``;
* `--register NAME` (:meth:`ProductionRun.register`): the seed with the best validation
  accuracy registered as a new version of NAME in the Model Registry (test never chooses);
* MLflow's standard source tags (`mlflow.source.name`, `.type`, `.git.commit`, `mlflow.user`),
  and links back: the trial's run and its study's run get the tag `production_runs` (the ids
  of the production runs that reproduce them, newest last).

The store is checked before training (:func:`check_target`): a server that does not answer
or a study's store that is gone fails fast. Once training runs, a store that refuses a later
call is reported once and logging stops there: `results.json` and the checkpoints are the
results, MLflow holds a copy. Ctrl-C (and SIGTERM or SIGHUP, which `bmlr.train` routes to the
Ctrl-C handler) is held while a call to the store runs and raised when it returns
(:func:`interrupts_held`): an interrupt inside a SQLite transaction leaves the store locked, and
the job's run could not then be ended KILLED.

A process killed outright (kill -9, the OOM killer, a power loss) cannot end its runs. The job's
run carries its process as tags: `bmlr.pid`, `bmlr.host` and, on Linux, `bmlr.machine_id`,
`bmlr.boot_id`, `bmlr.pid_ns` and `bmlr.pid_start` (the installation, the boot, the PID
namespace, the start time: a pid reused by a later process is not mistaken for it). Each
production run that opens a store ends as KILLED the production runs of this host left RUNNING
there by a process that is demonstrably gone (:func:`end_abandoned_runs`: pid not running, or
now another process, or the host rebooted), their RUNNING seed runs too, each tagged
`bmlr.ended_by` with why, and prints one line naming them. Runs of another host (another host
name or machine id), of another PID namespace (a container with the same host name) or without
these tags (older versions) are left alone: whether their process runs cannot be told from here.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bmlr.abandoned_runs import end_abandoned_runs, process_gone, process_tags  # noqa: F401  (re-exported)
from bmlr.config import Config
from bmlr.interrupts import interrupts_held, stderr_line
from bmlr.mlflow_store import (TrackingError, check_reachable, check_store, client_for,
                               get_or_create_experiment, git_commit, source_tags)
from bmlr.model_logging import log_predictor, register_model

__all__ = ["Target", "resolve_target", "check_target", "ProductionRun", "Untracked", "open_run",
           "interrupts_held", "process_tags", "process_gone", "end_abandoned_runs", "stderr_line", "LINK_TAG"]

NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
SOURCE_TAGS = {"run_id": "source_run_id", "study": "source_study", "trial_id": "source_trial_id",
               "experiment_id": "source_experiment_id", "parent_run_id": "source_parent_run_id",
               "run_name": "source_run_name", "tracking_uri": "source_tracking_uri"}
LINK_TAG = "production_runs"  # on a trial's and a study's run: the production runs reproducing them
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the checkout (git_commit: None when installed)


@dataclass
class Target:
    """Where a production run logs: the store ``uri`` (named by ``origin``: an option, a
    variable or the configuration's source) and an experiment name (None: the source's
    experiment where the store is the source's, else ``bmlr-train-<dataset>``). A store named
    by a source ``must_exist``: the study's, never a new empty one."""
    uri: str
    origin: str
    experiment: str | None = None
    must_exist: bool = False


def resolve_target(cfg: Config, tracking_uri: str | None = None, experiment: str | None = None,
                   no_mlflow: bool = False) -> Target | None:
    """The store to log to: ``tracking_uri`` (the flag), else ``$MLFLOW_TRACKING_URI``, else
    the configuration's ``source``; None with ``no_mlflow`` or where no store is known. The
    experiment: ``experiment`` (the flag), else ``$MLFLOW_EXPERIMENT_NAME`` as MLflow reads it."""
    if no_mlflow:
        return None
    experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or None
    if tracking_uri:
        return Target(tracking_uri, "--tracking-uri", experiment)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return Target(os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI", experiment)
    uri = (cfg.source or {}).get("tracking_uri")
    if uri:
        return Target(uri, "the configuration's source.tracking_uri", experiment, must_exist=True)
    return None


def check_target(target: Target) -> None:
    """TrackingError, before anything is trained, where the store cannot be used: a server that
    does not answer; for a store named by the configuration's source, also one that no longer
    exists (a new, empty database would hold no study to link to)."""
    if target.must_exist:
        check_store(target.uri, target.origin, hint="pass --tracking-uri with the study's store, or --no-mlflow")
    else:
        check_reachable(target.uri)


def _params(cfg: Config) -> dict[str, str]:
    """The configuration as MLflow params (lists and mappings as YAML flow text); `source` is
    in the tags."""
    out = {}
    for key, value in cfg.to_dict().items():
        if key == "source":
            continue
        text = yaml.safe_dump(value, default_flow_style=True).strip() if isinstance(value, (list, dict)) else str(value)
        out[key] = text.removesuffix("\n...")[:6000]
    return out


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _note(cfg: Config) -> str:
    src = cfg.source or {}
    plan = f"{len(cfg.seeds)} seed(s) {list(cfg.seeds)} x {cfg.epochs} epochs, test read once per seed"
    if "run_id" not in src:
        return f"Production run of {cfg.method} on {cfg.dataset}: {plan}."
    trial = f"trial {src['trial_id']} " if "trial_id" in src else ""
    study = f" of study {src['study']}" if "study" in src else ""
    return (f"**Production run** reproducing {trial}(run {src['run_id']}){study}, "
            f"{src.get('run_name', '')}: {plan}.")


def _experiment_id(target: Target, cfg: Config) -> str:
    """The study's experiment (the source's, in the same store), else the named one."""
    src = cfg.source or {}
    if target.experiment is None and src.get("experiment_id") and src.get("tracking_uri") == target.uri:
        experiment = client_for(target.uri).get_experiment(src["experiment_id"])
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment {src['experiment_id']} of study {src.get('study', '?')} is deleted at "
                                f"{target.uri}; restore it or pass --experiment")
        return src["experiment_id"]
    return get_or_create_experiment(target.uri, target.experiment or f"bmlr-train-{cfg.dataset}")


class ProductionRun:
    """The job's MLflow run and its seeds' nested runs."""

    def __init__(self, uri: str, experiment_id: str, run_id: str) -> None:
        self.uri, self.experiment_id, self.run_id = uri, experiment_id, run_id
        self.client = client_for(uri)
        self.seed_runs: dict[int, str] = {}
        self.seed_models: dict[int, str] = {}  # seed -> the model URI of its logged MLflow model
        self.stopped = False  # a store call failed: no more logging

    @classmethod
    def open(cls, target: Target, cfg: Config, config_file: str | None) -> "ProductionRun":
        """Create the job's run (its experiment if new), tagged with this process
        (:func:`process_tags`), then end the store's runs left RUNNING by a process that is gone
        (:func:`end_abandoned_runs`); TrackingError where the store refuses."""
        src = cfg.source or {}
        name = f"production {cfg.method} {cfg.dataset}" + (f" {src['run_name']}" if src.get("run_name") else "")
        tags = {"dataset": cfg.dataset, "method": cfg.method, "run_kind": "production", NOTE_TAG: _note(cfg)}
        tags.update({tag: src[key] for key, tag in SOURCE_TAGS.items() if src.get(key)})
        tags.update(process_tags())
        tags.update(source_tags(git_commit(PACKAGE_ROOT), "bmlr-train"))
        if config_file:
            tags["config_file"] = str(config_file)
        try:
            experiment_id = _experiment_id(target, cfg)
            run = client_for(target.uri).create_run(experiment_id, run_name=name, tags=tags)
        except TrackingError:
            raise
        except Exception as err:  # any store error: before training, with the store named
            raise TrackingError(f"MLflow store {target.uri} ({target.origin}) refused the production run: "
                                f"{type(err).__name__}: {err}") from None
        job = cls(target.uri, experiment_id, run.info.run_id)
        job._call(job._log_config, cfg)
        print(f"MLflow: {target.uri} ({target.origin}) experiment {experiment_id} run {job.run_id}", flush=True)
        if src.get("tracking_uri") == target.uri:
            job.link_sources([src.get("run_id"), src.get("parent_run_id")])
        end_abandoned_runs(target.uri)
        return job

    def _call(self, fn, *args) -> None:
        """``fn(*args)`` unless logging stopped; a failure is reported once and stops logging
        (training goes on: results.json holds everything MLflow would)."""
        if self.stopped:
            return
        try:
            with interrupts_held():
                fn(*args)
        except Exception as err:  # the store refused (server gone, disk full): say so, keep training
            self.stopped = True
            stderr_line(f"warning: MLflow logging stopped ({type(err).__name__}: {err}); run {self.run_id} at "
                  f"{self.uri} is incomplete, results.json is not")

    def _log_config(self, cfg: Config) -> None:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in _params(cfg).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_text(self.run_id, cfg.to_yaml(), "config.yaml")

    def folder(self, run_dir: Path) -> None:
        """Tag the run with its folder on disk."""
        self._call(self.client.set_tag, self.run_id, "run_dir", str(run_dir))

    def seed_started(self, seed: int) -> None:
        def create() -> None:
            run = self.client.create_run(self.experiment_id, run_name=f"seed {seed}",
                                         tags={"mlflow.parentRunId": self.run_id, "seed": str(seed),
                                               "run_kind": "production_seed"})
            self.seed_runs[seed] = run.info.run_id
        self._call(create)

    def epoch(self, seed: int, metrics: dict[str, Any]) -> None:
        """One epoch's metrics of ``seed`` at step = epoch."""
        if seed in self.seed_runs:
            self._call(self._log_metrics, self.seed_runs[seed], _numbers(
                {k: v for k, v in metrics.items() if k != "epoch"}), int(metrics["epoch"]))

    def _log_metrics(self, run_id: str, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, v, ts, step) for k, v in values.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    def link_sources(self, run_ids: list[str | None]) -> None:
        """Add this run's id to the tag :data:`LINK_TAG` of each run of ``run_ids`` (the trial
        and its study); a run this store does not hold is left alone, with a warning."""
        for run_id in filter(None, run_ids):
            try:
                with interrupts_held():
                    before = self.client.get_run(run_id).data.tags.get(LINK_TAG, "")
                    self.client.set_tag(run_id, LINK_TAG, ",".join(filter(None, [before, self.run_id])))
            except Exception as err:  # a source run deleted since the export: the link is lost, not the job
                stderr_line(f"warning: run {run_id} not linked to production run {self.run_id}: "
                            f"{type(err).__name__}: {err}")

    def seed_finished(self, seed: int, result: dict[str, Any], model_path: Path,
                      predictor: Any = None, example: tuple[Any, Any] | None = None) -> None:
        """The seed's test metrics (once), its best epoch, its checkpoint and its MLflow model
        (``predictor``, signed from ``example``: inputs and outputs as numpy); the seed run FINISHED."""
        run_id = self.seed_runs.get(seed)
        if run_id is None:
            return
        values = {f"test_{k}": v for k, v in _numbers(result["test"]).items()}  # the epochs carry best_val_acc
        values["best_epoch"] = float(result["best_epoch"])
        self._call(self._log_metrics, run_id, values, int(result["best_epoch"]))
        self._call(self.client.log_artifact, run_id, str(model_path))
        if predictor is not None:
            self._call(self._log_model, seed, run_id, predictor, example)
        self._call(self.client.set_terminated, run_id, "FINISHED")

    def _log_model(self, seed: int, run_id: str, predictor: Any, example: tuple[Any, Any] | None) -> None:
        self.seed_models[seed] = log_predictor(self.uri, run_id, predictor, example, {"seed": str(seed)})

    def register(self, name: str, results: dict[str, Any]) -> str:
        """Register the model of the seed with the best validation accuracy (the first on a tie)
        as a new version of ``name``, tag the job's run `registered_model`; returns a line saying
        which. TrackingError where no seed's model was logged or the registry refuses."""
        logged = [r for r in results.get("seeds", []) if r["seed"] in self.seed_models]
        if not logged:
            raise TrackingError(f"--register {name}: no seed's model reached MLflow (run {self.run_id} at {self.uri})")
        best = max(logged, key=lambda r: r["val"]["acc"])
        try:
            with interrupts_held():
                version = register_model(self.uri, self.seed_models[best["seed"]], name)
                self.client.set_tag(self.run_id, "registered_model", f"{name}/{version}")
        except Exception as err:
            raise TrackingError(f"--register {name}: the Model Registry at {self.uri} refused seed {best['seed']}'s "
                                f"model: {type(err).__name__}: {err}") from None
        return (f"registered: models:/{name}/{version} (seed {best['seed']}, best validation accuracy "
                f"{best['val']['acc']:.4f} of seeds {[r['seed'] for r in logged]})")

    def end(self, results: dict[str, Any], results_path: Path | None, status: str) -> None:
        """The summary over the finished seeds, results.json, the job's status (FINISHED,
        KILLED, FAILED); seed runs still open end with the same status."""
        finished = {r["seed"] for r in results.get("seeds", [])}
        for seed, run_id in self.seed_runs.items():
            if seed not in finished:
                self._call(self.client.set_terminated, run_id, status)
        summary = {f"{key}_{stat}": value for key, stats in results.get("summary", {}).items()
                   for stat, value in stats.items()}
        if summary:
            self._call(self._log_metrics, self.run_id, _numbers(summary), 0)
        if results_path is not None and results_path.is_file():
            self._call(self.client.log_artifact, self.run_id, str(results_path))
        self._call(self.client.set_terminated, self.run_id, status)


class Untracked:
    """No MLflow: the same calls as :class:`ProductionRun`, doing nothing."""

    def folder(self, run_dir: Path) -> None:
        pass

    def seed_started(self, seed: int) -> None:
        pass

    def epoch(self, seed: int, metrics: dict[str, Any]) -> None:
        pass

    def seed_finished(self, seed: int, result: dict[str, Any], model_path: Path,
                      predictor: Any = None, example: tuple[Any, Any] | None = None) -> None:
        pass

    def end(self, results: dict[str, Any], results_path: Path | None, status: str) -> None:
        pass


def open_run(target: Target | None, cfg: Config, config_file: str | None = None) -> ProductionRun | Untracked:
    """The job's run at ``target`` (checked first), or :class:`Untracked` without one."""
    if target is None:
        return Untracked()
    check_target(target)
    return ProductionRun.open(target, cfg, config_file)
