"""A study's storage on object storage (``--storage s3://bucket/prefix``, ``gs://...``, or any
URI that pyarrow or fsspec knows), the way Ray Tune keeps an experiment there: every node works
in a local copy and the bucket is the record.

- The driver reads and writes the study folder as on a local disk, in a **working copy** in the
  cache (``$BMLR_CACHE/storage/<scheme>/<bucket>/<prefix>/``, default ``~/.cache/bmlr``):
  :func:`local_root`. Before a study (new with ``--name``, or resumed) it pulls the study's
  records from the bucket, and it pushes what it wrote (``study.json``, ``trials.csv``,
  ``best.yaml``, the report, the default MLflow store ``mlflow.db``) when the study is created
  and when it ends. Another machine that sees only the bucket pulls them to find, report and
  export the study; an interrupted study continues only where it ran (docs/clusters.md: Ray
  restores a searcher and scheduler that name that machine's working copy).
- Ray Tune's experiment (``ray/``, ``confirm/``) goes straight to the bucket
  (``RunConfig.storage_path`` on the same filesystem).
- A trial, on whatever node it runs, writes its files (``state/``, ``trials/``) in a temporary
  folder of that node (removed when the trial ends) and uploads each one as it is written; the
  driver pulls them before it reads.
- MLflow's artifacts go to ``<storage>/mlartifacts`` (a new experiment's artifact location;
  an existing experiment keeps its own).
- One driver per study: object storage has no ``flock``. The driver holds a **lease**,
  ``<study>/.driver.lease`` (holder and a heartbeat rewritten every :data:`HEARTBEAT_S`); a second
  driver that finds a fresh lease stops with :class:`~bmlr.tuning.store.StudyBusy`. The check and
  the write are two requests, so two drivers started within the same second can both pass: the
  documented limit (S3's conditional writes are not available through pyarrow).

Endpoints other than AWS (MinIO, moto, Ceph) come from ``$AWS_ENDPOINT_URL`` (or
``$AWS_ENDPOINT_URL_S3``), credentials from the usual AWS chain.
"""
from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from bmlr.fileio import abs_path

__all__ = ["RemoteError", "is_uri", "resolve", "local_root", "store_here", "filesystem", "close", "check",
           "Mirror", "Lease", "pull_store", "pull_infos", "HEARTBEAT_S", "LEASE_FILE", "ARTIFACTS"]

LEASE_FILE = ".driver.lease"
HEARTBEAT_S = 20.0  # how often a driver renews its lease; one older than 4 heartbeats is stale
ARTIFACTS = "mlartifacts"  # MLflow's artifacts beside the study folders
STORE_FILE = "mlflow.db"  # the default MLflow store, at the storage's root
NOT_PUSHED = ("ray", "confirm", "state", "trials")  # written to the bucket by Ray or the trials themselves


class RemoteError(RuntimeError):
    """Object storage that cannot be used: the message names the URI and why."""


def is_uri(storage: str | os.PathLike) -> bool:
    """Whether ``--storage`` names object storage (a URI with a scheme other than ``file``)."""
    scheme = urllib.parse.urlparse(str(storage)).scheme
    return "://" in str(storage) and len(scheme) > 1 and scheme != "file"


def resolve(storage: str | os.PathLike) -> str:
    """``--storage`` as recorded: a URI without its trailing ``/``, a local folder absolute."""
    return str(storage).rstrip("/") if is_uri(storage) else str(abs_path(storage))


def local_root(storage: str | os.PathLike) -> Path:
    """The folder this node reads and writes for ``storage``: the folder itself, or the working
    copy of a URI in the cache."""
    if not is_uri(storage):
        return abs_path(storage)
    parsed = urllib.parse.urlparse(resolve(storage))
    cache = os.environ.get("BMLR_CACHE") or os.path.join("~", ".cache", "bmlr")
    return abs_path(cache) / "storage" / parsed.scheme / (parsed.netloc + parsed.path).strip("/")


def filesystem(uri: str):
    """``(pyarrow filesystem, path)`` of a URI: S3 with short timeouts and the endpoint of
    ``$AWS_ENDPOINT_URL``; other schemes through pyarrow, else fsspec."""
    return _filesystem(uri, os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))


def store_here(storage: str, tracking_uri: str | None) -> str | None:
    """``tracking_uri``, or where it is the default SQLite store of a working copy of ``storage``
    as another machine (or cache) recorded it (``.../storage/<scheme>/<bucket>/<prefix>/mlflow.db``),
    this machine's copy of that store: what a study resumed elsewhere logs to."""
    if not is_uri(storage) or not (tracking_uri or "").startswith("sqlite:///"):
        return tracking_uri
    parsed = urllib.parse.urlparse(resolve(storage))
    tail = Path("storage", parsed.scheme, (parsed.netloc + parsed.path).strip("/"), STORE_FILE).parts
    if Path(tracking_uri[len("sqlite:///"):]).parts[-len(tail):] != tail:
        return tracking_uri
    from bmlr.mlflow_store import default_tracking_uri

    return default_tracking_uri(local_root(storage))


@functools.lru_cache(maxsize=8)
def _filesystem(uri: str, endpoint: str | None):
    import pyarrow.fs as pafs

    parsed = urllib.parse.urlparse(uri)
    path = (parsed.netloc + parsed.path).rstrip("/")
    if parsed.scheme == "s3":
        return pafs.S3FileSystem(endpoint_override=endpoint, connect_timeout=5, request_timeout=30,
                                 retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3)), path
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError):  # a scheme pyarrow does not know (ArrowInvalid is a ValueError)
        pass
    try:
        import fsspec

        fs, fs_path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as err:
        raise RemoteError(f"--storage {uri}: no filesystem for {parsed.scheme}:// ({err})") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), fs_path


def close() -> None:
    """Drop the filesystems made here and shut pyarrow's S3 client down (its threads end): for a
    process that goes on to fork, since the AWS SDK's threads do not survive a fork. A later use
    of S3 in the same process fails."""
    import gc

    import pyarrow.fs as pafs

    _filesystem.cache_clear()
    gc.collect()
    pafs.finalize_s3()


def check(uri: str) -> None:
    """RemoteError before anything is written where ``uri`` cannot hold studies: no credentials
    (S3, where botocore can tell), an endpoint that does not answer, a bucket that does not
    exist, a prefix that is a file."""
    import pyarrow.fs as pafs

    if urllib.parse.urlparse(uri).scheme == "s3":
        _check_credentials(uri)
    try:
        fs, path = filesystem(uri)
        bucket = path.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise RemoteError(f"--storage {uri}: bucket {bucket!r} not found (create it first)")
        if fs.get_file_info(path).type == pafs.FileType.File:
            raise RemoteError(f"--storage {uri}: {path} is a file, not a folder prefix")
    except OSError as err:
        raise RemoteError(f"--storage {uri}: cannot reach it ({_first_line(err)})") from None


def _check_credentials(uri: str) -> None:
    try:
        import botocore.session
    except ImportError:  # pyarrow's own chain decides; a request without them fails in check()
        return
    if botocore.session.get_session().get_credentials() is None:
        raise RemoteError(f"--storage {uri}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                          f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where an instance role applies)")


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


@dataclass(frozen=True)
class Mirror:
    """One study folder of a URI storage: ``<storage>/<rel>`` in the bucket, ``local_root(storage)
    / rel`` on each node (:attr:`local`; a path the driver names is found on this node by
    :meth:`here`). Picklable: a trial receives it and builds its filesystem where it runs."""

    storage: str  # the storage URI
    rel: str  # "<dataset>/<name>" (or deeper, for a study inside another's folder)

    @classmethod
    def of(cls, storage: str, study_dir: str | os.PathLike) -> "Mirror | None":
        """The mirror of a study folder of ``storage`` (None for a local storage)."""
        if not is_uri(storage):
            return None
        return cls(resolve(storage), Path(study_dir).relative_to(local_root(storage)).as_posix())

    @property
    def local(self) -> Path:
        return local_root(self.storage) / self.rel

    @property
    def fs(self):
        return filesystem(self.storage)[0]

    def remote(self, rel: str = "") -> str:
        """The bucket path of ``rel`` inside the study folder (the folder itself by default)."""
        root = f"{filesystem(self.storage)[1]}/{self.rel}"
        return f"{root}/{rel}" if rel else root

    def ray_storage(self, ray_dir: str | os.PathLike) -> tuple[str, Any]:
        """``(storage_path, storage_filesystem)`` for Ray Tune's experiment folder ``ray_dir`` (a
        folder of the driver's copy): its parent in the bucket."""
        return self.remote(self._rel(ray_dir)).rsplit("/", 1)[0], self.fs

    def _rel(self, path: str | os.PathLike) -> str:
        path = Path(path)
        for root in (self.local, _driver_root(path, self.rel)):
            if root is not None:
                try:
                    return path.relative_to(root).as_posix()
                except ValueError:
                    continue
        raise RemoteError(f"{path} is not inside study folder {self.rel}")

    def here(self, path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
        """Where this node keeps a path of the driver's copy of the study folder: in the copy
        at ``root`` (a trial's temporary folder), else in :attr:`local`."""
        return (Path(root) / self.rel if root is not None else self.local) / self._rel(path)

    # --- single files, as a trial writes them ---------------------------------------------------
    def put(self, path: str | os.PathLike) -> None:
        """Upload one file of this node's copy to its place in the bucket."""
        import pyarrow.fs as pafs

        target = self.remote(self._rel(path))
        _parent_for(self.fs, target)
        pafs.copy_files(str(path), target, destination_filesystem=self.fs)

    def get(self, path: str | os.PathLike) -> bool:
        """Download one file into this node's copy; False where the bucket has none."""
        import pyarrow.fs as pafs

        source = self.remote(self._rel(path))
        if self.fs.get_file_info(source).type != pafs.FileType.File:
            return False
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(source, str(path), source_filesystem=self.fs)
        return True

    def delete(self, path: str | os.PathLike) -> None:
        """Remove one file, or a folder and what it holds, from the bucket (gone already is fine)."""
        import pyarrow.fs as pafs

        target = self.remote(self._rel(path))
        try:
            if self.fs.get_file_info(target).type == pafs.FileType.Directory:
                self.fs.delete_dir(target)
            else:
                self.fs.delete_file(target)
        except (FileNotFoundError, OSError):
            pass

    # --- the study's records, as the driver syncs them ---------------------------------------------
    def pull(self, only: Iterable[str] | None = None, skip: Iterable[str] = ("state",)) -> int:
        """Copy the study's files from the bucket into this node's copy (``only`` those top-level
        entries, never those in ``skip``); the number of files."""
        import pyarrow.fs as pafs

        root, only, skip = self.remote(), set(only) if only is not None else None, set(skip)
        if self.fs.get_file_info(root).type != pafs.FileType.Directory:
            return 0
        count = 0
        for info in self.fs.get_file_info(pafs.FileSelector(root, recursive=True)):
            rel = info.path[len(root) + 1:]
            top = rel.split("/", 1)[0]
            if info.type != pafs.FileType.File or top in skip or top == LEASE_FILE or (only is not None
                                                                                         and top not in only):
                continue
            target = self.local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(info.path, str(target), source_filesystem=self.fs)
            count += 1
        return count

    def push(self) -> int:
        """Upload what the driver writes (everything of the driver's copy but Ray's folders, the
        trials' files and the lock) and the storage's default MLflow store; the number of files."""
        count = 0
        if self.local.is_dir():
            for path in sorted(self.local.rglob("*")):
                rel = path.relative_to(self.local)
                if path.is_file() and rel.parts[0] not in NOT_PUSHED and not rel.name.startswith(".driver."):
                    self.put(path)
                    count += 1
        store = local_root(self.storage) / STORE_FILE
        if store.is_file():
            import pyarrow.fs as pafs

            target = f"{filesystem(self.storage)[1]}/{STORE_FILE}"
            _parent_for(self.fs, target)
            pafs.copy_files(str(store), target, destination_filesystem=self.fs)
            count += 1
        return count



def pull_store(storage: str) -> bool:
    """The storage's default MLflow store from the bucket, where the bucket's copy is newer than
    this node's (a study continued on another machine); whether it was pulled."""
    import pyarrow.fs as pafs

    fs, root = filesystem(storage)
    info = fs.get_file_info(f"{root}/{STORE_FILE}")
    local = local_root(storage) / STORE_FILE
    if info.type != pafs.FileType.File or (local.is_file() and local.stat().st_mtime_ns >= (info.mtime_ns or 0)):
        return False
    local.parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(info.path, str(local), source_filesystem=fs)
    return True


def pull_infos(storage: str, dataset: str) -> int:
    """Every study's ``study.json`` under ``<storage>/<dataset>`` into the working copy (so that
    ``--resume`` without ``--name`` finds the latest); the number found."""
    import pyarrow.fs as pafs

    fs, root = filesystem(storage)
    base = f"{root}/{dataset}"
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return 0
    found = [i for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
             if i.type == pafs.FileType.File and i.path.count("/") == base.count("/") + 2
             and i.path.endswith("/study.json")]
    for info in sorted(found, key=lambda i: i.mtime_ns or 0):  # oldest first: local mtimes keep the order
        target = local_root(storage) / dataset / info.path[len(base) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(info.path, str(target), source_filesystem=fs)
    return len(found)


def _parent_for(fs, path: str) -> None:
    """The folder of ``path`` created where the filesystem has folders (object stores have none,
    and pyarrow would write an empty marker object there)."""
    if fs.type_name not in ("s3", "gcs"):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)


def _driver_root(path: Path, rel: str) -> Path | None:
    """The study folder inside ``path``'s ancestors whose tail is ``rel`` (the driver's copy,
    seen from a node whose cache is elsewhere)."""
    parts = Path(rel).parts
    for parent in path.parents:
        if parent.parts[-len(parts):] == parts:
            return parent
    return None


class Lease:
    """The one-driver rule on object storage: ``<study>/.driver.lease`` holds the driver's host,
    PID and a heartbeat (seconds since the epoch) that a thread renews every :data:`HEARTBEAT_S`.
    :meth:`acquire` raises ``busy(message)`` where another driver's lease is fresh."""

    def __init__(self, mirror: Mirror):
        self.mirror = mirror
        self.path = mirror.remote(LEASE_FILE)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> dict[str, Any] | None:
        try:
            with self.mirror.fs.open_input_stream(self.path) as f:
                return json.loads(f.read().decode() or "{}")
        except (FileNotFoundError, OSError, ValueError):
            return None

    def acquire(self, busy: type[Exception]) -> "Lease":
        other = self.read()
        if other and time.time() - float(other.get("heartbeat", 0)) < 4 * HEARTBEAT_S:
            raise busy(f"study {self.mirror.storage}/{self.mirror.rel} is being run by PID {other.get('pid')} on "
                       f"{other.get('host')} since {other.get('since')} (its lease {LEASE_FILE} was renewed "
                       f"{time.time() - float(other['heartbeat']):.0f} s ago); wait for that driver to end "
                       f"(a lease not renewed for {4 * HEARTBEAT_S:.0f} s is stale)")
        self._write()
        self._thread = threading.Thread(target=self._renew, name="bmlr-lease", daemon=True)
        self._thread.start()
        return self

    def _write(self) -> None:
        _parent_for(self.mirror.fs, self.path)
        with self.mirror.fs.open_output_stream(self.path) as f:
            f.write(json.dumps({**self.holder, "heartbeat": time.time()}).encode())

    def _renew(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError:  # a blip: the next heartbeat tries again
                continue

    def release(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        try:
            self.mirror.fs.delete_file(self.path)
        except (FileNotFoundError, OSError):
            pass
