"""What the report reads from a study folder, and what every section is given.

The folder is read through :class:`bmlr.tuning.store.StudyStore` (the one reader of
``study.json`` and ``trials.csv``; rows come back typed) and the best trial is picked by
:mod:`bmlr.tuning.selection` (a surface study: its best cell's best seed), unless
``study.json`` names the winner (``best_trial_id``, e.g. a staged study's stage-2 winner).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bmlr.tuning.search_space import SearchSpace, SearchSpaceError, load_search_space
from bmlr.tuning.selection import choose_best
from bmlr.tuning.store import SPACE_FILE, StudyStore
from bmlr.tuning.surface import best_cell_row

__all__ = ["REPORT_DIR", "ReportError", "StudyView", "Context"]

REPORT_DIR = "report"  # inside the study folder, and the artifact folder of the study's MLflow run

Log = Callable[[str], None]


class ReportError(RuntimeError):
    """The folder is not a finished study, or no trial of it finished."""


class StudyView:
    """A finished study (plain, surface or staged) as the report sees it: its info, its
    typed trial rows and its data set's description, read once."""

    def __init__(self, folder: str | Path):
        self.store = StudyStore(folder)
        self.dir = self.store.dir
        if not self.store.is_finished():
            raise ReportError(f"{self.dir}: not a finished bmlr-tune study (study.json and trials.csv expected)")
        self.info = self.store.read_info()
        self.settings = self.info.get("settings") or {}
        self.kind = self.store.kind()
        self.rows = self.store.read_rows()
        self.stage_dirs = self.store.stage_dirs()
        self.data = self.store.data_info()
        self.name = self.settings.get("name") or self.dir.name
        self.dataset = self.settings.get("dataset", "?")
        self.method = self.settings.get("method", "?")

    def best_row(self) -> dict[str, Any] | None:
        """The study's winner: the trial study.json names, else the selection rule's pick."""
        wanted = self.info.get("best_trial_id")
        if wanted:
            named = next((r for r in self.rows if str(r["trial_id"]) == str(wanted)), None)
            if named is not None:
                return named
        if self.kind == "surface":
            return best_cell_row(self.rows)
        return choose_best(self.rows)

    def history(self, trial_id: str) -> list[dict[str, Any]]:
        return self.store.history(trial_id)

    def top3(self, trial_id: str) -> dict[str, Any] | None:
        return self.store.top3(trial_id)

    def trial_epochs(self) -> int | None:
        """The most epochs a trial could train."""
        return self.info.get("trial_epochs") or self.settings.get("max_epochs")

    def search_space(self, log: Log, folder: Path | None = None) -> SearchSpace | None:
        """The search space the study (or its stage `folder`) used, or None where its copy is
        missing (older studies) or unreadable (said in the log)."""
        path = (folder or self.dir) / SPACE_FILE
        if not path.is_file():
            return None
        try:
            return load_search_space(path)
        except SearchSpaceError as err:
            log(f"report: {path} is not a usable search space ({err}); importances use the trials' values alone")
            return None

    def modalities(self, history: list[dict[str, Any]]) -> list[str]:
        """The data set's modalities as recorded, else those the trial's history logged."""
        listed = self.data.get("modalities")
        if listed:
            return list(listed)
        keys = [k[len("val_acc_"):] for h in history for k in h if k.startswith("val_acc_")]
        return list(dict.fromkeys(keys))


@dataclass
class Context:
    """What every section of one report is given: the study, its best trial with that
    trial's per-epoch history, the data set's modalities, the report folder and the log."""

    study: StudyView
    best: dict[str, Any]
    history: list[dict[str, Any]]
    modalities: list[str]
    out: Path
    log: Log

    @classmethod
    def open(cls, study_dir: str | Path, log: Log) -> "Context":
        study = StudyView(study_dir)
        best = study.best_row()
        if best is None:
            raise ReportError(f"{study.dir}: no trial finished successfully; nothing to report")
        history = study.history(str(best["trial_id"]))
        return cls(study, best, history, study.modalities(history), study.dir / REPORT_DIR, log)

    @property
    def best_id(self) -> str:
        return str(self.best["trial_id"])
