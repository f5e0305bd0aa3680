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
import time
from dataclasses import asdict
from typing import Any, Callable, Iterator

from bmlr.config import Config, ConfigError, from_dict
from bmlr.data import DataError, build_datasets
from bmlr.data.cache import cache_root
from bmlr.fileio import write_failure_line
from bmlr.production_tracking import interrupts_held
from bmlr.tuning import ray_backend, tracking
from bmlr.tuning.config_drift import config_drift, describe_drift
from bmlr.tuning.faults import (no_space_left, output_gone, resume_line, stops_on_full_disk,
                                terminal_may_go)
from bmlr.tuning.confirm import confirm
from bmlr.tuning.plan import Plan, StudyError, StudyOutcome, StudySettings, plan_study, resume_store
from bmlr.tuning.ray_backend import METRIC, MODE, RayStartError, make_sampler, make_scheduler, make_searcher
from bmlr.tuning.references import run_references
from bmlr.tuning.results import Chooser, finish, folder_results
from bmlr.tuning.selection import choose_best
from bmlr.tuning.search_space import SearchSpace, project_root
from bmlr.tuning.trainable import train_trial

__all__ = ["StudyError", "StudySettings", "Plan", "StudyOutcome", "plan_study", "resume_store", "prepare_data",
           "build_cache", "start_tracking", "build_tuner", "ray_session", "run_study", "finished_outcome"]

After = Callable[[Plan, StudyOutcome, Callable[[str], None]], Any]


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
    client = tracking.client_for(plan.tracking_uri)
    if plan.parent_run_id is not None:
        client.update_run(plan.parent_run_id, status="RUNNING")
        resumed = int(client.get_run(plan.parent_run_id).data.tags.get("resumed", "0")) + 1
        client.set_tag(plan.parent_run_id, "resumed", str(resumed))
        return
    plan.open_experiment()  # a new study's experiment (and a new store) once the data are ready
    store = plan.store
    store.dir.mkdir(parents=True, exist_ok=True)
    store.write_space(plan.source_space.text)
    s = plan.settings
    commit = tracking.git_commit(project_root())
    tags = {"dataset": s.dataset, "method": s.method, "search_space": s.search_space, "study": s.name,
            "study_dir": str(plan.study_dir), "score_rule": s.rule.name,
            "selection_metric": f"{METRIC} ({s.rule.name}: {s.rule.describe()}, {MODE})",
            "bmlr.role": s.role or ("surface" if s.kind == "surface" else "study")}
    if s.outer_run_id:
        tags["mlflow.parentRunId"] = s.outer_run_id
    if commit:
        tags["git_commit"] = commit
    plan.parent_run_id = tracking.create_parent_run(plan.tracking_uri, plan.experiment_id, s.name, tags,
                                                    _parent_params(plan, data_info))
    client.log_artifact(plan.parent_run_id, str(store.space_path))
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
        tracking.client_for(plan.tracking_uri).set_tag(plan.parent_run_id, "fixed_vs_config", line[:5000])
    return line


def _parent_params(plan: Plan, data_info: dict[str, Any]) -> dict[str, Any]:
    s = plan.settings
    params = {"samples": s.samples, "max_epochs": plan.max_epochs, "grace_period": s.grace_period,
              "reduction_factor": s.reduction_factor, "seed": s.seed, "max_failures": s.max_failures,
              "cpus_per_trial": s.cpus_per_trial, "gpus_per_trial": s.gpus_per_trial,
              "concurrent": s.concurrent,
              "searcher": "grid" if s.kind == "surface" else "optuna-tpe", "score": s.rule.name,
              "scheduler": "fifo" if s.kind == "surface" else s.scheduler,
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


def _trainable(plan: Plan):
    s = plan.settings
    store = plan.store
    return ray_backend.with_resources(train_trial, s.cpus_per_trial, s.gpus_per_trial, base=plan.trial_base,
                                      state_dir=str(store.state_dir), threads=plan.production.threads,
                                      extras_dir=str(store.extras_dir), max_epochs=plan.max_epochs,
                                      score=s.rule.name)


def _callback(plan: Plan):
    return tracking.MLflowTrialLogger(
        tracking_uri=plan.tracking_uri, experiment_id=plan.experiment_id, parent_run_id=plan.parent_run_id,
        base_config=plan.trial_base, max_epochs=plan.max_epochs, export_epochs=plan.production.epochs,
        export_seeds=plan.production.seeds, study=plan.settings.name, state_dir=str(plan.store.state_dir),
        extras_dir=str(plan.store.extras_dir), order=list(plan.space.params))


def build_tuner(plan: Plan, verbose: int):
    """The study's tuner: restored where a resumed study's experiment can be; a surface's grid
    (every combination trained for all `max_epochs`: a surface must not mix budgets, so no
    early stopping); else Optuna's TPE (told the `warm_start` results first) with ASHA."""
    s = plan.settings
    store = plan.store
    if plan.resumed:
        restored = ray_backend.restore_tuner(store.ray_dir, _trainable(plan))
        if restored is not None:
            return restored
    common = dict(callbacks=[_callback(plan)], concurrent=s.concurrent, max_failures=s.max_failures,
                  verbose=verbose)
    if s.kind == "surface":
        return ray_backend.build_tuner(_trainable(plan), store.ray_dir, scheduler=make_scheduler("fifo"),
                                       param_space=_grid(plan.space, s.grid_seeds or [s.seed]), **common)
    warm = [w for w in s.warm_start if set(w["params"]) == set(plan.space.params)]
    searcher = make_searcher(plan.space.optuna_space(), make_sampler("tpe", s.seed, crn=s.crn), seed=s.seed,
                             warm_start=warm)
    scheduler = make_scheduler(s.scheduler or "asha", max_t=plan.max_epochs, grace_period=s.grace_period,
                               reduction_factor=s.reduction_factor)
    return ray_backend.build_tuner(_trainable(plan), store.ray_dir, searcher=searcher, scheduler=scheduler,
                                   num_samples=s.samples, **common)


def _grid(space: SearchSpace, seeds: list[int]) -> dict[str, Any]:
    not_grid = [k for k, p in space.params.items() if p.kind != "choice"]
    if not_grid:
        raise StudyError(f"{space.source}: a grid needs choice entries only; {not_grid} are not")
    return ray_backend.grid_param_space({k: p.choices for k, p in space.params.items()}, seeds)


# --- the command ----------------------------------------------------------------------------------
def run_study(settings: StudySettings, resume: bool = False, address: str | None = None,
              num_cpus: int | None = None, verbose: int = 1, top: int = 5,
              log: Callable[[str], None] = print, report: str = "fast",
              baseline_study: str | None = None, space: SearchSpace | None = None,
              chooser: Chooser | None = None, after: After | None = None) -> StudyOutcome:
    """Check everything, prepare the data once, run (or resume) the study, export the best,
    then (unless `report` is "none") write the study report (`bmlr.tuning.report`; "full"
    also trains the baseline counterpart of the best trial for its learning curves, which
    the command line does by default).

    `space`: the search space as an object (see :mod:`bmlr.tuning.plan`). `chooser`: the rule
    that picks the exported trial (default :func:`bmlr.tuning.selection.choose_best`; a surface
    passes its best-cell rule, and a surface study needs one). `after(plan, outcome, log)`:
    called when the study has finished, uninterrupted, before the report (a surface's grid
    files)."""
    plan = plan_study(settings, resume=resume, log=log, space=space)  # holds the study's driver lock
    try:
        if plan.settings.kind == "surface" and chooser is None:
            raise StudyError(f"{plan.study_dir} is an alpha x beta surface: run or resume it with `bmlr-tune "
                             f"surface` (bmlr.tuning.surface_study.run_surface)")
        finished = finished_outcome(plan, chooser, log) if plan.resumed else None
        if finished is not None:
            return finished
        outcome = _run(plan, address, num_cpus, verbose, top, log, chooser)
        if outcome.interrupted:
            return outcome
        return _after(plan, outcome, after, report, baseline_study, log)
    finally:
        plan.release()


def finished_outcome(plan: Plan, chooser: Chooser | None, log: Callable[[str], None]) -> StudyOutcome | None:
    """A resumed study that has finished (its trials table holds only ended trials and its
    parent run is FINISHED, which `finish` sets only when every trial has ended): said, and its outcome as recorded; nothing is changed. None where
    there is something to resume."""
    store = plan.store
    if not store.trials_path.is_file():
        return None
    rows = store.read_rows()
    if any(r.get("status") == "interrupted" for r in rows):
        return None
    if tracking.client_for(plan.tracking_uri).get_run(plan.parent_run_id).info.status != "FINISHED":
        return None
    log(f"study {plan.study_dir} is finished ({len(rows)} trials); nothing to resume")
    confirmed = store.read_info().get("best_trial_id")  # a confirmation's winner (bmlr.tuning.confirm)
    best = next((r for r in rows if str(r["trial_id"]) == str(confirmed)), None) or (chooser or choose_best)(rows)
    return StudyOutcome(plan.study_dir, rows, best, store.best_path if store.best_path.is_file() else None,
                        plan.parent_run_id, plan.tracking_uri, False)


def _after(plan: Plan, outcome: StudyOutcome, after: After | None, report: str, baseline_study: str | None,
           log: Callable[[str], None]) -> StudyOutcome:
    if after is not None:
        after(plan, outcome, log)
    if report != "none" and outcome.best is not None:
        from bmlr.tuning.report import write_report_safely

        write_report_safely(outcome.study_dir, baseline_study=baseline_study, train_baseline=report == "full",
                            log=log)
    return outcome


def _run(plan: Plan, address: str | None, num_cpus: int | None, verbose: int, top: int,
         log: Callable[[str], None], chooser: Chooser | None) -> StudyOutcome:
    log = terminal_may_go(log)
    data_info = prepare_data(plan, log)
    s = plan.settings
    with stops_on_full_disk(plan), contextlib.ExitStack() as ray:
        try:
            with interrupts_held():  # created whole (folder, study.json, parent run) before a Ctrl-C counts
                start_tracking(plan, data_info)
            _banner(plan, log)
            ray.enter_context(ray_session(address, num_cpus, verbose))
            ray.enter_context(_ends_parent_on_start_error(plan))
            grid = build_tuner(plan, verbose).fit()
        except KeyboardInterrupt:  # a second Ctrl-C (Ray Tune stops at once, with no results) or an early one
            _records_after_kill(plan, log, top, chooser)
            raise
        except OSError as err:  # a hang-up: Ray Tune's progress printed to the closed terminal
            if not output_gone(err):
                raise
            _records_after_kill(plan, log, top, chooser)
            raise KeyboardInterrupt from None
        done = [r for r in grid if r.error is not None or (r.metrics or {}).get("done")]
        with interrupts_held():  # a second Ctrl-C after Ray's graceful stop waits for the records
            outcome = finish(plan, grid, len(done) < s.samples, log, top, chooser=chooser)
        plain = s.kind == "search" and not (chooser or s.outer_run_id)
        if s.confirm and plain and not outcome.interrupted:
            outcome = confirm(plan, outcome, verbose, log)
        if s.references and plain and not outcome.interrupted:
            run_references(plan, outcome, log)
        return outcome


def _banner(plan: Plan, log: Callable[[str], None]) -> None:
    """What the study searches, how, and where it logs."""
    s = plan.settings
    schedule = ("every combination trained to the end" if s.kind == "surface" or s.scheduler == "none" else
                f"{'ASHA' if s.scheduler == 'asha' else 'Hyperband (ASHA brackets)'} grace {s.grace_period}, "
                f"reduction {s.reduction_factor}")
    log(f"study {plan.study_dir}\n  searching:\n{plan.space.describe()}\n  {s.samples} trials of at most "
        f"{plan.max_epochs} epochs ({schedule}), seed {s.seed}\n  score: {s.rule.name}, "
        f"{s.rule.describe()}\n  MLflow: {plan.tracking_uri} parent run {plan.parent_run_id}")
    drift = fixed_keys_line(plan)
    if drift:
        log(f"  {drift}")


def _records_after_kill(plan: Plan, log: Callable[[str], None], top: int, chooser: Chooser | None) -> None:
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
            runs = tracking.child_runs(plan.tracking_uri, plan.experiment_id, plan.parent_run_id)
            finish(plan, folder_results(plan.store.ray_dir, runs), True, log, top, chooser=chooser)
            written = True
    except Exception as err:
        if no_space_left(err):
            raise
        log(f"note: the study's records could not be written after the interrupt ({type(err).__name__}: {err})")
        with contextlib.suppress(Exception):
            tracking.end_study_runs(plan.tracking_uri, plan.experiment_id, plan.parent_run_id, "KILLED")
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
        tracking.client_for(plan.tracking_uri).set_terminated(plan.parent_run_id, "FAILED")
        raise
