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
  test metrics of the chosen epoch logged once, and the checkpoint `model.pt` as an artifact.

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

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from bmlr.config import Config
from bmlr.mlflow_store import (TrackingError, check_reachable, check_store, client_for,
                               get_or_create_experiment)

__all__ = ["Target", "resolve_target", "check_target", "ProductionRun", "Untracked", "open_run",
           "interrupts_held", "process_tags", "process_gone", "end_abandoned_runs", "stderr_line"]

NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
SOURCE_TAGS = {"run_id": "source_run_id", "study": "source_study", "trial_id": "source_trial_id",
               "experiment_id": "source_experiment_id", "parent_run_id": "source_parent_run_id",
               "run_name": "source_run_name", "tracking_uri": "source_tracking_uri"}


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

    def seed_finished(self, seed: int, result: dict[str, Any], model_path: Path) -> None:
        """The seed's test metrics (once), its best epoch, its checkpoint; the seed run FINISHED."""
        run_id = self.seed_runs.get(seed)
        if run_id is None:
            return
        values = {f"test_{k}": v for k, v in _numbers(result["test"]).items()}  # the epochs carry best_val_acc
        values["best_epoch"] = float(result["best_epoch"])
        self._call(self._log_metrics, run_id, values, int(result["best_epoch"]))
        self._call(self.client.log_artifact, run_id, str(model_path))
        self._call(self.client.set_terminated, run_id, "FINISHED")

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

    def seed_finished(self, seed: int, result: dict[str, Any], model_path: Path) -> None:
        pass

    def end(self, results: dict[str, Any], results_path: Path | None, status: str) -> None:
        pass


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Within the block, a first Ctrl-C is held and handed to the Ctrl-C handler in place once
    the block ends; a second one is handed on at once (a store that hangs can still be left).
    Why: KeyboardInterrupt raised inside an MLflow call can stop a SQLite transaction halfway
    and leave the database locked, so the calls that end the runs KILLED would fail. Off the
    main thread, or where Ctrl-C has no Python handler, it does nothing."""
    handler = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(handler):
        yield
        return
    held: list[int] = []

    def hold(signum, frame) -> None:
        if held:
            handler(signum, frame)
        held.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
    if held:
        handler(signal.SIGINT, None)


def open_run(target: Target | None, cfg: Config, config_file: str | None = None) -> ProductionRun | Untracked:
    """The job's run at ``target`` (checked first), or :class:`Untracked` without one."""
    if target is None:
        return Untracked()
    check_target(target)
    return ProductionRun.open(target, cfg, config_file)


def stderr_line(line: str) -> None:
    """One line on stderr; nothing where stderr is gone (a closed terminal: SIGHUP), so that what
    follows (ending the runs) still happens."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


# --- runs left RUNNING by a process killed outright -------------------------------------------
PID_TAG, HOST_TAG, BOOT_TAG = "bmlr.pid", "bmlr.host", "bmlr.boot_id"
PIDNS_TAG, START_TAG, MACHINE_TAG = "bmlr.pid_ns", "bmlr.pid_start", "bmlr.machine_id"
ENDED_BY_TAG = "bmlr.ended_by"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of process ``pid`` from Linux's /proc;
    None where there is no such process or no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime 22
    return fields[0], fields[19]


def _here() -> dict[str, str]:
    """This machine's installation and boot and this process's PID namespace, where Linux tells them."""
    out = {}
    with contextlib.suppress(OSError):
        out[MACHINE_TAG] = Path("/etc/machine-id").read_text().strip()
    with contextlib.suppress(OSError):
        out[BOOT_TAG] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with contextlib.suppress(OSError):
        out[PIDNS_TAG] = os.readlink("/proc/self/ns/pid")
    return out


def process_tags() -> dict[str, str]:
    """This process as tags on the job's run: pid, host, and (Linux) boot, PID namespace, start time."""
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), **_here()}
    stat = _proc_stat(os.getpid())
    if stat:
        tags[START_TAG] = stat[1]
    return tags


def process_gone(tags: dict[str, str]) -> str | None:
    """Why the process named by a run's :func:`process_tags` is demonstrably gone, or None where
    it may still run or cannot be seen from here (another host, another PID namespace, no tags)."""
    pid, host = tags.get(PID_TAG, ""), tags.get(HOST_TAG)
    if not pid.isdigit() or host != socket.gethostname():
        return None
    here = _here()
    if tags.get(MACHINE_TAG) != here.get(MACHINE_TAG):
        return None  # another machine with the same host name, or one that cannot be told apart
    if tags.get(BOOT_TAG) and here.get(BOOT_TAG) and tags[BOOT_TAG] != here[BOOT_TAG]:
        return f"its host {host} restarted since its process {pid} started"
    if tags.get(PIDNS_TAG) != here.get(PIDNS_TAG):
        return None  # a container with the same host name: its processes are not visible here
    stat = _proc_stat(int(pid))
    if stat is None:  # not in /proc (or no /proc, or hidden there): ask the kernel
        alive = _exists(int(pid))
    else:  # a zombie is gone; a later start time: the pid was reused
        alive = stat[0] != "Z" and (not tags.get(START_TAG) or stat[1] == tags[START_TAG])
    return None if alive else f"its process {pid} on {host} was gone"


def _exists(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end it there: cannot tell
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it exists
        return True
    return True


def end_abandoned_runs(uri: str) -> list[str]:
    """End as KILLED the production runs of the store ``uri`` left RUNNING by a process of this
    host that is gone (:func:`process_gone`), their RUNNING seed runs too, each tagged
    `bmlr.ended_by`; prints one line naming them. Returns their run ids. Never fails the caller:
    a store that refuses is reported in one warning line."""
    ended: dict[str, str] = {}  # run id -> why and where
    try:
        with interrupts_held():
            client = client_for(uri)
            ids = [e.experiment_id for e in client.search_experiments()]
            query = (f"tags.run_kind = 'production' and attributes.status = 'RUNNING' "
                     f"and tags.`{HOST_TAG}` = '{socket.gethostname()}'")
            for i in range(0, len(ids), 100):
                for run in client.search_runs(ids[i:i + 100], filter_string=query, max_results=1000):
                    why = process_gone(run.data.tags)
                    if why:
                        _end_killed(client, run, f"ended as KILLED on next use: {why}")
                        ended[run.info.run_id] = f"{why}; folder {run.data.tags.get('run_dir', '?')}"
    except Exception as err:  # the store refused: the new run goes on
        stderr_line(f"warning: could not look for runs left RUNNING at {uri} ({type(err).__name__}: {err})")
    if ended:
        print(f"MLflow: ended as KILLED {len(ended)} production run(s) left RUNNING by a process that is gone: "
              + "; ".join(f"{run_id} ({why})" for run_id, why in ended.items()), flush=True)
    return list(ended)


def _end_killed(client, run, why: str) -> None:
    """``run`` and its RUNNING seed runs KILLED, tagged with ``why``."""
    seeds = client.search_runs([run.info.experiment_id], max_results=1000, filter_string=(
        f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and attributes.status = 'RUNNING'"))
    for r in [*seeds, run]:
        client.set_tag(r.info.run_id, ENDED_BY_TAG, why)
        client.set_terminated(r.info.run_id, "KILLED")
