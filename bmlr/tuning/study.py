"""Run (or resume) one tuning study: checks, data cache, MLflow parent run, Ray Tune
(Optuna TPE + ASHA, or a grid), then the trials table, `best.yaml`, a summary, the references
(the method untuned and the baseline, :mod:`bmlr.tuning.references`) and the report.

Study folder `<storage>/<dataset>/<name>/` (owned by :class:`bmlr.tuning.store.StudyStore`):

    study.json          settings, MLflow tracking URI, experiment and parent run id
    search_space.yaml   the search space as used (a resumed study reuses this copy,
                        so Optuna's categorical choices never change within a study)
    ray/                Ray Tune's experiment folder (trial folders, Ray's state)
    state/              the Trainer state of each unfinished trial (deleted when it ends)
    trials/             per-trial extras kept after the study (val_top3.json)
    trials.csv          one row per trial (written at the end of every run)
    best.yaml           the best trial as a production configuration for bmlr.train

The steps, one module each: :mod:`bmlr.tuning.plan` (settings and checks; everything that can
fail without a trial fails there, before Ray starts), this module (data, MLflow parent run,
the tuner, the run), :mod:`bmlr.tuning.results` (rows, winner, export, summary).

A study trains every trial with the production configuration (its `epochs` is the
learning-rate schedule's horizon) and stops it after `max_epochs` (`--max-epochs`), the budget
ASHA allocates in.
"""
from __future__ import annotations

import contextlib
import shlex
import time
from dataclasses import asdict
from typing import Any, Callable, Iterator

from bmlr.config import Config, ConfigError, from_dict
from bmlr.data import DataError, build_datasets
from bmlr.data.cache import cache_root
from bmlr.fileio import write_failure_line
from bmlr.production_tracking import interrupts_held
from bmlr.tuning import ray_backend, remote, tracking
from bmlr.tuning.config_drift import config_drift, describe_drift
from bmlr.tuning.faults import (no_space_left, output_gone, resume_line, stops_on_full_disk,
                                terminal_may_go)
from bmlr.tuning.confirm import confirm
from bmlr.tuning.plan import Plan, Runtime, StudyError, StudyOutcome, StudySettings, plan_study, resume_store
from bmlr.tuning.ray_backend import METRIC, MODE, RayStartError
from bmlr.tuning.references import run_references
from bmlr.tuning.results import finish, folder_results
from bmlr.tuning.search_space import SearchSpace, project_root
from bmlr.tuning.store import StudyBusy
from bmlr.tuning.strategies import Search

__all__ = ["StudyError", "StudySettings", "Runtime", "Plan", "StudyOutcome", "plan_study", "resume_store", "prepare_data",
           "build_cache", "start_tracking", "build_tuner", "ray_session", "run_study", "finished_outcome"]


# --- before the first trial ---------------------------------------------------------------------
def prepare_data(plan: Plan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the preprocessed cache once, in the driver, before any trial starts; the
    trials then only read it. Returns the split sizes, modalities and classes."""
    return build_cache(from_dict(plan.trial_base, source="trial configuration"), log)


def build_cache(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build (or find) the data set's preprocessed cache for ``cfg`` and describe the data:
    ``{"sizes": {split: n}, "modalities": [...], "num_classes": k}``. StudyError where the data
    cannot be prepared."""
    start = time.time()
    try:
        data = build_datasets(cfg)
    except (DataError, OSError) as err:  # a missing file, a permission, a full disk under the cache
        line = write_failure_line(err, f"the data cache of {cfg.dataset!r} in {cache_root(cfg)}") \
            if isinstance(err, OSError) else None
        if line is not None:
            raise StudyError(line) from None
        raise StudyError(f"cannot prepare data set {cfg.dataset!r}: {err}") from None
    sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    log(f"data: {cfg.dataset} {sizes} modalities {list(data.modalities)} classes {data.num_classes} "
        f"(prepared in {time.time() - start:.1f}s)")
    return {"sizes": sizes, "modalities": list(data.modalities), "num_classes": data.num_classes}


def start_tracking(plan: Plan, data_info: dict[str, Any]) -> None:
    """Create the study folder (its search space, `study.json`) and the MLflow parent run (a
    fresh study), or mark the parent run running again (a resumed one)."""
    if plan.parent_run_id is not None:
        plan.runs.reopen()
        info = plan.store.read_info()
        if info.get("tracking_uri") != plan.tracking_uri:  # object storage resumed elsewhere: this copy's store
            plan.store.update_info(tracking_uri=plan.tracking_uri,
                                   settings={**info["settings"], "tracking_uri": plan.tracking_uri})
        return
    plan.open_experiment()  # a new study's experiment (and a new store) once the data are ready
    store = plan.store
    store.dir.mkdir(parents=True, exist_ok=True)
    store.write_space(plan.source_space.text)
    s = plan.settings
    commit = tracking.git_commit(project_root())
    tags = {"dataset": s.dataset, "method": s.method, "search_space": s.search_space, "study": s.name,
            "study_dir": str(plan.study_dir), "score_rule": plan.rule.name,
            "selection_metric": f"{METRIC} ({plan.rule.name}: {plan.rule.describe()}, {MODE})",
            "bmlr.role": s.role or plan.strategy.role}
    if s.outer_run_id:
        tags["mlflow.parentRunId"] = s.outer_run_id
    if commit:
        tags["git_commit"] = commit
    tags.update(tracking.source_tags(commit, "bmlr-tune"))
    plan.parent_run_id = tracking.StudyRuns.create(plan.tracking_uri, plan.experiment_id, s.name, tags,
                                                   _parent_params(plan, data_info)).parent_run_id
    plan.runs.log_artifacts([store.space_path])
    store.create({"settings": asdict(s), "tracking_uri": plan.tracking_uri, "experiment_id": plan.experiment_id,
                  "parent_run_id": plan.parent_run_id, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "git_commit": commit, "data": data_info})


def fixed_keys_line(plan: Plan) -> str:
    """The banner's line on what the study trains that `configs/<dataset>.yaml` does not
    (also the parent run's tag `fixed_vs_config`); empty where the data set has no file."""
    try:
        line = describe_drift(*config_drift(plan.production, plan.space.params))
    except ConfigError as err:
        line = f"note: the fixed keys cannot be compared with the data set's configuration ({err})"
    if line and plan.parent_run_id is not None:
        plan.runs.set_tags({"fixed_vs_config": line})
    return line


def _parent_params(plan: Plan, data_info: dict[str, Any]) -> dict[str, Any]:
    s = plan.settings
    params = {"samples": s.samples, "max_epochs": plan.max_epochs, "grace_period": s.grace_period,
              "reduction_factor": s.reduction_factor, "seed": s.seed, "max_failures": s.max_failures,
              "cpus_per_trial": s.cpus_per_trial, "gpus_per_trial": s.gpus_per_trial,
              "concurrent": s.concurrent,
              "searcher": plan.strategy.searcher_name, "score": plan.rule.name,
              "scheduler": plan.strategy.scheduler,
              "data_sizes": data_info.get("sizes"), "searched": list(plan.space.params)}
    params.update({f"search.{k}": p.describe() for k, p in plan.space.params.items()})
    params.update({f"fixed.{k}": v for k, v in plan.production.to_dict().items() if k not in plan.space.params})
    return params


# --- Ray ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None, verbose: int) -> Iterator[bool]:
    """:func:`bmlr.tuning.ray_backend.ray_session`, failing with a StudyError where Ray cannot
    be started or reached."""
    with contextlib.ExitStack() as stack:
        try:
            started = stack.enter_context(ray_backend.ray_session(address, num_cpus, verbose))
        except RayStartError as err:
            raise StudyError(str(err)) from None
        yield started


def build_tuner(plan: Plan, verbose: int):
    """The study's tuner: restored where a resumed study's experiment can be, else built from
    the study's strategy (:mod:`bmlr.tuning.strategies`: its searcher, scheduler and space)."""
    s = plan.settings
    if plan.resumed:
        restored = ray_backend.restore_tuner(plan.store.ray_dir, plan.trainable(), plan.ray_storage(plan.store.ray_dir))
        if restored is not None:
            return restored
    try:
        parts = plan.strategy.tuner_args(plan)
    except ValueError as err:  # a grid of a range, an unknown sampler
        raise StudyError(str(err)) from None
    from bmlr.tuning.progress import StudyProgress  # what -v 1 prints: the best by the strategy's own rule

    progress = StudyProgress(list(plan.space.params), plan.max_epochs, plan.rule, plan.strategy.choose,
                             history=plan.store.history, metric=METRIC)
    return ray_backend.build_tuner(plan.trainable(), plan.store.ray_dir, callbacks=[plan.trial_logger()],
                                   concurrent=s.concurrent, max_failures=s.max_failures, verbose=verbose,
                                   progress=progress, storage=plan.ray_storage(plan.store.ray_dir), **parts)


# --- the command ----------------------------------------------------------------------------------
def run_study(settings: StudySettings, runtime: Runtime = Runtime(), resume: bool = False,
              space: SearchSpace | None = None) -> StudyOutcome:
    """One study, once: plan (every check), trials, finish (trials table, export, MLflow marks),
    the stages after a plain search (confirmation, references), what the strategy writes at
    the end (a grid's files), then the report (unless ``runtime.report`` is "none").

    `space`: the search space as an object (see :mod:`bmlr.tuning.plan`). The study's strategy
    (:mod:`bmlr.tuning.strategies`, from its settings) builds the searcher and scheduler and
    picks the exported trial. `runtime`: how this process runs it (:class:`Runtime`)."""
    log = runtime.log
    plan = plan_study(settings, resume=resume, log=log, space=space)  # holds the study's driver lock
    lease = _lease(plan)
    try:
        finished = finished_outcome(plan, log) if plan.resumed else None
        if finished is not None:
            return finished
        outcome = _run(plan, runtime)
        if outcome.interrupted:
            return outcome
        plan.strategy.after(plan, outcome, log)
        if runtime.report != "none" and outcome.best is not None:
            from bmlr.tuning.report import write_report_safely

            write_report_safely(outcome.study_dir, baseline_study=runtime.baseline_study, log=log)
        return outcome
    finally:
        _push(plan, lease, log)
        plan.release()


def _lease(plan: Plan) -> remote.Lease | None:
    """On object storage, the study's lease (:class:`bmlr.tuning.remote.Lease`: the one-driver rule
    where there is no ``flock``); StudyBusy where another driver holds it."""
    if plan.mirror is None:
        return None
    try:
        return remote.Lease(plan.mirror).acquire(StudyBusy)
    except BaseException:
        plan.release()
        raise


def _push(plan: Plan, lease: remote.Lease | None, log: Callable[[str], None]) -> None:
    """On object storage, the driver's records uploaded (a failed upload is said: the working copy
    in the cache keeps them, and the next run of the study pushes them) and the lease released."""
    if plan.mirror is None:
        return
    try:
        if plan.store.exists():
            count = plan.mirror.push()
            log(f"storage: the study's records ({count} files) written to {plan.mirror.storage}/{plan.mirror.rel}")
    except OSError as err:
        log(f"note: the study's records could not be written to {plan.settings.storage} ({err}); they are in "
            f"{plan.study_dir}, and the next run or resume of the study writes them")
    finally:
        if lease is not None:
            lease.release()


def finished_outcome(plan: Plan, log: Callable[[str], None]) -> StudyOutcome | None:
    """A resumed study that has finished (its trials table holds only ended trials and its
    parent run is FINISHED, which `finish` sets only when every trial has ended): said, and its outcome as recorded; nothing is changed. None where
    there is something to resume."""
    store = plan.store
    if not store.trials_path.is_file():
        return None
    rows = store.read_rows()
    if any(r.get("status") == "interrupted" for r in rows):
        return None
    if plan.runs.status() != "FINISHED":
        return None
    log(f"study {plan.study_dir} is finished ({len(rows)} trials); nothing to resume")
    best = store.winner(rows) or plan.strategy.choose(rows)  # the rule's pick: a study from before the record
    return StudyOutcome(plan.study_dir, rows, best, store.best_path if store.best_path.is_file() else None,
                        plan.parent_run_id, plan.tracking_uri, False)


def _run(plan: Plan, runtime: Runtime) -> StudyOutcome:
    log, top = terminal_may_go(runtime.log), runtime.top
    data_info = prepare_data(plan, log)
    s = plan.settings
    with stops_on_full_disk(plan), contextlib.ExitStack() as ray:
        try:
            with interrupts_held():  # created whole (folder, study.json, parent run) before a Ctrl-C counts
                start_tracking(plan, data_info)
                if plan.mirror is not None:  # the study exists in the bucket from its start
                    plan.mirror.push()
            _banner(plan, log)
            ray.enter_context(ray_session(runtime.address, runtime.num_cpus, runtime.verbose))
            ray.enter_context(_ends_parent_on_start_error(plan))
            grid = build_tuner(plan, runtime.verbose).fit()
        except KeyboardInterrupt:  # a second Ctrl-C (Ray Tune stops at once, with no results) or an early one
            _records_after_kill(plan, log, top)
            raise
        except OSError as err:  # a hang-up: Ray Tune's progress printed to the closed terminal
            if not output_gone(err):
                raise
            _records_after_kill(plan, log, top)
            raise KeyboardInterrupt from None
        plan.pull_records()
        done = [r for r in grid if r.error is not None or (r.metrics or {}).get("done")]
        with interrupts_held():  # a second Ctrl-C after Ray's graceful stop waits for the records
            outcome = finish(plan, grid, len(done) < s.samples, log, top)
        return _stages(plan, outcome, runtime, log)


def _stages(plan: Plan, outcome: StudyOutcome, runtime: Runtime, log: Callable[[str], None]) -> StudyOutcome:
    """The stages after a plain search (not a grid, not a staged study's stage), in the search's
    Ray session: the confirmation (``--confirm``) and the references (``--references``); while
    the references train, the report's t-SNE embeddings are computed ahead (the report comes next)."""
    s = plan.settings
    if outcome.interrupted or not isinstance(plan.strategy, Search) or s.outer_run_id:
        return outcome
    if s.confirm:
        outcome = confirm(plan, outcome, runtime.verbose, log)
    if s.references and not outcome.interrupted:
        warming = contextlib.nullcontext()
        if runtime.report != "none" and outcome.best is not None:
            from bmlr.tuning.report.warmup import warm_report  # the report's modules: only where one is written

            warming = warm_report(plan.study_dir)
        with warming:
            run_references(plan, outcome, log)
    return outcome


def _banner(plan: Plan, log: Callable[[str], None]) -> None:
    """What the study searches, how, and where it logs."""
    s = plan.settings
    schedule = plan.strategy.schedule_text(plan)
    log(f"study {plan.study_dir}\n  searching:\n{plan.space.describe()}\n  {s.samples} trials of at most "
        f"{plan.max_epochs} epochs ({schedule}), seed {s.seed}\n  score: {plan.rule.name}, "
        f"{plan.rule.describe()}\n  MLflow: {plan.tracking_uri} parent run {plan.parent_run_id}")
    if plan.strategy.keeps_journal:
        log(f"  live: optuna-dashboard {shlex.quote(str(plan.store.optuna_path))}   (pip install optuna-dashboard)")
    drift = fixed_keys_line(plan)
    if drift:
        log(f"  {drift}")


def _records_after_kill(plan: Plan, log: Callable[[str], None], top: int) -> None:
    """A second Ctrl-C (or SIGTERM, SIGHUP: the first stops Ray Tune gracefully, the second
    raises out of the tuner at once, with no results; also one while Ray starts, or a hang-up
    that broke Ray Tune's output) still writes what the first does: the trials table from Ray's
    experiment folder and the trials' histories, ``best.yaml`` where a trial has a score, every
    run ended (KILLED where cut off) and the line that says how to continue. A third Ctrl-C
    waits until they are written; a fourth leaves at once (a store that hangs can still be
    left). A record that cannot be written is said, not raised (a full disk is raised:
    `bmlr.tuning.faults.stops_on_full_disk` says it)."""
    written = False
    try:
        with interrupts_held():
            plan.pull_records()
            finish(plan, folder_results(plan.store.ray_dir, plan.runs.trials()), True, log, top)
            written = True
    except Exception as err:
        if no_space_left(err):
            raise
        log(f"note: the study's records could not be written after the interrupt ({type(err).__name__}: {err})")
        with contextlib.suppress(Exception):
            plan.runs.end_all("KILLED")
    finally:
        if not written:
            log(f"\ninterrupted; continue with: {resume_line(plan)}")


@contextlib.contextmanager
def _ends_parent_on_start_error(plan: Plan) -> Iterator[None]:
    """A tuner that cannot start (a resource request the cluster cannot meet) ends the
    study's parent run FAILED instead of leaving it RUNNING; the error goes on."""
    try:
        yield
    except RayStartError:
        plan.runs.end("FAILED")
        raise
