"""What a study is before it runs: its settings (stored in ``study.json`` and reused by
``--resume``), the checks on them, and the :class:`Plan` they resolve to.

Everything that can fail without a trial (a malformed search space, a bad config key, a
missing data root, an unreachable tracking server) fails in :func:`plan_study`, before Ray
starts and before anything is written to the study folder, with a :class:`StudyError` (or a
``SearchSpaceError``).

A study searches a :class:`~bmlr.tuning.search_space.SearchSpace`. A caller that has one as an
object (a staged search's stage, a surface's grid) hands it to :func:`plan_study` as ``space``
and sets ``StudySettings.search_space`` to the path where the study records it; otherwise the
space is read from the file ``StudySettings.search_space`` names. Either way the study writes
the space's text into its folder (``search_space.yaml``), and a resumed study reads that copy.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from bmlr.config import FIELD_NAMES, METHOD_ARGS_PREFIX, Config, ConfigError, closest_key
from bmlr.fileio import abs_path, timestamp
from bmlr.tuning import ray_backend, remote, tracking
from bmlr.tuning.ray_backend import AUTO, SCHEDULERS
from bmlr.tuning.scores import ScoreError, ScoreRule, parse_score
from bmlr.tuning.search_space import COMMAND_LINE_KEYS, SearchSpace, SearchSpaceError, load_search_space
from bmlr.tuning.strategies import Strategy, strategy_for
from bmlr.tuning.trainable import train_trial
from bmlr.tuning.store import StoreError, StudyLock, StudyStore, check_name, find_study, study_folder

__all__ = ["StudyError", "StudySettings", "Runtime", "Plan", "StudyOutcome", "resume_store", "plan_study"]

# the settings --resume takes from the stored study, with a note where the command line differs
# ASHA's grace period where neither --grace-period nor the search space's `grace_period:` says
# one: measured by the study (bmlr.tuning.calibrated_asha: nothing is stopped until the first
# trials that ran to the end show from which epoch the ranking holds), since on data we have not
# seen a hand-set grace period decides the result (docs/tuning.md)
DEFAULT_GRACE_PERIOD = AUTO
RESUME_KEEPS = ("samples", "max_epochs", "grace_period", "reduction_factor", "seed", "method", "data_root",
                "tracking_uri", "experiment", "overrides", "score", "scheduler", "confirm", "confirm_seeds")


class StudyError(RuntimeError):
    """The study cannot start or continue; the message says why."""


@dataclass(frozen=True)
class StudySettings:
    """Everything that defines a study; stored in `study.json` and reused by `--resume`."""

    dataset: str = "synthetic"
    search_space: str = ""  # absolute path of the search-space file (or of its record in the study folder)
    data_root: str | None = None
    method: str | None = None  # None: the search space's fixed method, else "bmlr"
    samples: int = 16
    max_epochs: int | None = None  # None: the search space's `max_epochs:`, else its fixed epochs
    grace_period: int | str | None = None  # epochs or "auto"; None: the space's `grace_period:`, else DEFAULT_GRACE_PERIOD
    reduction_factor: int = 3
    concurrent: int | None = None  # None: as many as the resources allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: one GPU per trial where the cluster has GPUs, else 0
    storage: str = "tune_runs"  # a folder, or object storage (s3://bucket/prefix: bmlr.tuning.remote)
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite in <storage>
    experiment: str | None = None  # None: bmlr-tune-<dataset>
    name: str | None = None  # None: <method>-<timestamp>
    seed: int = 0
    max_failures: int = 0
    score: str | None = None  # the trial score rule (bmlr.tuning.scores); None: the space's, else "best"
    scheduler: str | None = None  # asha | hyperband | none (ray_backend.SCHEDULERS); None: the space's, else asha
    confirm: int = 0  # the confirmation stage (bmlr.tuning.confirm): how many top configurations; 0: none
    confirm_seeds: int = 3  # the new training seeds each of them gets
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
    # TPE's random start-up trials draw common random numbers (bmlr.tuning.crn_sampler): a key's
    # value in trial k depends on the seed, the key and k only; a comparison's rows set it
    crn: bool = False
    # after the search, train the method untuned and the baseline counterpart once each and print
    # the winner against them (bmlr.tuning.references); the command line turns it on for synthetic
    references: bool = False

    def check(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise StudyError(message)

        need(self.samples >= 1, f"--samples must be >= 1, got {self.samples}")
        need(self.max_epochs is None or self.max_epochs >= 1, f"--max-epochs must be >= 1, got {self.max_epochs}")
        need(self.grace_period in (None, AUTO) or (isinstance(self.grace_period, int) and self.grace_period >= 1),
             f"--grace-period must be >= 1 or {AUTO}, got {self.grace_period}")
        need(self.reduction_factor >= 2, f"--reduction-factor must be >= 2, got {self.reduction_factor}")
        need(self.concurrent is None or self.concurrent >= 1, f"--concurrent must be >= 1, got {self.concurrent}")
        need(self.cpus_per_trial > 0, f"--cpus-per-trial must be > 0, got {self.cpus_per_trial}")
        need(self.gpus_per_trial is None or self.gpus_per_trial >= 0,
             f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")
        need(0 <= self.seed < 2**32, f"--seed must be from 0 to 2**32 - 1 (NumPy's and Optuna's seeds), got "
                                     f"{self.seed}")
        need(self.max_failures >= 0, f"--max-failures must be >= 0, got {self.max_failures}")
        need(self.confirm == 0 or self.confirm >= 2, f"--confirm must be 0 (none) or >= 2 configurations, got "
                                                     f"{self.confirm}")
        need(self.scheduler is None or self.scheduler in SCHEDULERS,
             f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        need(self.confirm_seeds >= 1, f"--confirm-seeds must be >= 1, got {self.confirm_seeds}")
        need(self.kind in ("search", "surface"), f"unknown study kind {self.kind!r}")
        try:
            check_name(self.dataset, "--dataset")
            if self.name is not None:
                check_name(self.name)
        except StoreError as err:
            raise StudyError(str(err)) from None


@dataclass(frozen=True)
class Runtime:
    """How this process runs a study; none of it is recorded (a resume may change it): the Ray
    cluster (``address``, else a local one of ``num_cpus``), Ray's verbosity, the rows of the
    summary table, where the lines go, and the report at the end (``full``/``fast``: the same;
    ``none``) with the study whose best trial its learning curves compare with."""

    address: str | None = None
    num_cpus: int | None = None
    verbose: int = 1
    top: int = 5
    log: Callable[[str], None] = print
    report: str = "fast"
    baseline_study: str | None = None


@dataclass
class Plan:
    """A study resolved and checked, ready to run."""

    settings: StudySettings
    study_dir: Path
    space: SearchSpace  # what the trials search: the method's view of `source_space`
    source_space: SearchSpace  # the space as given (its text is the folder's search_space.yaml)
    production: Config  # fixed + overrides: what best.yaml builds on (full epochs, all seeds)
    # what every trial trains: the production configuration (its `epochs` is the learning-rate
    # schedule's horizon) with the study's one seed; it stops after `max_epochs`
    trial_base: dict[str, Any]
    max_epochs: int
    rule: ScoreRule  # the trial score rule: the command line's, else the search space's, else best
    tracking_uri: str
    experiment_id: str | None  # None until open_experiment() (a new study: once its data are ready)
    parent_run_id: str | None = None
    resumed: bool = False
    lock: StudyLock | None = None  # the study folder's driver lock, held until release()

    @property
    def store(self) -> StudyStore:
        return StudyStore(self.study_dir)

    @property
    def strategy(self) -> Strategy:
        """How the study chooses its trials (:mod:`bmlr.tuning.strategies`)."""
        return strategy_for(self.settings)

    @property
    def mirror(self) -> remote.Mirror | None:
        """The study folder's place in object storage (None on a local storage)."""
        return remote.Mirror.of(self.settings.storage, self.study_dir)

    def ray_storage(self, ray_dir: Path) -> tuple[str, Any]:
        """``(storage_path, storage_filesystem)`` of a Ray Tune experiment folder of the study:
        its parent folder, or its place in object storage."""
        mirror = self.mirror
        return mirror.ray_storage(ray_dir) if mirror is not None else (str(Path(ray_dir).parent), None)

    def pull_records(self) -> None:
        """On object storage: what Ray and the trials wrote there (``ray/``, ``confirm/``,
        ``trials/``), into the driver's copy before it reads them."""
        if self.mirror is not None:
            self.mirror.pull(only=("ray", "confirm", "trials"))

    @property
    def runs(self) -> tracking.StudyRuns:
        """The study's MLflow runs (once its parent run exists)."""
        return tracking.StudyRuns(self.tracking_uri, self.experiment_id, self.parent_run_id)

    def trainable(self, max_epochs: int | None = None):
        """The study's trial function with its resources and fixed arguments (Ray Tune's
        trainable): every trial trains ``max_epochs`` (default the study's) of the production
        configuration with the study's score rule."""
        s, store = self.settings, self.store
        return ray_backend.with_resources(train_trial, s.cpus_per_trial, s.gpus_per_trial, base=self.trial_base,
                                          state_dir=str(store.state_dir), threads=self.production.threads,
                                          extras_dir=str(store.extras_dir), max_epochs=max_epochs or self.max_epochs,
                                          rule=self.rule, mirror=self.mirror)

    def trial_logger(self, max_epochs: int | None = None,
                     confirms: dict[str, str | None] | None = None) -> tracking.MLflowTrialLogger:
        """The callback that logs each trial as an MLflow run nested under the study's parent run
        (a confirmation's under the trial it ``confirms``)."""
        return tracking.MLflowTrialLogger(
            tracking_uri=self.tracking_uri, experiment_id=self.experiment_id, parent_run_id=self.parent_run_id,
            base_config=self.trial_base, max_epochs=max_epochs or self.max_epochs,
            export_epochs=self.production.epochs, export_seeds=self.production.seeds, study=self.settings.name,
            state_dir=str(self.store.state_dir), extras_dir=str(self.store.extras_dir), order=list(self.space.params),
            confirms=confirms, mirror=self.mirror)

    def open_experiment(self) -> str:
        """The study's MLflow experiment, created where new. A new study opens it only once its
        data are ready, so that a data error leaves no experiment (nor a new store) behind."""
        if self.experiment_id is None:
            try:
                self.experiment_id = tracking.get_or_create_experiment(self.tracking_uri, self.settings.experiment,
                                                                       _artifact_location(self.settings))
            except tracking.TrackingError as err:
                raise StudyError(str(err)) from None
        return self.experiment_id

    def release(self) -> None:
        """Let another driver run (or resume) the study."""
        if self.lock is not None:
            self.lock.release()


@dataclass
class StudyOutcome:
    study_dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_yaml: Path | None
    parent_run_id: str
    tracking_uri: str
    interrupted: bool


def resume_store(settings: StudySettings) -> StudyStore:
    """The study `--resume` continues: ``settings.folder``, else study ``settings.name`` under
    ``<storage>/<dataset>``, else the most recent one there."""
    try:
        if settings.folder:
            store = StudyStore(settings.folder)
            if not store.exists():
                raise StudyError(f"--resume: {store.info_path} not found")
            return store
        return StudyStore(find_study(settings.storage, settings.dataset, settings.name))
    except StoreError as err:
        raise StudyError(str(err)) from None


def plan_study(settings: StudySettings, resume: bool = False, log: Callable[[str], None] = print,
               space: SearchSpace | None = None, lock: bool = True) -> Plan:
    """Resolve the settings once (:func:`resolve_settings`), validate the search space
    (``space``, else the file ``settings.search_space``; a resumed study: its own copy) and the
    configuration, check the data root and the tracking store. Nothing is written except the
    tracking store's folder and, with ``lock``, the study folder's driver lock: taken before the
    study's exists-check (a resumed study: before its settings are read) and held by the
    returned plan until ``plan.release()``; StudyBusy (a StoreError) where another driver runs
    the study."""
    settings.check()
    settings = replace(settings, storage=remote.resolve(settings.storage))
    held: StudyLock | None = None
    try:
        if resume:
            found = resume_store(settings)
            held = found.lock() if lock else None
            store, settings, source = _stored(settings, log, found)
            study_dir, parent_run_id = store.dir, store.read_info()["parent_run_id"]
        else:
            parent_run_id = None
            source = space if space is not None else load_search_space(settings.search_space)
            if space is None:
                settings = replace(settings, search_space=str(abs_path(settings.search_space)))
        settings, flat, production, rule = resolve_settings(settings, source)
        max_epochs = settings.max_epochs or source.max_epochs or production.epochs
        # a trial has no source run (a base from an exported best.yaml would carry an older one)
        trial_base = {**production.to_dict(), "seeds": [settings.seed], "name": None, "source": None}
        if not resume:
            study_dir, held = _new_study_dir(settings, lock)
        experiment_id = _check_tracking(settings, open_experiment=resume)
        plan = Plan(settings=settings, study_dir=study_dir, space=flat, source_space=source, production=production,
                    trial_base=trial_base, max_epochs=max_epochs, rule=rule, tracking_uri=settings.tracking_uri,
                    experiment_id=experiment_id, parent_run_id=parent_run_id, resumed=resume, lock=held)
        if parent_run_id is not None:
            _check_parent_run(settings.tracking_uri, parent_run_id)
        return plan
    except BaseException:
        if held is not None:
            held.release()
        raise


def resolve_settings(given: StudySettings, source: SearchSpace) -> tuple[StudySettings, SearchSpace, Config,
                                                                         ScoreRule]:
    """The settings with every default filled in, once: the data root, method, score rule,
    scheduler, ASHA's grace period, the study's name, the tracking URI and experiment (what
    ``study.json`` records); with them the method's view of the space, the production
    configuration and the score rule as an object."""
    data_root = _data_root(given)
    method = given.method or source.fixed.get("method") or "bmlr"
    flat, production = _resolve(given, source, method, data_root)
    try:
        rule = parse_score(given.score or source.score, "--score" if given.score else f"{source.source}: score")
    except ScoreError as err:
        raise StudyError(str(err)) from None
    _check_device(given, production)
    max_epochs = given.max_epochs or source.max_epochs or production.epochs
    if not production.threads:  # the thread count the trial runs with, recorded: numbers depend on it
        production.threads = max(1, int(given.cpus_per_trial))
    storage = remote.local_root(given.storage)
    settings = replace(given, data_root=data_root, method=method, score=rule.name,
                       scheduler=given.scheduler or source.scheduler or "asha",
                       grace_period=resolve_grace(given, source, max_epochs),
                       name=given.name or f"{method}-{timestamp()}",
                       tracking_uri=(given.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                                     or tracking.default_tracking_uri(storage)),
                       experiment=(given.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                                   or f"bmlr-tune-{given.dataset}"))
    return settings, flat, production, rule


def _new_study_dir(settings: StudySettings, lock: bool) -> tuple[Path, StudyLock | None]:
    """A new study's folder, locked (with ``lock``) before its exists-check: a second driver
    cannot pass it too; a folder that is not a study's is never written."""
    study_dir = (abs_path(settings.folder) if settings.folder else
                 study_folder(settings.storage, settings.dataset, settings.name))
    held = StudyStore(study_dir).lock() if lock else None
    try:
        if StudyStore(study_dir).exists():
            raise StudyError(f"study {study_dir} exists; continue it with --resume --name {settings.name} "
                             f"or choose another --name")
        StudyStore(study_dir).check_unclaimed()
    except BaseException:
        if held is not None:
            held.release()
        raise
    return study_dir, held


def _stored(given: StudySettings, log: Callable[[str], None],
            store: StudyStore) -> tuple[StudyStore, StudySettings, SearchSpace]:
    """A resumed study's store, its stored settings (a note for each the command line would
    change) and its copy of the search space."""
    try:
        settings = StudySettings(**store.settings())
    except StoreError as err:
        raise StudyError(str(err)) from None
    settings = replace(settings, tracking_uri=remote.store_here(settings.storage, settings.tracking_uri))
    for key in RESUME_KEEPS:
        new, old = getattr(given, key), getattr(settings, key)
        if new not in (None, {}, StudySettings.__dataclass_fields__[key].default) and new != old:
            log(f"note: --resume keeps the study's {key} = {old!r} (ignoring {new!r})")
    space = load_search_space(store.space_path)
    log(f"resuming study {store.dir}")
    return store, settings, space


def _data_root(settings: StudySettings) -> str | None:
    """The data root as an absolute path (None: the data set's default), checked."""
    if not settings.data_root:
        return None
    root = abs_path(settings.data_root)
    if not root.is_dir():
        raise StudyError(f"data root not found: {root} (--data-root)")
    return str(root)


def _resolve(settings: StudySettings, space: SearchSpace, method: str,
             data_root: str | None) -> tuple[SearchSpace, Config]:
    """The method's view of the space and the production configuration (its fixed part, the
    command line's --set values, the data set and method)."""
    for key in settings.overrides:
        if key in space.params:
            raise SearchSpaceError(f"--set {key}=...: {key!r} is searched in {space.source}; "
                                   f"remove it from --set or from the search space")
        if key in COMMAND_LINE_KEYS or key == "data_root":
            raise StudyError(f"--set {key}=...: use --{key.replace('_', '-')} instead")
        if key not in FIELD_NAMES and not key.startswith(METHOD_ARGS_PREFIX):
            raise StudyError(f"--set {key}=...: {key!r} is not a configuration key{closest_key(key)} (the keys and "
                             f"their defaults: Config in bmlr/config.py)")
    if "dataset" in space.fixed and space.fixed["dataset"] != settings.dataset:
        raise SearchSpaceError(f"{space.source}: fixed.dataset: {space.fixed['dataset']!r} does not match "
                               f"--dataset {settings.dataset!r}")
    if "method" in space.params:
        raise SearchSpaceError(f"{space.source}: search.method: the method is chosen with --method")
    flat = space.for_method(method)  # its methods.<name> section; no budget on keys it ignores
    fixed = {**settings.overrides, "dataset": settings.dataset, "method": method}
    if data_root:
        fixed["data_root"] = data_root
    if fixed.get("cache_dir"):
        fixed["cache_dir"] = str(abs_path(fixed["cache_dir"]))
    try:
        production = flat.base_config(fixed, source=f"{flat.source} (fixed) with the command line")
    except ConfigError as err:
        raise SearchSpaceError(str(err)) from None
    return flat, production


def _check_device(settings: StudySettings, production: Config) -> None:
    """A CUDA device where trials get no GPU would fail every trial: StudyError before anything
    is created. Without --gpus-per-trial, a driver with no CUDA is taken to mean a cluster without
    GPUs (a GPU cluster driven from a CPU machine: pass --gpus-per-trial)."""
    import torch

    if not production.device.startswith("cuda"):
        return
    if settings.gpus_per_trial == 0 or (settings.gpus_per_trial is None and not torch.cuda.is_available()):
        why = "--gpus-per-trial 0" if settings.gpus_per_trial == 0 else "no CUDA here"
        raise StudyError(f"device {production.device!r} (--set device, or the search space's fixed.device), but the "
                         f"trials get no GPU ({why}); use device auto or cpu, or pass --gpus-per-trial on a GPU "
                         f"cluster")


def resolve_grace(settings: StudySettings, space: SearchSpace, max_epochs: int) -> int | str:
    """ASHA's grace period: the command line's (an error where it exceeds a trial's epochs), else
    the search space's `grace_period:` (at most a trial's epochs: a shorter study, e.g.
    `--max-epochs 2`, cannot wait longer), else DEFAULT_GRACE_PERIOD ("auto": measured)."""
    given = settings.grace_period
    if given is not None:
        if given != AUTO and given > max_epochs:
            raise StudyError(f"--grace-period {given} exceeds the {max_epochs} epochs a trial trains")
        return given
    grace = space.grace_period or DEFAULT_GRACE_PERIOD
    return grace if grace == AUTO else min(grace, max_epochs)


def _check_tracking(settings: StudySettings, open_experiment: bool) -> str | None:
    """The tracking store checked, and with ``open_experiment`` the experiment's id (else None:
    :meth:`Plan.open_experiment` creates it when the study starts)."""
    try:
        tracking.check_reachable(settings.tracking_uri)
        return tracking.get_or_create_experiment(settings.tracking_uri, settings.experiment,
                                                 _artifact_location(settings)) if open_experiment else None
    except tracking.TrackingError as err:
        raise StudyError(str(err)) from None


def _artifact_location(settings: StudySettings) -> str | None:
    """A new experiment's artifact location: beside the study folders on object storage, else
    the tracking store's default."""
    return f"{settings.storage}/{remote.ARTIFACTS}" if remote.is_uri(settings.storage) else None


def _check_parent_run(uri: str, run_id: str) -> None:
    try:
        tracking.check_run(uri, run_id)
    except tracking.TrackingError as err:
        raise StudyError(f"--resume: the study's MLflow parent run {run_id} is not in {uri} "
                         f"({err}); resume with the tracking URI the study used") from None
