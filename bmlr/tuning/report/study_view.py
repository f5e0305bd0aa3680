"""What the report reads from a study folder, and what every section is given.

The folder is read through :class:`bmlr.tuning.store.StudyStore` (the one reader of
``study.json`` and ``trials.csv``; rows come back typed) and the best trial is picked by
:mod:`bmlr.tuning.selection` (a surface study: its best cell's best seed), unless
``study.json`` names the winner (``best_trial_id``, e.g. a staged study's stage-2 winner) or a
confirmation stage (``confirmation.csv``, :mod:`bmlr.tuning.confirm`) chose it: then the winner
is the candidate with the best mean over the confirmation's seeds, by the stage's own rule
(:func:`bmlr.tuning.selection.choose_confirmed`), the trial ``best.yaml`` holds.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from bmlr.tuning.selection import Candidate, choose_confirmed
from bmlr.tuning.search_space import SearchSpace, SearchSpaceError, load_search_space
from bmlr.tuning.selection import choose_best, rank
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
        self.confirmation = self.store.read_confirmation()
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
        if self.confirmed_winner is not None:
            return self.confirmed_winner.row
        if self.kind == "surface":
            return best_cell_row(self.rows)
        return choose_best(self.rows)

    @cached_property
    def candidates(self) -> list[Candidate]:
        """The confirmation's candidates in the search's order, each with its seeds' values
        (the best validation accuracy of every completed seed); [] without a confirmation."""
        return self._confirmed[0]

    @cached_property
    def confirmed_winner(self) -> Candidate | None:
        """The candidate with the best mean over the confirmation's seeds (None: no confirmation,
        or no seed finished)."""
        return self._confirmed[1]

    @cached_property
    def _confirmed(self) -> tuple[list[Candidate], Candidate | None]:
        ids = {str(r["candidate"]) for r in self.confirmation}
        candidates = [Candidate(row, {}, {}) for row in rank(self.rows) if str(row["trial_id"]) in ids]
        known = {c.trial_id for c in candidates}
        unknown = ids - known
        if unknown:
            raise ReportError(f"{self.store.confirmation_path}: candidates {sorted(unknown)} are not finished "
                              f"trials of {self.store.trials_path}")
        return candidates, choose_confirmed(candidates, self.confirmation)

    def started(self, trial_id: str) -> float | None:
        """When the trial started (seconds since the epoch): its first report to Ray less the
        time it had trained by then; None where Ray's `result.json` is gone or unreadable."""
        for folder in [self.dir] + self.stage_dirs:
            path = StudyStore(folder).ray_dir / f"trial_{trial_id}" / "result.json"
            if not path.is_file():
                continue
            try:
                with path.open() as f:
                    first = json.loads(f.readline())
                return float(first["timestamp"]) - float(first.get("time_total_s") or 0.0)
            except (ValueError, KeyError, TypeError, OSError):  # a cut-off line: the order is unknown
                return None
        return None

    def in_start_order(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`rows` in the order their trials started (those with no known start last, in their
        trials.csv order): the order Optuna numbers them in the rebuilt study."""
        starts = [self.started(str(r["trial_id"])) for r in rows]
        order = sorted(range(len(rows)), key=lambda i: (math.inf if starts[i] is None else starts[i], i))
        return [rows[i] for i in order]

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
