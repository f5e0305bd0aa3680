"""The search machinery as objects, composed the way Ray Tune's examples compose them: a
searcher (Optuna's TPE or random sampler behind ``OptunaSearch``) and a scheduler (ASHA or
FIFO). The product (``bmlr.tuning.study``) and the benchmarks (``bench/bench_search.py``)
both build them here, so a benchmark measures what users run.

The searcher is told the metric it learns from (``OptunaSearch`` builds its Optuna study
from it); the scheduler gets a metric only where it differs from the ``tune.TuneConfig``'s
(a benchmark replaying ASHA on another signal), since Ray refuses one set in both places.

The rest is the plumbing every Ray user here needs: the environment Ray Tune reads
(:func:`quiet_ray`), starting or joining a cluster (:func:`ray_session`), a trainable with its
resources (:func:`with_resources`, checked against the cluster by :func:`check_resources`), and the ``tune.Tuner`` itself (:func:`build_tuner`,
:func:`restore_tuner`), so a study, a staged search and a comparison run Ray the same way.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

__all__ = ["METRIC", "MODE", "TIME_ATTR", "SCHEDULERS", "AUTO", "RayStartError", "ResourceError", "LOOPBACK",
           "CONNECT_TIMEOUT_S", "address_host_port", "cluster_address", "check_address", "check_local",
           "check_resources",
           "make_sampler", "make_searcher", "make_scheduler", "hyperband_brackets",
           "quiet_ray", "init_ray", "ray_session", "gpus_per_trial", "with_resources", "grid_param_space",
           "trial_dirname", "ray_verbosity", "build_tuner", "restore_tuner"]

METRIC = "score"  # the trial's score so far (bmlr.tuning.scores: its rule over the validation accuracies)
MODE = "max"
TIME_ATTR = "epoch"  # ASHA's time axis: our own epoch counter, correct after a restore too
SCHEDULERS = ("asha", "hyperband", "none")  # a study's early stopping (`scheduler:`, --scheduler; make_scheduler)
AUTO = "auto"  # the grace period that the study measures (bmlr.tuning.calibrated_asha)


class RayStartError(RuntimeError):
    """Ray could not be started or reached; the message says where and why."""


class ResourceError(RayStartError):
    """A trial asks for more CPUs or GPUs than any node of the cluster has: it would wait forever."""


LOOPBACK = "127.0.0.1"  # where a local Ray instance listens (its GCS, raylet, workers and the driver)
RAY_GCS_PORT, RAY_CLIENT_PORT = 6379, 10001  # Ray's default ports of a head node (`ray start --head`)
CONNECT_TIMEOUT_S = 15.0  # how long --address waits for a cluster to answer (--connect-timeout)


def make_sampler(kind: str = "tpe", seed: int = 0, n_startup_trials: int | None = None, crn: bool = False):
    """An Optuna sampler: ``tpe`` (TPE; ``n_startup_trials`` random trials first, Optuna's
    default 10 where None) or ``random``. ``crn`` (tpe only): the start-up trials draw common
    random numbers (:class:`bmlr.tuning.crn_sampler.CommonRandomSampler`: a key's value in
    trial k depends on the seed, the key and k only), so the rows of a comparison that search
    the same key try the same values of it."""
    import optuna

    if kind == "tpe":
        extra = {} if n_startup_trials is None else {"n_startup_trials": n_startup_trials}
        tpe = optuna.samplers.TPESampler(seed=seed, **extra)
        if not crn:
            return tpe
        from bmlr.tuning.crn_sampler import CommonRandomSampler, tpe_startup_trials

        startup = tpe_startup_trials() if n_startup_trials is None else n_startup_trials
        return CommonRandomSampler(tpe, seed, startup)
    if crn:
        raise ValueError(f"common random numbers (crn) are for the tpe sampler, not {kind!r}")
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {kind!r} (tpe, random)")


def make_searcher(space: Mapping[str, Any], sampler=None, seed: int = 0, metric: str = METRIC,
                  mode: str = MODE, warm_start: Sequence[Mapping[str, Any]] = (),
                  first: Sequence[Mapping[str, Any]] = (), journal: Path | None = None, study_name: str | None = None):
    """``OptunaSearch`` over ``space`` (Optuna distributions by key), learning from ``metric``
    (TPE with ``seed`` unless a ``sampler`` is given). ``warm_start``: results Optuna is told
    before it samples (``{"params": {...}, "value": v}``), not trained again. ``first``: points
    trained before any is sampled (Ray's ``points_to_evaluate``; keys left out are sampled); not
    with ``warm_start`` (Ray takes one list of points, all with results or none). ``journal``:
    the Optuna study is kept in that file (Optuna's ``JournalStorage``, one appended line per
    change, named ``study_name``) as trials finish, so ``optuna-dashboard FILE`` shows it live;
    a file there already is replaced (a searcher built afresh starts a fresh record)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if warm_start and first:
        raise ValueError("make_searcher: warm_start and first cannot be combined")
    points = [dict(w["params"]) for w in warm_start] or [dict(p) for p in first]
    storage = None
    if journal is not None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        journal.parent.mkdir(parents=True, exist_ok=True)
        journal.unlink(missing_ok=True)
        storage = JournalStorage(JournalFileBackend(str(journal)))
    return OptunaSearch(space=dict(space), metric=metric, mode=mode,
                        sampler=sampler if sampler is not None else make_sampler("tpe", seed),
                        points_to_evaluate=points or None, study_name=study_name, storage=storage,
                        evaluated_rewards=[float(w["value"]) for w in warm_start] or None)


def hyperband_brackets(max_t: int, grace_period: int, reduction_factor: int) -> int:
    """Hyperband's number of brackets: one per rung a trial could first be judged at, from
    ``grace_period`` up to ``max_t`` (1 + floor(log_rf(max_t / grace)), at least 1)."""
    brackets, first = 1, grace_period * reduction_factor
    while first <= max_t:
        brackets, first = brackets + 1, first * reduction_factor
    return brackets


def make_scheduler(kind: str = "asha", max_t: int = 1, grace_period: int | str = 1, reduction_factor: int = 3,
                   metric: str | None = None, mode: str | None = None, record: Path | None = None):
    """``asha`` (Ray's ``ASHAScheduler`` on the epoch axis, one bracket), ``hyperband`` (the same
    with every bracket, :func:`hyperband_brackets`: trials are spread over brackets whose first
    rung is the grace period, grace x factor, ...; a hedge for learning curves that rank
    configurations late, e.g. a weak modality that starts learning after some epochs), or
    ``none`` / ``fifo`` (every trial trained to the end: grids, random-search baselines).

    ``grace_period="auto"``: the grace period measured on the first trials that run to the end
    (:class:`bmlr.tuning.calibrated_asha.CalibratedASHA`, its decision written to ``record``)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if kind in ("fifo", "none"):
        return FIFOScheduler()
    if kind not in ("asha", "hyperband"):
        raise ValueError(f"unknown scheduler {kind!r} ({', '.join(SCHEDULERS)}, fifo)")
    if grace_period == AUTO:
        from bmlr.tuning.calibrated_asha import CalibratedASHA

        brackets = functools.partial(hyperband_brackets, max_t) if kind == "hyperband" else None
        scheduler = CalibratedASHA(TIME_ATTR, max_t, reduction_factor, brackets=brackets, record=record)
        if metric is not None:
            scheduler.set_search_properties(metric, mode)
        return scheduler
    extra = {} if metric is None else {"metric": metric, "mode": mode}
    brackets = 1 if kind == "asha" else hyperband_brackets(max_t, grace_period, reduction_factor)
    return ASHAScheduler(time_attr=TIME_ATTR, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=brackets, **extra)


# --- the cluster ----------------------------------------------------------------------------------
def quiet_ray(verbose: int) -> None:
    """Ray Tune settings read from the environment (a user's own values win)."""
    # snapshot the experiment state often: a killed driver then loses little (Ray's default is >= 10 s)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "3")
    # one checkpoint kept per trial forces frequent snapshots; Ray warns about each one
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray_verbosity(verbose)


def init_ray(address: str | None, num_cpus: int | None, verbose: int) -> bool:
    """Connect to a cluster (``address``, else ``$RAY_ADDRESS`` as Ray reads it) or start a
    local one; True if Ray was started here
    (False: it was already running in this process). :class:`RayStartError` if it cannot."""
    import ray

    if ray.is_initialized():
        return False
    address = cluster_address(address)
    env = {k: os.environ[k] for k in ("BMLR_CACHE",) if k in os.environ}
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=verbose >= 2,
                                  logging_level=logging.INFO if verbose >= 2 else logging.WARNING,
                                  runtime_env={"env_vars": env} if env else None)
    check_address(address)  # Ray's own connect retries for many minutes
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:  # "local": a new instance even where `ray start` left a cluster running
            with _loopback_only():
                ray.init(address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK, **kwargs)
    except Exception as err:  # Ray raises many kinds (ConnectionError, RuntimeError, ValueError...)
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise RayStartError(f"cannot start or connect to {where}: {err}") from None
    finally:
        _restore_sigterm_handler(sigterm)
    return True


def address_host_port(address: str) -> tuple[str, int]:
    """The host and port ``--address`` names (``host:port``, ``host`` for Ray's default port
    6379, ``ray://host:port`` for Ray Client, default port 10001); RayStartError where it names none."""
    client = address.startswith("ray://")
    try:
        parts = urllib.parse.urlsplit("//" + address.removeprefix("ray://"))
        host, port = parts.hostname, parts.port or (RAY_CLIENT_PORT if client else RAY_GCS_PORT)
    except ValueError as err:
        raise RayStartError(f"--address {address!r}: expected host:port, e.g. 127.0.0.1:6379 ({err})") from None
    if not host:
        raise RayStartError(f"--address {address!r}: expected host:port, e.g. 127.0.0.1:6379")
    return host, port


def cluster_address(address: str | None) -> str | None:
    """``address``, else ``$RAY_ADDRESS`` (Ray's own convention), else None: a local instance."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_address(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """RayStartError within ``timeout`` seconds where nothing answers at the cluster address
    (``auto`` and a local instance: nothing to check). A refused connection is tried again
    every half second until then (a head node that is still starting); Ray's own connect
    would retry for many minutes. Run before anything of a study is created."""
    if not address or address in ("auto", "local"):
        return
    host, port = address_host_port(address)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, left))):
                return
        except OSError as err:
            if left <= 0.5:
                raise RayStartError(
                    f"--address {address}: no Ray cluster answers at {host}:{port} ({err.strerror or err}; tried for "
                    f"{timeout:g} s); start it (`ray start --head --port {port}`), fix --address, or wait longer with "
                    f"--connect-timeout") from None
            time.sleep(0.5)


def check_local(num_cpus: int | None, cpus_per_trial: float, gpus_per_trial: float | None) -> None:
    """Where Ray starts a local instance (no ``--address``): the checks that need no Ray, run
    before anything is created. ResourceError where a trial asks for more than this machine
    gives Ray, which would only be found once the study had started."""
    if num_cpus is not None and num_cpus < 1:
        raise RayStartError(f"--num-cpus must be >= 1, got {num_cpus}")
    node = {"CPU": num_cpus or os.cpu_count() or 1, "GPU": _local_gpus()}
    local = "the local Ray instance" + (" (--num-cpus)" if num_cpus else "")
    _check_fit(cpus_per_trial, gpus_per_trial or 0, [node], local, "Ask for less, or --address a cluster that has it")


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _restore_sigterm_handler(handler) -> None:
    """``ray.init`` replaces the process's SIGTERM handler (with a bare ``sys.exit``, and a C++
    failure handler that aborts): put back the one set from Python before it (the command
    line's SIGTERM-as-Ctrl-C, :func:`bmlr.train.sigterm_as_ctrl_c`), where there was one."""
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """A local instance on :data:`LOOPBACK` only: Ray would otherwise replace a loopback
    ``_node_ip_address`` with the machine's routable address (its servers then listen on every
    interface). ``ENABLE_RAY_CLUSTER`` is the switch Ray itself uses for local-only instances
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``; read when Ray is imported, so set here for the start)."""
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):  # another Ray: its own default applies
        yield
        return
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None, verbose: int) -> Iterator[bool]:
    """:func:`quiet_ray` and :func:`init_ray` for the block; Ray is shut down after it only
    where it was started here. Yields whether it was."""
    import ray

    quiet_ray(verbose)
    started = init_ray(address, num_cpus, verbose)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()


def gpus_per_trial(requested: float | None) -> float:
    """``--gpus-per-trial``, or without it one whole GPU per trial where the Ray cluster has GPUs
    (Ray hides the GPUs from a trial that asks for none, so 0 would silently train on CPU).
    Packing several trials on a GPU (0.5, 0.25) is the user's choice: it pays only for models
    too small to fill a GPU, and it was not measured here (docs/performance.md)."""
    if requested is not None:
        return requested
    import ray

    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def check_resources(cpus: float, gpus: float) -> None:
    """:class:`ResourceError` where no live node of the connected cluster has ``cpus`` CPUs and
    ``gpus`` GPUs (a trial's resources must fit on one node; Ray would keep it PENDING forever).
    Skipped on a cluster-launcher cluster (``~/ray_bootstrap_config.yaml``, the file Ray Tune
    itself looks for): its autoscaler adds nodes as trials ask for them."""
    import ray

    if Path("~/ray_bootstrap_config.yaml").expanduser().exists():
        return
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    _check_fit(cpus, gpus, nodes, "the Ray cluster", "Ask for less, or give Ray more (--num-cpus; --address of a "
               "cluster with GPUs)")


def _check_fit(cpus: float, gpus: float, nodes: list[dict[str, float]], cluster: str, todo: str) -> None:
    """ResourceError (saying ``todo``) where no node of ``nodes`` has ``cpus`` CPUs and ``gpus``
    GPUs: a trial's resources must fit on one node, or Ray keeps it PENDING forever."""
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return
    have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes) or "no live node"
    raise ResourceError(
        f"each trial asks for {cpus:g} CPUs and {gpus:g} GPUs (--cpus-per-trial, --gpus-per-trial), but no node of "
        f"{cluster} has that much (nodes: {have}), so no trial could ever start. {todo}")


# --- the tuner ------------------------------------------------------------------------------------
def with_resources(fn: Callable, cpus: float, gpus: float | None, **parameters: Any):
    """The function trainable ``fn`` with ``parameters`` passed by ``tune.with_parameters`` (put
    in Ray's object store once, not pickled into every trial) and its resources per trial
    (``gpus`` None: :func:`gpus_per_trial`)."""
    from ray import tune

    gpus = gpus_per_trial(gpus)
    check_resources(cpus, gpus)
    return tune.with_resources(tune.with_parameters(fn, **parameters), {"cpu": cpus, "gpu": gpus})


def grid_param_space(choices: Mapping[str, Sequence[Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Every combination of ``choices`` times every training seed (``seeds`` as one-seed lists,
    the way a trial's configuration holds them): Ray's grid search, no searcher."""
    from ray import tune

    space: dict[str, Any] = {k: tune.grid_search(list(v)) for k, v in choices.items()}
    space["seeds"] = tune.grid_search([[int(seed)] for seed in seeds])
    return space


def trial_dirname(trial) -> str:
    """Short trial folder names (Ray's default embeds every parameter)."""
    return f"trial_{trial.trial_id}"


def ray_verbosity(verbose: int) -> int:
    """Ray Tune's own verbosity for a study's ``-v``: its full output at 2, none below (at 1 the
    study's progress speaks instead, :mod:`bmlr.tuning.progress`). Below 2 it also chooses Ray's
    legacy output engine (``RAY_AIR_NEW_OUTPUT=0``, unless the user set it), since the new one
    prints its header and its final table even when silent."""
    if verbose >= 2:
        return verbose
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return 0


def build_tuner(trainable, ray_dir: Path, callbacks: Sequence[Any] = (), searcher=None, scheduler=None,
                num_samples: int = 1, concurrent: int | None = None, max_failures: int = 0, verbose: int = 1,
                param_space: Mapping[str, Any] | None = None, progress=None,
                storage: tuple[str, Any] | None = None):
    """A ``tune.Tuner`` whose experiment lives in ``ray_dir``, selecting on :data:`METRIC`. Trials
    reuse their worker (no new process and imports per trial); a failed trial is retried
    ``max_failures`` times and never stops the others. ``verbose`` (:func:`ray_verbosity`): 0
    prints nothing, 1 the progress callback ``progress`` (default: a
    :class:`~bmlr.tuning.progress.StudyProgress` that names no best) instead of Ray's output, 2
    Ray's full output and the progress. ``storage``: ``(storage_path, storage_filesystem)`` where
    the experiment is not in ``ray_dir``'s parent on this disk (object storage)."""
    from ray import tune

    from bmlr.tuning.progress import StudyProgress

    callbacks = list(callbacks)
    storage_path, filesystem = storage or (str(Path(ray_dir).parent), None)
    if verbose >= 1:
        callbacks.append(progress if progress is not None else StudyProgress(metric=METRIC))
    return tune.Tuner(
        trainable, param_space=dict(param_space) if param_space is not None else None,
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher, scheduler=scheduler,
                                    num_samples=num_samples, max_concurrent_trials=concurrent, reuse_actors=True,
                                    trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=Path(ray_dir).name, storage_path=storage_path, storage_filesystem=filesystem, callbacks=callbacks,
            verbose=ray_verbosity(verbose),
            failure_config=tune.FailureConfig(max_failures=max_failures, fail_fast=False)))


def restore_tuner(ray_dir: Path, trainable, storage: tuple[str, Any] | None = None):
    """The tuner of an interrupted experiment in ``ray_dir`` (on object storage: ``storage`` as
    for :func:`build_tuner`), continuing its unfinished trials (failed ones stay failed), or None
    where Ray has nothing to restore there."""
    from ray import tune

    path, filesystem = (f"{storage[0]}/{Path(ray_dir).name}", storage[1]) if storage else (str(ray_dir), None)
    if not tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        return None
    return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                              restart_errored=False, storage_filesystem=filesystem)
