"""The study folder, owned by one class: the only reader and writer of ``study.json``,
``trials.csv`` and ``best.yaml``, and of finding a study for ``--resume``.

Study folder ``<storage>/<dataset>/<name>/`` (on object storage, the driver's working copy of
it: :mod:`bmlr.tuning.remote`):

    study.json          settings, MLflow tracking URI, experiment and parent run id, data sizes;
                        a staged study: kind "staged", its stages and winner
    search_space.yaml   the search space as used (a resumed study reuses this copy)
    ray/                Ray Tune's experiment folder (trial folders with result.json)
    state/              the Trainer state of each unfinished trial (deleted when it ends)
    trials/             per-trial records kept after the study: trial_<id>/history.json (every
                        epoch the trial trained, restored epochs included) and val_top3.json
    .driver.lock        held (flock) by the one driver running the study: its PID, host, start
    trials.csv          one row per trial, typed back on reading (numbers, booleans, None)
    best.yaml           the winner as a production configuration for bmlr.train
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from bmlr.fileio import abs_path, atomic_write_text, read_csv, read_json, write_csv, write_json
from bmlr.tuning.remote import local_root

__all__ = ["STUDY_FILE", "SPACE_FILE", "TRIALS_FILE", "BEST_FILE", "RAY_DIR", "STATE_DIR", "TRIALS_DIR",
           "HISTORY_FILE", "LOCK_FILE", "StoreError", "StudyBusy", "StudyLock", "StudyStore", "check_name",
           "check_unclaimed",
           "study_folder", "find_study", "studies",
           "history_path", "read_history", "write_history", "read_json_lines"]

STUDY_FILE = "study.json"
SPACE_FILE = "search_space.yaml"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.yaml"
RAY_DIR = "ray"
STATE_DIR = "state"  # per-trial Trainer state of running trials (bmlr.tuning.trainable)
TRIALS_DIR = "trials"  # per-trial records kept after the study: trial_<id>/history.json, val_top3.json
HISTORY_FILE = "history.json"  # a trial's every epoch (Ray's result.json lacks those before a restore)
LOCK_FILE = ".driver.lock"  # one driver per study (fcntl.flock; the kernel drops it with the process)
CONFIRM_DIR = "confirm"  # the confirmation stage's Ray experiment (bmlr.tuning.confirm)
CONFIRMATION_FILE = "confirmation.csv"  # its rows: candidate x seed
OPTUNA_FILE = "optuna.journal"  # the searcher's Optuna study as trials finish (optuna-dashboard reads it)
GRACE_FILE = "grace_period.json"  # what a measured grace period chose (bmlr.tuning.calibrated_asha)
TEXT_COLUMNS = ("trial_id", "run_id", "candidate")  # identifiers that can look like numbers


class StoreError(RuntimeError):
    """The folder is not (or not yet) the study the caller expects; the message says why."""


class StudyBusy(StoreError):
    """Another driver holds the study's lock (it is running or resuming the study)."""


class StudyLock:
    """The study folder's driver lock: ``fcntl.flock`` on ``<study>/.driver.lock``, not
    blocking, the file holding the holder's PID, host and start time (JSON). The kernel drops
    the lock when its process ends (Ctrl-C, SIGTERM, SIGKILL alike), so a lock is never stale.
    A folder the lock created for a study that never got its study.json is removed again on
    release. Needs a file system with working ``flock`` (local disks; NFS v4 and most
    cluster file systems)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = abs_path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None
        self._made: list[Path] = []  # what acquire() created: folders, deepest first, and the lock file

    def acquire(self) -> "StudyLock":
        made = [p for p in [self.folder, *self.folder.parents, self.path] if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return self._lock(made)
        except OSError as err:
            raise StoreError(f"cannot lock study folder {self.folder} ({self.path}: {err.strerror or err})") from None

    def _lock(self, made: list[Path]) -> "StudyLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StudyBusy(self.busy_message()) from None
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)  # its holder removed the file as it released it: lock the new one
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(holder).encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)  # and with it the lock
            raise
        self._fd, self._made = fd, made
        return self

    def holder(self) -> dict[str, Any]:
        """What the lock file says of its holder ({} while it is being written)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def busy_message(self) -> str:
        holder = {}
        for _ in range(20):  # the holder writes its PID right after it got the lock
            holder = self.holder()
            if holder:
                break
            time.sleep(0.05)
        who = (f"PID {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" if holder
               else f"another driver (lock {self.path})")
        return (f"study {self.folder} is being run by {who}; wait for that driver to end (or stop it) "
                f"before running or resuming this study")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self._made and not (self.folder / STUDY_FILE).exists():  # a study that never started
            self.path.unlink(missing_ok=True)
            for folder in self._made:  # leave no empty folder behind (nor a lock file in a folder not ours)
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        else:
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> "StudyLock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def history_path(extras_dir: str | os.PathLike, trial_id: str) -> Path:
    return Path(extras_dir) / f"trial_{trial_id}" / HISTORY_FILE


def write_history(path: Path, history: list[dict[str, Any]]) -> Path:
    """A trial's per-epoch metrics (finite numbers), written atomically."""
    return atomic_write_text(path, json.dumps(history))


def read_history(path: Path) -> list[dict[str, Any]] | None:
    """A trial's history.json, in epoch order (None where there is none)."""
    if not path.is_file():
        return None
    try:
        history = json.loads(path.read_text())
    except ValueError as err:
        raise StoreError(f"{path}: not valid JSON ({err})") from None
    return sorted(history, key=lambda h: int(h["epoch"]))


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The whole JSON objects of a JSON-lines file such as Ray's ``result.json``, in order; a
    line cut off by a killed writer is skipped ([] where the file cannot be read)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            value = json.loads(line) if line.strip() else None
        except ValueError:  # a line cut off by a killed worker
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def studies(storage: str | os.PathLike, dataset: str) -> list["StudyStore"]:
    """Every study under ``<storage>/<dataset>``, oldest first (by when its study.json was
    last written)."""
    base = local_root(storage) / dataset
    infos = sorted(base.glob(f"*/{STUDY_FILE}"), key=lambda p: p.stat().st_mtime)
    return [StudyStore(p.parent) for p in infos]


def check_name(name: str, option: str = "--name") -> str:
    """``name`` where it is a plain folder name (a study, staged study, surface or comparison
    name, or a data set's): no path separator, not ``.`` or ``..``, not absolute, not empty;
    StoreError naming ``option`` otherwise. Every study folder is ``<storage>/<dataset>/<name>``
    and must stay there (:func:`study_folder`)."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0") \
            or os.path.isabs(name):
        raise StoreError(f"{option} {name!r}: expected a plain folder name (no '/' or '\\', not '.' or '..'): "
                         f"it names a folder inside <storage>/<dataset>")
    return name


def study_folder(storage: str | os.PathLike, dataset: str, name: str, option: str = "--name") -> Path:
    """``<storage>/<dataset>/<name>``, checked: both names plain (:func:`check_name`) and the
    folder, links followed, inside ``<storage>/<dataset>`` (a link that points elsewhere is
    refused: a study never writes outside its storage)."""
    base = local_root(storage) / check_name(dataset, "--dataset")
    folder = base / check_name(name, option)
    if folder.resolve().parent != base.resolve():
        raise StoreError(f"{option} {name!r}: {folder} leads to {folder.resolve()}, outside {base}; "
                         f"choose another {option}")
    return folder


def check_unclaimed(folder: Path, marker: str, what: str, option: str = "--name") -> None:
    """StoreError where ``folder``, about to become a new study or comparison, already holds
    files but not its ``marker`` file (``study.json``, ``comparison.json``): nothing new is ever
    written into, or removed from, a folder it does not own. A driver lock is allowed."""
    others = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE) if folder.is_dir() else []
    if others and not (folder / marker).exists():
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise StoreError(f"{folder} exists and is not {what} (it holds {shown}); a new one needs a new folder: "
                         f"choose another {option}")


def find_study(storage: str | os.PathLike, dataset: str, name: str | None) -> Path:
    """The folder of study ``name`` under ``<storage>/<dataset>``, or without a name the most
    recently created one there."""
    base = local_root(storage) / check_name(dataset, "--dataset")
    if name:
        folder = study_folder(storage, dataset, name)
        if not (folder / STUDY_FILE).is_file():
            raise StoreError(f"--resume: no study {name!r} in {base} ({folder / STUDY_FILE} not found)")
        return folder
    found = studies(storage, dataset)
    if not found:
        raise StoreError(f"--resume: no study found in {base}; pass --name of the study to resume")
    return found[-1].dir


class StudyStore:
    """One study folder (a plain, surface or staged study, or a stage of a staged one)."""

    def __init__(self, folder: str | os.PathLike):
        self.dir = abs_path(folder)

    # --- paths -------------------------------------------------------------------------
    @property
    def info_path(self) -> Path:
        return self.dir / STUDY_FILE

    @property
    def trials_path(self) -> Path:
        return self.dir / TRIALS_FILE

    @property
    def best_path(self) -> Path:
        return self.dir / BEST_FILE

    @property
    def space_path(self) -> Path:
        return self.dir / SPACE_FILE

    @property
    def ray_dir(self) -> Path:
        return self.dir / RAY_DIR

    @property
    def state_dir(self) -> Path:
        return self.dir / STATE_DIR

    @property
    def extras_dir(self) -> Path:
        return self.dir / TRIALS_DIR

    def exists(self) -> bool:
        """Whether the study has been created (its study.json written)."""
        return self.info_path.is_file()

    def check_unclaimed(self) -> None:
        """StoreError where the folder of a new study already holds files but no ``study.json``
        (:func:`check_unclaimed`)."""
        check_unclaimed(self.dir, STUDY_FILE, "a bmlr-tune study")

    def is_finished(self) -> bool:
        """Whether a run of the study has written its trials table and the info file."""
        return self.exists() and self.trials_path.is_file()

    # --- study.json ----------------------------------------------------------------------
    def read_info(self) -> dict[str, Any]:
        if not self.exists():
            raise StoreError(f"{self.info_path} not found (not a bmlr-tune study)")
        try:
            return read_json(self.info_path)
        except ValueError as err:
            raise StoreError(f"{self.info_path}: not valid JSON ({err})") from None

    def write_info(self, info: dict[str, Any]) -> Path:
        return write_json(self.info_path, info)

    def create(self, info: dict[str, Any]) -> Path:
        """Write the first ``study.json`` of a new study (its folder is created); StoreError
        where the study exists already."""
        if self.exists():
            raise StoreError(f"study {self.dir} exists already")
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.write_info(info)

    def settings(self) -> dict[str, Any]:
        """The study's settings as recorded (``bmlr.tuning.study.StudySettings`` fields)."""
        return self.read_info().get("settings") or {}

    def trial_epochs(self) -> int | None:
        """The most epochs a trial of the study trains (its --max-epochs), if recorded; None
        where the study used its search space's epochs."""
        info = self.read_info()
        return info.get("trial_epochs") or (info.get("settings") or {}).get("max_epochs")

    def update_info(self, **changes: Any) -> dict[str, Any]:
        info = {**self.read_info(), **changes}
        self.write_info(info)
        return info

    def record_winner(self, row: dict[str, Any], **extra: Any) -> None:
        """Name the study's winner in ``study.json`` (``best_trial_id``, ``best_run_id``,
        ``best_score``): written when a study, its confirmation or a staged study's last stage
        finishes, and read by everyone who needs the winner (:meth:`winner`)."""
        self.update_info(best_trial_id=str(row["trial_id"]), best_run_id=row.get("run_id"),
                         best_score=row.get("score"), **extra)

    def winner(self, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The row of the winner ``study.json`` names (None where it names none: a study that
        found none, or one from before the record)."""
        wanted = self.read_info().get("best_trial_id")
        return next((r for r in rows if str(r["trial_id"]) == str(wanted)), None) if wanted is not None else None

    def kind(self) -> str:
        """"search", "surface" or "staged"."""
        info = self.read_info()
        return info.get("kind") or (info.get("settings") or {}).get("kind") or "search"

    def stage_dirs(self) -> list[Path]:
        """A staged study's stage folders (none for other studies)."""
        return [self.dir / p for p in self.read_info().get("stages", [])]

    def data_info(self) -> dict[str, Any]:
        """The data set's sizes, modalities and classes as the study recorded them (a staged
        study: from its first stage that has them)."""
        data = self.read_info().get("data") or {}
        for stage in self.stage_dirs():
            if data:
                break
            store = StudyStore(stage)
            data = store.read_info().get("data") or {} if store.exists() else {}
        return data

    # --- search_space.yaml ------------------------------------------------------------------
    def write_space(self, text: str) -> Path:
        """Record the search space the study searches (its file's text)."""
        return atomic_write_text(self.space_path, text)

    # --- trials.csv ----------------------------------------------------------------------
    def read_rows(self) -> list[dict[str, Any]]:
        """The trials table, each cell typed back (numbers, booleans, None for empty)."""
        if not self.trials_path.is_file():
            raise StoreError(f"{self.trials_path} not found (has the study finished a run?)")
        return read_csv(self.trials_path, text_columns=TEXT_COLUMNS)

    def write_rows(self, rows: list[dict[str, Any]]) -> Path:
        return write_csv(rows, self.trials_path)

    # --- the confirmation stage --------------------------------------------------------------
    @property
    def confirm_ray_dir(self) -> Path:
        return self.dir / CONFIRM_DIR

    @property
    def confirmation_path(self) -> Path:
        return self.dir / CONFIRMATION_FILE

    def write_confirmation(self, rows: list[dict[str, Any]]) -> Path:
        return write_csv(rows, self.confirmation_path)

    @property
    def optuna_path(self) -> Path:
        return self.dir / OPTUNA_FILE

    @property
    def grace_path(self) -> Path:
        return self.dir / GRACE_FILE

    def read_grace(self) -> dict[str, Any] | None:
        """The measured grace period's record (``grace_period``, ``trials``, ``agreement``), None
        where the study measured none (a set grace period, or too few trials ran to the end)."""
        return read_json(self.grace_path) if self.grace_path.is_file() else None

    def read_confirmation(self) -> list[dict[str, Any]]:
        """The confirmation's rows (candidate, seed, status, best_val_acc), [] where none ran."""
        if not self.confirmation_path.is_file():
            return []
        return read_csv(self.confirmation_path, text_columns=TEXT_COLUMNS)

    # --- per-trial files -------------------------------------------------------------------
    def _folders(self) -> list[Path]:
        return [self.dir] + (self.stage_dirs() if self.exists() else [])

    def lock(self) -> StudyLock:
        """Take the study's driver lock (StudyBusy naming the holder where another driver has
        it); use as a context manager, or release() it."""
        return StudyLock(self.dir).acquire()

    def history(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's per-epoch results, in epoch order: its ``history.json`` (every epoch,
        those trained before a resume included), else Ray's ``result.json`` (an epoch reported
        twice keeps its last report; after a restore it lacks the epochs before it)."""
        for folder in self._folders():
            kept = read_history(history_path(folder / TRIALS_DIR, trial_id))
            if kept is not None:
                return kept
        for folder in self._folders():
            path = folder / RAY_DIR / f"trial_{trial_id}" / "result.json"
            if path.is_file():
                by_epoch = {int(r["epoch"]): r for r in read_json_lines(path) if "epoch" in r}
                return [by_epoch[e] for e in sorted(by_epoch)]
        return []

    def top3(self, trial_id: str) -> dict[str, Any] | None:
        """The trial's per-class top-3 predictions on validation (Figure 4), if kept."""
        for folder in self._folders():
            path = folder / TRIALS_DIR / f"trial_{trial_id}" / "val_top3.json"
            if path.is_file():
                return read_json(path)
        return None
