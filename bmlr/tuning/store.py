"""The study folder, owned by one class: the only reader and writer of ``study.json``,
``trials.csv`` and ``best.yaml``, and of finding a study for ``--resume``.

Study folder ``<storage>/<dataset>/<name>/``:

    study.json          settings, MLflow tracking URI, experiment and parent run id, data sizes;
                        a staged study: kind "staged", its stages and winner
    search_space.yaml   the search space as used (a resumed study reuses this copy)
    ray/                Ray Tune's experiment folder (trial folders with result.json)
    state/              the Trainer state of each unfinished trial (deleted when it ends)
    trials/             per-trial extras kept after the study (trial_<id>/val_top3.json)
    trials.csv          one row per trial, typed back on reading (numbers, booleans, None)
    best.yaml           the winner as a production configuration for bmlr.train
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bmlr.fileio import abs_path, atomic_write_text, read_csv, read_json, write_csv, write_json

__all__ = ["STUDY_FILE", "SPACE_FILE", "TRIALS_FILE", "BEST_FILE", "RAY_DIR", "STATE_DIR", "TRIALS_DIR",
           "StoreError", "StudyStore", "find_study", "studies"]

STUDY_FILE = "study.json"
SPACE_FILE = "search_space.yaml"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.yaml"
RAY_DIR = "ray"
STATE_DIR = "state"  # per-trial Trainer state of running trials (bmlr.tuning.trainable)
TRIALS_DIR = "trials"  # per-trial extras kept after the study: trial_<id>/val_top3.json (Figure 4)
TEXT_COLUMNS = ("trial_id", "run_id")  # identifiers that can look like numbers


class StoreError(RuntimeError):
    """The folder is not (or not yet) the study the caller expects; the message says why."""


def studies(storage: str | os.PathLike, dataset: str) -> list["StudyStore"]:
    """Every study under ``<storage>/<dataset>``, oldest first (by when its study.json was
    last written)."""
    base = abs_path(storage) / dataset
    infos = sorted(base.glob(f"*/{STUDY_FILE}"), key=lambda p: p.stat().st_mtime)
    return [StudyStore(p.parent) for p in infos]


def find_study(storage: str | os.PathLike, dataset: str, name: str | None) -> Path:
    """The folder of study ``name`` under ``<storage>/<dataset>``, or without a name the most
    recently created one there."""
    base = abs_path(storage) / dataset
    if name:
        folder = base / name
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

    # --- per-trial files -------------------------------------------------------------------
    def _folders(self) -> list[Path]:
        return [self.dir] + (self.stage_dirs() if self.exists() else [])

    def history(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's per-epoch results from Ray's ``result.json`` (an epoch reported twice
        keeps its last report), in epoch order."""
        for folder in self._folders():
            path = folder / RAY_DIR / f"trial_{trial_id}" / "result.json"
            if path.is_file():
                by_epoch: dict[int, dict[str, Any]] = {}
                for line in path.read_text().splitlines():
                    try:
                        result = json.loads(line) if line.strip() else {}
                    except ValueError:  # a line cut off by a killed worker
                        continue
                    if "epoch" in result:
                        by_epoch[int(result["epoch"])] = result
                return [by_epoch[e] for e in sorted(by_epoch)]
        return []

    def top3(self, trial_id: str) -> dict[str, Any] | None:
        """The trial's per-class top-3 predictions on validation (Figure 4), if kept."""
        for folder in self._folders():
            path = folder / TRIALS_DIR / f"trial_{trial_id}" / "val_top3.json"
            if path.is_file():
                return read_json(path)
        return None
