"""The MLflow store, for production training and tuning alike: checking that a store can be
used before anything runs, opening an experiment, and reading back a trial's configuration.

Kept in `bmlr/` (below `bmlr.tuning`, which re-exports these names from
`bmlr.tuning.tracking` and `bmlr.tuning.export`) so that `python -m bmlr.train` logs to and
reads from a study's store without importing Ray. MLflow is imported inside the functions:
training without tracking never loads it.

* :func:`check_reachable` fails fast where a server does not answer (no retry loop) and
  creates a new SQLite store's folder; :func:`check_store` is for a store that must already
  exist (one named by a study or a run id): it never creates a database file. Both refuse a
  SQLite store whose creation was interrupted (:func:`check_intact`).
* A new SQLite store is created whole or not at all (:func:`ensure_store`, run by
  :func:`client_for` and :func:`get_or_create_experiment`): MLflow's schema migrations take
  seconds and are not transactional, so its schema is built in a temporary file beside the
  database, under :func:`store_lock`, and moved into place with ``os.replace``. A Ctrl-C,
  SIGTERM or kill -9 meanwhile leaves no database (the next creator removes the temporary
  file), never a half-migrated one.
* :func:`fetch_trial` reads a trial run's configuration as trained (its `config.yaml`
  artifact, else its params), its production epochs and seeds (tags `export.epochs`,
  `export.seeds`) and where it came from (a Config `source` mapping); a study's parent run
  (tag `best_run_id`) stands for its best trial.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import socket
import sqlite3
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from bmlr.config import FIELD_NAMES, Config, beside_study
from bmlr.fileio import TMP_MARK, tmp_path_for

__all__ = ["store_of", "TrackingError", "EXPERIMENT_KIND_TAG", "EXPERIMENT_KIND", "STORE_HINT", "BEST_MARK", "TrialRun",
           "default_tracking_uri", "check_reachable", "check_store", "artifact_location_for", "client_for",
           "store_lock", "get_or_create_experiment", "fetch_trial", "sqlite_path", "check_intact", "ensure_store",
           "git_commit", "source_tags"]

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# MLflow 3's experiment type: its UI opens a "custom model development" experiment on the runs table
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# where a user finds the store of a study, named by every "cannot find it" message
STORE_HINT = ("pass the study's store with --tracking-uri (e.g. sqlite:////abs/path/tune_runs/mlflow.db or "
              "http://127.0.0.1:5000), --storage <the study's --storage folder> or MLFLOW_TRACKING_URI")
BEST_MARK = "★ "  # leads the run name of a study's best trial (bmlr.tuning.run_view marks it)


class TrackingError(RuntimeError):
    """The tracking server or store cannot be used, or a run cannot be read from it."""


def git_commit(root: Path) -> str | None:
    """The commit checked out at ``root``, marked ``-dirty`` where tracked files changed; None
    outside a git checkout (an installed package)."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def source_tags(commit: str | None, entry_point: str) -> dict[str, str]:
    """MLflow's standard source tags, as its fluent API sets them on a run it starts (a client's
    ``create_run`` sets none): the command, LOCAL, the user and the git commit (bare: the
    ``-dirty`` mark stays in the ``git_commit`` tag)."""
    import getpass

    tags = {"mlflow.source.name": entry_point, "mlflow.source.type": "LOCAL"}
    with contextlib.suppress(Exception):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    if commit:
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    return tags


def default_tracking_uri(storage: Path) -> str:
    """The SQLite store of a study's ``--storage`` folder (an absolute path)."""
    return f"sqlite:///{Path(storage).resolve() / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (no retry loop) when an HTTP tracking server does not answer, and
    when a SQLite store's folder cannot be created."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                response.read(64)
        except urllib.error.HTTPError as err:
            if err.code >= 500:
                raise TrackingError(f"tracking server {uri} answered {err.code} to {url}") from None
            # a server without /health (a proxy, Databricks): it answered, so it is reachable
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(f"tracking server {uri} is not reachable ({reason}); start it "
                                f"(e.g. `mlflow server --host 127.0.0.1 --port 5000`) or pass another "
                                f"--tracking-uri") from None
    elif parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):]
        if not path.startswith("/"):
            raise TrackingError(f"tracking URI {uri}: use an absolute path, sqlite:////abs/path/mlflow.db "
                                f"(trials and the MLflow UI run in other folders)")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(f"tracking URI {uri}: cannot create {Path(path).parent} ({err})") from None
        check_intact(uri)
    elif parsed.scheme in ("", "file"):
        raise TrackingError(f"tracking URI {uri!r}: MLflow's plain file store is not supported here; "
                            f"use sqlite:////abs/path/mlflow.db or an http(s) tracking server")


def check_store(uri: str, source: str, hint: str = STORE_HINT) -> None:
    """TrackingError where the existing store ``uri`` (named by ``source``: an option, a
    variable, a file) cannot be used: a SQLite file that does not exist (opening it would
    create an empty one), a relative SQLite path, a server that does not answer. ``hint``
    says where else to look. Creates nothing."""
    if uri.startswith("sqlite:"):
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path.startswith("/"):
            raise TrackingError(f"tracking URI {uri} ({source}): use an absolute path, sqlite:////abs/path/mlflow.db")
        if not Path(path).is_file():
            raise TrackingError(f"no MLflow store at {path} ({source}); {hint}")
        check_intact(uri)
    else:
        check_reachable(uri)


def artifact_location_for(uri: str) -> str | None:
    """Where a new experiment keeps artifacts. For a SQLite store: beside the database
    (MLflow's default `./mlruns` would depend on the current folder); servers decide."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None


def client_for(uri: str):
    """An ``MlflowClient`` of ``uri``; a SQLite store is first checked (:func:`check_intact`)
    and, where new, created whole (:func:`ensure_store`)."""
    ensure_store(uri)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


_held = threading.local()  # the lock files this thread holds: store_lock is reentrant


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store: an exclusive ``fcntl.flock`` on ``.mlflow.lock`` beside the database,
    so that two drivers starting on a fresh storage do not both create (migrate) it; MLflow's
    migration is not safe to run twice at once. Reentrant within a thread. Other stores: nothing."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri[len("sqlite:///"):]).parent / ".mlflow.lock"
    held = _held.__dict__.setdefault("paths", set())  # this thread's
    if str(path) in held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        held.add(str(path))
        try:
            yield
        finally:
            held.discard(str(path))
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def get_or_create_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, created if new (a SQLite store's first use, which creates the
    database whole: :func:`ensure_store`), under :func:`store_lock`. A new experiment keeps
    its artifacts in ``artifact_location`` (default :func:`artifact_location_for`)."""
    with store_lock(uri):
        ensure_store(uri)
        return _get_or_create_experiment(uri, name, artifact_location)


def _get_or_create_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    try:
        client = client_for(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:  # tagged so that the MLflow UI opens it on model training, not GenAI
            return client.create_experiment(name, artifact_location=artifact_location or artifact_location_for(uri),
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    except TrackingError:
        raise
    except Exception as err:  # any store error: report before a trial starts
        raise TrackingError(f"tracking URI {uri}: cannot open experiment {name!r} ({err})") from None


# --- a SQLite store: created whole, checked before MLflow opens it ----------------------------
_intact: set[str] = set()  # databases this process found complete: checked once


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:////abs/path`` URI; None for other stores (and relative paths)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path.startswith("/") else None


def _inspect(path: Path) -> dict[str, Any]:
    """What the database holds: ``tables``, ``versions`` (alembic's), ``experiments`` and
    ``runs`` (row counts, None without the table). Opened read-only; where a killed writer left
    a hot journal (which only a writer can roll back, as MLflow would), read-write: neither
    mode creates a file."""
    try:
        return _read_tables(path, "ro")
    except sqlite3.OperationalError as err:
        if not getattr(err, "sqlite_errorname", "SQLITE_READONLY").startswith("SQLITE_READONLY"):
            raise
        return _read_tables(path, "rw")


def _read_tables(path: Path, mode: str) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode={mode}", uri=True, timeout=10)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] if t in tables else None
                  for t in ("experiments", "runs")}
        versions = ({row[0] for row in conn.execute("SELECT version_num FROM alembic_version")}
                    if "alembic_version" in tables else set())
        return {"tables": tables, "versions": versions, **counts}
    finally:
        conn.close()


def _incomplete(info: dict[str, Any]) -> str | None:
    """Why a database with tables is not a complete MLflow store (a creation or a schema
    migration was interrupted), or None. A complete store always has alembic's version table,
    no `_alembic_tmp_` table, and its Default experiment once its schema is at the head."""
    leftovers = sorted(t for t in info["tables"] if t.startswith("_alembic_tmp_"))
    if leftovers:
        return f"table {leftovers[0]} is left from a schema migration"
    if "alembic_version" not in info["tables"] and not info["experiments"]:
        return "it has tables but no alembic_version table"
    if info["experiments"]:  # used before: an older schema is MLflow's to upgrade
        return None
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    if info["versions"] != {head}:
        return f"its schema stopped at revision {', '.join(sorted(info['versions'])) or 'none'}, not {head}"
    return None


def _incomplete_message(path: Path, info: dict[str, Any], reason: str) -> str:
    runs = info["runs"] or 0
    what = "a schema migration was interrupted" if info["experiments"] else "its creation was interrupted"
    head = f"MLflow store {path} is incomplete ({what}: {reason})"
    if runs:
        return (f"{head}; it holds {runs} run(s), so do not delete it: restore it from a backup "
                f"(MLflow cannot finish an interrupted migration of a SQLite store)")
    extra = [p.name for p in (path.with_name(path.name + suffix) for suffix in ("-journal", "-wal", "-shm"))
             if p.exists()]
    also = f" (and {', '.join(extra)} beside it)" if extra else ""
    return f"{head}; it holds no runs: delete it{also} and run again"


def check_intact(uri: str) -> None:
    """TrackingError naming the file and the fix where ``uri``'s SQLite database exists but is
    incomplete (its creation, or a schema migration, was interrupted: MLflow would fail on it
    with a raw error such as `table _alembic_tmp_experiments already exists`). Cheap (sqlite3,
    no MLflow) and once per process per database; creates nothing. Other stores: nothing."""
    path = sqlite_path(uri)
    if path is not None:
        _state(path)


def _state(path: Path) -> str:
    """"missing", "empty" (a file without tables), "intact" or "unreadable" (locked, not a
    database: MLflow says why); TrackingError where incomplete."""
    if not path.is_file():
        return "missing"
    if str(path) in _intact:
        return "intact"
    try:
        info = _inspect(path)
    except sqlite3.Error:
        return "unreadable"
    if not info["tables"]:
        return "empty"
    reason = _incomplete(info)
    if reason:
        raise TrackingError(_incomplete_message(path, info, reason))
    _intact.add(str(path))
    return "intact"


def ensure_store(uri: str) -> None:
    """For a SQLite store: :func:`check_intact`, and where the database does not exist yet (or
    is an empty file), create it whole under :func:`store_lock` (:func:`_create_store`).
    Other stores: nothing."""
    path = sqlite_path(uri)
    if path is None or _state(path) not in ("missing", "empty"):
        return
    with store_lock(uri):
        if _state(path) in ("missing", "empty"):  # not created by another process meanwhile
            _create_store(path, uri)
            _intact.add(str(path))


def _create_store(path: Path, uri: str) -> None:
    """Create MLflow's schema and the Default experiment (its artifacts beside the database,
    like our experiments') in a temporary file beside ``path``, then move it into place. Any
    exception (Ctrl-C included) removes the temporary file; one left by a killed creator is
    removed here, by the next (the caller holds the store's lock)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    pattern = f".{glob.escape(path.name)}{TMP_MARK}*"
    for leftover in path.parent.glob(pattern):
        leftover.unlink(missing_ok=True)
    tmp = tmp_path_for(path)
    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", artifact_location_for(uri))
        store.engine.dispose()
        _fsync(tmp)
        path.with_name(path.name + "-journal").unlink(missing_ok=True)  # of an empty file being replaced
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class TrialRun:
    """A trial run read back: its configuration as trained, the production epochs and seeds
    its study set (None where the run has no such tag), a Config ``source`` naming it, and the
    run's metrics (last values) and tags."""
    run_id: str
    config: dict[str, Any]
    epochs: int | None
    seeds: list[int] | None
    source: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def fetch_trial(uri: str, run_id: str, log: Callable[[str], None] = print) -> TrialRun:
    """The trial run ``run_id`` of the store ``uri`` (a study's parent run: its best trial,
    said through ``log``). TrackingError naming the run and the store where it cannot be read."""
    from mlflow.exceptions import MlflowException

    client = client_for(uri)
    try:
        run = client.get_run(run_id)
        tags = run.data.tags
        if "best_run_id" in tags and "trial_id" not in tags:  # a study's parent run: its best trial
            log(f"run {run_id} is the study {tags.get('study', '')!r}; taking its best trial {tags['best_run_id']}")
            run = client.get_run(tags["best_run_id"])
    except MlflowException as err:
        raise TrackingError(f"run {run_id!r} not found at {uri} ({err}); if the study logged "
                            f"elsewhere, {STORE_HINT}") from None
    tags = run.data.tags
    seeds = yaml.safe_load(tags["export.seeds"]) if "export.seeds" in tags else None
    epochs = int(tags["export.epochs"]) if "export.epochs" in tags else None
    source = {"tracking_uri": uri, "experiment_id": run.info.experiment_id, "run_id": run.info.run_id,
              "run_name": (run.info.run_name or "").removeprefix(BEST_MARK) or None, "study": tags.get("study"),
              "trial_id": tags.get("trial_id"), "parent_run_id": tags.get("mlflow.parentRunId")}
    config = _config_from_run(client, run)
    if "mlflow.parentRunId" in tags:  # a study's trial trains beside the study (beside_study)
        study_dir = client.get_run(tags["mlflow.parentRunId"]).data.tags.get("study_dir")
        config["output_dir"] = beside_study(config.get("output_dir", Config.output_dir), study_dir)
    return TrialRun(run.info.run_id, config, epochs, seeds,
                    {k: v for k, v in source.items() if v}, dict(run.data.metrics), dict(tags))


def _config_from_run(client, run) -> dict[str, Any]:
    """The trial's configuration: its `config.yaml` artifact, else its params (a run whose
    artifact store cannot give the file)."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as folder:
        try:
            local = client.download_artifacts(run.info.run_id, "config.yaml", folder)
            data = yaml.safe_load(Path(local).read_text())
        except (MlflowException, OSError, yaml.YAMLError):  # no such artifact, or not readable as YAML
            data = None
    if isinstance(data, dict):
        return data
    params = {k: yaml.safe_load(v) for k, v in run.data.params.items() if k in FIELD_NAMES and k != "source"}
    if not params:
        raise TrackingError(f"run {run.info.run_id} has neither a config.yaml artifact nor configuration params; "
                            f"is it a bmlr-tune trial run?")
    return params


def store_of(tracking_uri: str | None, storage: str) -> tuple[str, str]:
    """The store to read a study's run from and what named it (for messages): ``tracking_uri``
    (the flag), else ``$MLFLOW_TRACKING_URI``, else the SQLite store of the study's ``storage``
    folder. `tune.py export` and `bmlr.train --from-run` both use it."""
    if tracking_uri:
        return tracking_uri, "--tracking-uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    if "://" in str(storage):  # object storage: `bmlr-tune export` pulls its store first
        raise TrackingError(f"--storage {storage}: the MLflow store of object storage is read by `bmlr-tune export "
                            f"--run-id RUN_ID --storage {storage}`; export the run there and train the file, or pass "
                            f"--tracking-uri")
    return default_tracking_uri(Path(storage).expanduser()), f"--storage {storage}"

