"""Run (or resume) one tuning study: checks, data cache, MLflow parent run, Ray Tune
(Optuna TPE + ASHA), then the trials table, `best.yaml` and a summary.

Study folder `<storage>/<dataset>/<name>/`:

    study.json          settings, MLflow tracking URI, experiment and parent run id
    search_space.yaml   the search space as used (a resumed study reuses this copy,
                        so Optuna's categorical choices never change within a study)
    ray/                Ray Tune's experiment folder (trial folders, Ray's state)
    state/              the Trainer state of each unfinished trial (deleted when it ends)
    trials.csv          one row per trial (written at the end of every run)
    best.yaml           the best trial as a production configuration for bmlr.train

Everything that can fail without a trial (a malformed search space, a bad config key,
a missing data root, an unreachable tracking server, a data set that cannot be
prepared) fails here before Ray starts, with a `StudyError` (or a `ConfigError`).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from bmlr.config import Config, ConfigError
from bmlr.tuning import tracking
from bmlr.tuning.export import production_config, write_config
from bmlr.tuning.search_space import (COMMAND_LINE_KEYS, SearchSpace, SearchSpaceError, load_search_space,
                                      project_root)
from bmlr.tuning.trainable import METRIC, MODE, TIME_ATTR, train_trial, trial_dirname

STUDY_FILE = "study.json"
SPACE_FILE = "search_space.yaml"
RAY_DIR = "ray"
STATE_DIR = "state"  # per-trial Trainer state of running trials (bmlr.tuning.trainable)
TRIALS_DIR = "trials"  # per-trial extras kept after the study: trial_<id>/val_top3.json (Figure 4)


class StudyError(RuntimeError):
    """The study cannot start or continue; the message says why."""


@dataclass
class StudySettings:
    """Everything that defines a study; stored in `study.json` and reused by `--resume`."""

    dataset: str = "synthetic"
    search_space: str = ""  # absolute path of the search-space file
    data_root: str | None = None
    method: str | None = None  # None: the search space's fixed method, else "bmlr"
    samples: int = 16
    max_epochs: int | None = None  # None: the search space's fixed epochs
    grace_period: int = 1
    reduction_factor: int = 3
    concurrent: int | None = None  # None: as many as the resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: one GPU per trial where the cluster has GPUs, else 0
    storage: str = "tune_runs"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite in <storage>
    experiment: str | None = None  # None: bmlr-tune-<dataset>
    name: str | None = None  # None: <method>-<timestamp>
    seed: int = 0
    max_failures: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # --set key=value
    # how the trials are chosen: "search" (Optuna TPE + ASHA) or "surface" (every combination of
    # the search space's choice entries, times `grid_seeds`, each trained to the end: no ASHA)
    kind: str = "search"
    grid_seeds: list[int] | None = None  # surface: the training seeds of every cell
    folder: str | None = None  # the study folder (default <storage>/<dataset>/<name>); staged stages
    outer_run_id: str | None = None  # MLflow run the study's parent run nests under (staged stages)
    role: str | None = None  # MLflow tag bmlr.role (default: "study" or "surface")
    # Optuna is told these results before it samples ({"params": {...}, "value": v}), e.g. the
    # stage-1 winner for stage 2 of a staged search; they are not trained again
    warm_start: list[dict[str, Any]] = field(default_factory=list)

    def check(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise StudyError(message)

        need(self.samples >= 1, f"--samples must be >= 1, got {self.samples}")
        need(self.max_epochs is None or self.max_epochs >= 1, f"--max-epochs must be >= 1, got {self.max_epochs}")
        need(self.grace_period >= 1, f"--grace-period must be >= 1, got {self.grace_period}")
        need(self.reduction_factor >= 2, f"--reduction-factor must be >= 2, got {self.reduction_factor}")
        need(self.concurrent is None or self.concurrent >= 1, f"--concurrent must be >= 1, got {self.concurrent}")
        need(self.cpus_per_trial > 0, f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        need(self.gpus_per_trial is None or self.gpus_per_trial >= 0, f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")
        need(self.max_failures >= 0, f"--max-failures must be >= 0, got {self.max_failures}")
        need(self.kind in ("search", "surface"), f"unknown study kind {self.kind!r}")


@dataclass
class Plan:
    """A study resolved and checked, ready to run."""

    settings: StudySettings
    study_dir: Path
    space: SearchSpace
    production: Config  # fixed + overrides: what best.yaml builds on (full epochs, all seeds)
    trial_base: dict[str, Any]  # what every trial trains: max_epochs, the study seed
    max_epochs: int
    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None = None
    resumed: bool = False


@dataclass
class StudyOutcome:
    study_dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_yaml: Path | None
    parent_run_id: str
    tracking_uri: str
    interrupted: bool


# --- resolving and checking -------------------------------------------------------------
def _abs(path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(path))).resolve()


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def find_study(storage: Path, dataset: str, name: str | None) -> Path:
    base = storage / dataset
    if name:
        folder = base / name
        if not (folder / STUDY_FILE).is_file():
            raise StudyError(f"--resume: no study {name!r} in {base} ({folder / STUDY_FILE} not found)")
        return folder
    studies = sorted((p for p in base.glob(f"*/{STUDY_FILE}")), key=lambda p: p.stat().st_mtime)
    if not studies:
        raise StudyError(f"--resume: no study found in {base}; pass --name of the study to resume")
    return studies[-1].parent


def plan_study(settings: StudySettings, resume: bool = False, log: Callable[[str], None] = print) -> Plan:
    """Resolve paths, validate the search space and configuration, check the data root and
    the tracking store. Nothing is written except the tracking store's folder."""
    settings.check()
    storage = _abs(settings.storage)
    settings.storage = str(storage)
    stored: dict[str, Any] | None = None
    if resume:
        if settings.folder:
            study_dir = Path(settings.folder)
            if not (study_dir / STUDY_FILE).is_file():
                raise StudyError(f"--resume: {study_dir / STUDY_FILE} not found")
        else:
            study_dir = find_study(storage, settings.dataset, settings.name)
        stored = json.loads((study_dir / STUDY_FILE).read_text())
        given = settings
        settings = StudySettings(**stored["settings"])
        for key in ("samples", "max_epochs", "grace_period", "reduction_factor", "seed", "method", "data_root",
                    "tracking_uri", "experiment", "overrides"):
            new, old = getattr(given, key), getattr(settings, key)
            if new not in (None, {}, StudySettings.__dataclass_fields__[key].default) and new != old:
                log(f"note: --resume keeps the study's {key} = {old!r} (ignoring {new!r})")
        space = load_search_space(study_dir / SPACE_FILE)
        log(f"resuming study {study_dir}")
    else:
        space = load_search_space(settings.search_space)
        settings.search_space = str(_abs(settings.search_space))

    if settings.data_root:
        root = _abs(settings.data_root)
        if not root.is_dir():
            raise StudyError(f"data root not found: {root} (--data-root)")
        settings.data_root = str(root)
    for key in settings.overrides:
        if key in space.params:
            raise SearchSpaceError(f"--set {key}=...: {key!r} is searched in {space.source}; "
                                   f"remove it from --set or from the search space")
        if key in COMMAND_LINE_KEYS or key == "data_root":
            raise StudyError(f"--set {key}=...: use --{key.replace('_', '-')} instead")
    if "dataset" in space.fixed and space.fixed["dataset"] != settings.dataset:
        raise SearchSpaceError(f"{space.source}: fixed.dataset: {space.fixed['dataset']!r} does not match "
                               f"--dataset {settings.dataset!r}")
    settings.method = settings.method or space.fixed.get("method") or "bmlr"
    if "method" in space.params:
        raise SearchSpaceError(f"{space.source}: search.method: the method is chosen with --method")
    space = space.for_method(settings.method)  # its methods.<name> section; no budget on keys it ignores
    fixed = {**settings.overrides, "dataset": settings.dataset, "method": settings.method}
    if settings.data_root:
        fixed["data_root"] = settings.data_root
    if fixed.get("cache_dir"):
        fixed["cache_dir"] = str(_abs(fixed["cache_dir"]))
    try:
        production = space.base_config(fixed, source=f"{space.source} (fixed) with the command line")
    except ConfigError as err:
        raise SearchSpaceError(str(err)) from None
    max_epochs = settings.max_epochs or production.epochs
    if settings.grace_period > max_epochs:
        raise StudyError(f"--grace-period {settings.grace_period} exceeds the {max_epochs} epochs a trial trains")
    trial_base = {**production.to_dict(), "epochs": max_epochs, "seeds": [settings.seed], "name": None}
    settings.name = settings.name or f"{settings.method}-{_timestamp()}"
    if not resume:
        study_dir = _abs(settings.folder) if settings.folder else storage / settings.dataset / settings.name
        if (study_dir / STUDY_FILE).exists():
            raise StudyError(f"study {study_dir} exists; continue it with --resume --name {settings.name} "
                             f"or choose another --name")

    uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(storage)
    settings.tracking_uri = uri
    settings.experiment = settings.experiment or f"bmlr-tune-{settings.dataset}"
    try:
        tracking.check_reachable(uri)
        experiment_id = tracking.get_or_create_experiment(uri, settings.experiment)
    except tracking.TrackingError as err:
        raise StudyError(str(err)) from None
    plan = Plan(settings=settings, study_dir=study_dir, space=space, production=production, trial_base=trial_base,
                max_epochs=max_epochs, tracking_uri=uri, experiment_id=experiment_id, resumed=resume)
    if stored is not None:
        plan.parent_run_id = stored["parent_run_id"]
        try:
            tracking.client_for(uri).get_run(plan.parent_run_id)
        except Exception as err:
            raise StudyError(f"--resume: the study's MLflow parent run {plan.parent_run_id} is not in {uri} "
                             f"({type(err).__name__}); resume with the tracking URI the study used") from None
    return plan


def prepare_data(plan: Plan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the preprocessed cache once, in the driver, before any trial starts; the
    trials then only read it. Returns the split sizes."""
    from bmlr.config import from_dict
    from bmlr.data import DataError, build_datasets

    cfg = from_dict(plan.trial_base, source="trial configuration")
    start = time.time()
    try:
        data = build_datasets(cfg)
    except (DataError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        raise StudyError(f"cannot prepare data set {cfg.dataset!r}: {err}") from None
    sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    log(f"data: {cfg.dataset} {sizes} modalities {list(data.modalities)} classes {data.num_classes} "
        f"(prepared in {time.time() - start:.1f}s)")
    return {"sizes": sizes, "modalities": list(data.modalities), "num_classes": data.num_classes}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def start_tracking(plan: Plan, data_info: dict[str, Any]) -> None:
    """Create the study folder and the MLflow parent run (a fresh study), or mark the
    parent run running again (a resumed one)."""
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    client = tracking.client_for(plan.tracking_uri)
    if plan.parent_run_id is not None:
        client.update_run(plan.parent_run_id, status="RUNNING")
        client.set_tag(plan.parent_run_id, "resumed", str(int(client.get_run(plan.parent_run_id).data.tags.get("resumed", "0")) + 1))
        return
    if Path(plan.settings.search_space).resolve() != (plan.study_dir / SPACE_FILE).resolve():
        shutil.copyfile(plan.settings.search_space, plan.study_dir / SPACE_FILE)
    s = plan.settings
    commit = tracking.git_commit(project_root())
    tags = {"dataset": s.dataset, "method": s.method, "search_space": s.search_space, "study": s.name,
            "study_dir": str(plan.study_dir), "selection_metric": f"{METRIC} (validation, {MODE})",
            "bmlr.role": s.role or ("surface" if s.kind == "surface" else "study")}
    if s.outer_run_id:
        tags["mlflow.parentRunId"] = s.outer_run_id
    if commit:
        tags["git_commit"] = commit
    params = {"samples": s.samples, "max_epochs": plan.max_epochs, "grace_period": s.grace_period,
              "reduction_factor": s.reduction_factor, "seed": s.seed, "max_failures": s.max_failures,
              "cpus_per_trial": s.cpus_per_trial, "gpus_per_trial": s.gpus_per_trial,
              "concurrent": s.concurrent,
              "searcher": "grid" if s.kind == "surface" else "optuna-tpe",
              "scheduler": "fifo" if s.kind == "surface" else "asha",
              "data_sizes": data_info.get("sizes"), "searched": list(plan.space.params)}
    params.update({f"search.{k}": p.describe() for k, p in plan.space.params.items()})
    params.update({f"fixed.{k}": v for k, v in plan.production.to_dict().items() if k not in plan.space.params})
    plan.parent_run_id = tracking.create_parent_run(plan.tracking_uri, plan.experiment_id, s.name, tags, params)
    client.log_artifact(plan.parent_run_id, str(plan.study_dir / SPACE_FILE))
    _write_json(plan.study_dir / STUDY_FILE, {
        "settings": asdict(s), "tracking_uri": plan.tracking_uri, "experiment_id": plan.experiment_id,
        "parent_run_id": plan.parent_run_id, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_commit": commit, "data": data_info})


# --- Ray ----------------------------------------------------------------------------------
def quiet_ray(verbose: int) -> None:
    """Ray Tune settings read from the environment (a user's own values win)."""
    # snapshot the experiment state often: a killed driver then loses little (Ray's default is >= 10 s)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "3")
    # one checkpoint kept per trial forces frequent snapshots; Ray warns about each one
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if verbose == 0:  # Ray's new console output prints its header even when silent
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def init_ray(address: str | None, num_cpus: int | None, verbose: int) -> bool:
    """Connect to a cluster (`address`) or start a local one; True if we started Ray here."""
    import ray

    if ray.is_initialized():
        return False
    env = {k: os.environ[k] for k in ("BMLR_CACHE",) if k in os.environ}
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=verbose >= 2,
                                  logging_level=logging.INFO if verbose >= 2 else logging.WARNING,
                                  runtime_env={"env_vars": env} if env else None)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # "local": a new instance even where `ray start` left a cluster running
            ray.init(address="local", num_cpus=num_cpus, **kwargs)
    except Exception as err:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise StudyError(f"cannot start or connect to {where}: {err}") from None
    return True


def _trainable(plan: Plan):
    from ray import tune

    s = plan.settings
    fn = tune.with_parameters(train_trial, base=plan.trial_base, state_dir=str(plan.study_dir / STATE_DIR),
                              threads=max(1, int(s.cpus_per_trial)), extras_dir=str(plan.study_dir / TRIALS_DIR))
    return tune.with_resources(fn, {"cpu": s.cpus_per_trial, "gpu": gpus_per_trial(s.gpus_per_trial)})


def gpus_per_trial(requested: float | None) -> float:
    """`--gpus-per-trial`, or without it one whole GPU per trial where the Ray cluster has GPUs
    (Ray hides the GPUs from a trial that asks for none, so 0 would silently train on CPU).
    Packing several trials on a GPU (0.5, 0.25) is the user's choice: it pays only for models
    too small to fill a GPU, and it was not measured here (docs/performance.md)."""
    if requested is not None:
        return requested
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def _callback(plan: Plan):
    return tracking.MLflowTrialLogger(
        tracking_uri=plan.tracking_uri, experiment_id=plan.experiment_id, parent_run_id=plan.parent_run_id,
        base_config=plan.trial_base, max_epochs=plan.max_epochs, export_epochs=plan.production.epochs,
        export_seeds=plan.production.seeds, study=plan.settings.name,
        state_dir=str(plan.study_dir / STATE_DIR))


def build_tuner(plan: Plan, verbose: int):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    s = plan.settings
    ray_dir = plan.study_dir / RAY_DIR
    if plan.resumed and tune.Tuner.can_restore(str(ray_dir)):
        return tune.Tuner.restore(str(ray_dir), trainable=_trainable(plan), resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    if s.kind == "surface":
        return _grid_tuner(plan, verbose)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warm = [w for w in s.warm_start if set(w["params"]) == set(plan.space.params)]
    searcher = OptunaSearch(space=plan.space.optuna_space(), metric=METRIC, mode=MODE,
                            sampler=optuna.samplers.TPESampler(seed=s.seed),
                            points_to_evaluate=[dict(w["params"]) for w in warm] or None,
                            evaluated_rewards=[float(w["value"]) for w in warm] or None)
    scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=plan.max_epochs, grace_period=s.grace_period,
                              reduction_factor=s.reduction_factor)
    return tune.Tuner(
        _trainable(plan),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler,
                                    num_samples=s.samples, max_concurrent_trials=s.concurrent,
                                    reuse_actors=True,  # a new trial skips the worker start and imports
                                    trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=RAY_DIR, storage_path=str(plan.study_dir), callbacks=[_callback(plan)], verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=s.max_failures, fail_fast=False)),
    )


def _grid_tuner(plan: Plan, verbose: int):
    """Every combination of the space's choice entries (times the seeds), each trained for all
    `max_epochs`: a surface must not mix budgets, so there is no early stopping."""
    from ray import tune

    s = plan.settings
    not_grid = [k for k, p in plan.space.params.items() if p.kind != "choice"]
    if not_grid:
        raise StudyError(f"{plan.space.source}: a grid needs choice entries only; {not_grid} are not")
    param_space: dict[str, Any] = {k: tune.grid_search(list(p.choices)) for k, p in plan.space.params.items()}
    param_space["seeds"] = tune.grid_search([[int(seed)] for seed in (s.grid_seeds or [s.seed])])
    return tune.Tuner(
        _trainable(plan), param_space=param_space,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=1, max_concurrent_trials=s.concurrent,
                                    reuse_actors=True, trial_dirname_creator=trial_dirname,
                                    trial_name_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=RAY_DIR, storage_path=str(plan.study_dir), callbacks=[_callback(plan)], verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=s.max_failures, fail_fast=False)),
    )


def sampled_values(row: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """A trials-table row's values of the searched keys (not a surface trial's seed)."""
    return {k.removeprefix("param."): v for k, v in row.items()
            if k.startswith("param.") and k.removeprefix("param.") in space.params}


# --- results --------------------------------------------------------------------------------
def _trial_id(result) -> str:
    if result.metrics and "trial_id" in result.metrics:
        return str(result.metrics["trial_id"])
    return Path(result.path).name.removeprefix("trial_")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def trial_rows(grid, plan: Plan, runs: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trial: status, epochs, the metrics of its best validation epoch, the
    sampled values and its MLflow run id. Test metrics do not exist here."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = _trial_id(result)
        df = result.metrics_dataframe
        epochs = int(metrics.get("epoch", 0) or 0)
        if result.error is not None:
            status = "failed"
        elif metrics.get("done"):
            status = tracking.trial_status(epochs, plan.max_epochs, errored=False)
        else:
            status = "interrupted"  # cut off by Ctrl-C or a lost driver: --resume continues it
        row: dict[str, Any] = {"trial_id": trial_id, "status": status, "epochs": epochs}
        if df is not None and len(df) and METRIC in df:
            best = df.loc[df[METRIC].astype(float).idxmax()]
            row["best_epoch"] = int(best["epoch"])
            row["best_val_acc"] = float(best[METRIC])
            for key in df.columns:
                if key.startswith("val_") and key != METRIC or key == "train_loss":
                    row[key] = _finite(float(best[key])) if best[key] == best[key] else None
        for key, value in (result.config or {}).items():
            row[f"param.{key}"] = value
        run = runs.get(trial_id)
        row["run_id"] = run.info.run_id if run is not None else None
        if result.error is not None:
            text = str(result.error).strip().splitlines()
            row["error"] = (text[-1] if text else type(result.error).__name__)[:300]
        rows.append(row)
    rows.sort(key=lambda r: (r.get("best_val_acc") is None, -(r.get("best_val_acc") or 0.0), r["trial_id"]))
    return rows


def choose_best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial with the highest validation accuracy at any epoch; failed trials excluded
    (their configuration diverged). Ties: fewer epochs, then trial id."""
    candidates = [r for r in rows if r["status"] != "failed" and r.get("best_val_acc") is not None]
    if not candidates:
        return None
    return sorted(candidates, key=lambda r: (-r["best_val_acc"], r.get("best_epoch", 0), r["trial_id"]))[0]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def format_table(rows: list[dict[str, Any]], top: int = 5) -> str:
    params = [k for k in (rows[0] if rows else {}) if k.startswith("param.")]
    for row in rows:
        params.extend(k for k in row if k.startswith("param.") and k not in params)
    cols = ["trial_id", "status", "epochs", "best_val_acc", "val_macro_f1", "val_imbalance_ratio"] + params
    heads = [c.removeprefix("param.").replace("best_val_acc", "val_acc").replace("val_imbalance_ratio", "imbalance")
             for c in cols]

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    body = [[cell(r.get(c)) for c in cols] for r in rows[:top]]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def finish(plan: Plan, grid, interrupted: bool, log: Callable[[str], None] = print, top: int = 5,
           chooser: Callable[[list[dict[str, Any]]], dict[str, Any] | None] | None = None) -> StudyOutcome:
    client = tracking.client_for(plan.tracking_uri)
    runs = tracking.child_runs(plan.tracking_uri, plan.experiment_id, plan.parent_run_id)
    rows = trial_rows(grid, plan, runs)
    known = {row["trial_id"] for row in rows}
    lost = [run for trial_id, run in runs.items() if trial_id not in known]
    for run in lost:  # started just before a killed driver, after Ray's last snapshot
        if run.data.tags.get("trial_status") != "lost":
            client.set_tag(run.info.run_id, "trial_status", "lost")
            client.set_tag(run.info.run_id, "note", "the driver died before Ray saved this trial; its "
                                                    "configuration was sampled again as a new trial")
            client.set_tag(run.info.run_id, "best_trial", "false")
            client.set_terminated(run.info.run_id, "KILLED")
    runs = {trial_id: run for trial_id, run in runs.items() if trial_id in known}
    for row in rows:  # runs of trials that were cut off: KILLED until --resume continues them
        if row["status"] == "interrupted" and row["run_id"]:
            client.set_tag(row["run_id"], "trial_status", "interrupted")
            client.set_terminated(row["run_id"], "KILLED")
    best = (chooser or choose_best)(rows)
    csv_path = plan.study_dir / "trials.csv"
    write_csv(rows, csv_path)
    best_yaml = None
    if best is not None:
        sampled = sampled_values(best, plan.space)
        cfg = production_config({**plan.production.to_dict(), **sampled})
        header = [f"Best trial of study {plan.settings.name} ({plan.settings.dataset}, method {plan.settings.method}):",
                  f"trial {best['trial_id']}, MLflow run {best['run_id']}, validation accuracy "
                  f"{best['best_val_acc']:.4f} at epoch {best['best_epoch']} of {best['epochs']} "
                  f"(study seed {plan.settings.seed}; test never read)",
                  "sampled: " + ", ".join(f"{k}={v}" for k, v in sampled.items()),
                  f"production: {cfg.epochs} epochs, seeds {cfg.seeds}"]
        best_yaml = write_config(cfg, plan.study_dir / "best.yaml", header)
        for trial_id, run in runs.items():
            client.set_tag(run.info.run_id, "best_trial", str(trial_id == best["trial_id"]).lower())
        client.set_tag(plan.parent_run_id, "best_run_id", best["run_id"] or "")
        client.set_tag(plan.parent_run_id, "best_trial_id", best["trial_id"])
        client.log_metric(plan.parent_run_id, "best_val_acc", best["best_val_acc"])
        client.log_artifact(plan.parent_run_id, str(best_yaml))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    if lost:
        counts["lost"] = len(lost)
    for status, n in counts.items():
        client.set_tag(plan.parent_run_id, f"trials.{status}", str(n))
    client.log_artifact(plan.parent_run_id, str(csv_path))
    client.log_artifact(plan.parent_run_id, str(plan.study_dir / STUDY_FILE))
    client.set_terminated(plan.parent_run_id, "KILLED" if interrupted else "FINISHED")
    if not interrupted:  # every trial has ended: no state to continue from
        shutil.rmtree(plan.study_dir / STATE_DIR, ignore_errors=True)

    log(f"\nstudy {plan.study_dir}  trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if rows:
        log(f"best trials by validation accuracy (of {len(rows)}):\n" + format_table(rows, top))
    if best_yaml is not None:
        log(f"best configuration: {best_yaml}\n  train it: python -m bmlr.train --config {best_yaml}")
    else:
        log("no trial finished successfully: nothing exported")
    log(f"MLflow: {plan.tracking_uri}  experiment {plan.settings.experiment!r}  parent run {plan.parent_run_id}")
    if interrupted:
        log(f"the study was interrupted; continue it with: bmlr-tune --dataset {plan.settings.dataset} "
            f"--storage {plan.settings.storage} --name {plan.settings.name} --resume")
    return StudyOutcome(plan.study_dir, rows, best, best_yaml, plan.parent_run_id, plan.tracking_uri, interrupted)


def run_study(settings: StudySettings, resume: bool = False, address: str | None = None,
              num_cpus: int | None = None, verbose: int = 1, top: int = 5,
              log: Callable[[str], None] = print, report: str = "fast",
              baseline_study: str | None = None) -> StudyOutcome:
    """Check everything, prepare the data once, run (or resume) the study, export the best,
    then (unless `report` is "none") write the study report (`bmlr.tuning.report`; "full"
    also trains the baseline counterpart of the best trial for its learning curves, which
    the command line does by default)."""
    outcome = _run_study(settings, resume, address, num_cpus, verbose, top, log)
    if report != "none" and not outcome.interrupted and outcome.best is not None:
        from bmlr.tuning.report import write_report_safely

        write_report_safely(outcome.study_dir, baseline_study=baseline_study, train_baseline=report == "full",
                            log=log)
    return outcome


def _run_study(settings: StudySettings, resume: bool, address: str | None, num_cpus: int | None, verbose: int,
               top: int, log: Callable[[str], None]) -> StudyOutcome:
    plan = plan_study(settings, resume=resume, log=log)
    data_info = prepare_data(plan, log)
    start_tracking(plan, data_info)
    schedule = ("every combination trained to the end" if plan.settings.kind == "surface" else
                f"ASHA grace {plan.settings.grace_period}, reduction {plan.settings.reduction_factor}")
    log(f"study {plan.study_dir}\n  searching:\n{plan.space.describe()}\n  {plan.settings.samples} trials of at most "
        f"{plan.max_epochs} epochs ({schedule}), seed {plan.settings.seed}\n  MLflow: {plan.tracking_uri} "
        f"parent run {plan.parent_run_id}")
    quiet_ray(verbose)
    started = init_ray(address, num_cpus, verbose)
    try:
        tuner = build_tuner(plan, verbose)
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            client = tracking.client_for(plan.tracking_uri)
            client.set_terminated(plan.parent_run_id, "KILLED")
            log(f"\ninterrupted; continue with: bmlr-tune --dataset {plan.settings.dataset} --storage "
                f"{plan.settings.storage} --name {plan.settings.name} --resume")
            raise
        done = [r for r in grid if r.error is not None or (r.metrics or {}).get("done")]
        interrupted = len(done) < plan.settings.samples
        if plan.settings.kind == "surface":
            from bmlr.tuning import surface

            outcome = finish(plan, grid, interrupted, log, top, chooser=surface.best_cell_row)
            if not interrupted:
                surface.write_grid_outputs(plan, outcome, log)
            return outcome
        return finish(plan, grid, interrupted, log, top)
    finally:
        if started:
            import ray

            ray.shutdown()
