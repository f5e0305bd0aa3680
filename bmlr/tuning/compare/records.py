"""What a comparison keeps of a row's finished study (one search): its run, its trials, its
winner's score with the binomial standard error, and the evidence the flags read
(:mod:`~bmlr.tuning.compare.flags`): the searched ranges, the winner's values and every
trial's values. A row holds one such record per study seed (`searches`), or is itself the
record of its one search (:func:`searches_of`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bmlr.fileio import finite_or_none
from bmlr.tuning.selection import choose_best, score, standard_error
from bmlr.tuning.store import StudyStore

__all__ = ["searches_of", "study_record", "search_evidence"]

Row = dict[str, Any]


def searches_of(row: Row) -> list[Row]:
    """The row's searches, one per study seed (`searches`), or the row itself (one search, or
    an untuned row)."""
    return row.get("searches") or [row]


def study_record(label: str, method: str, store: StudyStore) -> Row:
    """The search record of the study in ``store`` (no trials where it stopped before writing
    its trials table)."""
    trials = store.read_rows() if store.is_finished() else []
    best = (store.winner(trials) or choose_best(trials)) if trials else None  # choose_best: before the record
    return {"label": label, "method": method, "study_dir": str(store.dir),
            "study_run_id": store.read_info().get("parent_run_id"), "trials": len(trials),
            "epochs_searched": sum(int(t.get("epochs") or 0) for t in trials),
            "trial_status": {st: sum(t["status"] == st for t in trials) for st in sorted({t["status"] for t in trials})},
            "best_val_acc": score(best) if best else None, "best_val_se": _standard_error(best, store),
            "best_yaml": str(store.best_path) if store.best_path.is_file() else None,
            **search_evidence(store.space_path, trials, best)}


def _standard_error(best: Row | None, store: StudyStore) -> float | None:
    """The binomial standard error of the winner's validation score: the trials table's, else
    from the validation split's size the study recorded (None where neither is known)."""
    if best is None:
        return None
    se = finite_or_none(best.get("score_se"))
    return se if se is not None else standard_error(score(best), (store.data_info().get("sizes") or {}).get("val"))


def search_evidence(space_file: Path, trials: list[dict], best: dict | None) -> dict[str, Any]:
    """What the flags read of one finished search: ``searched`` (each searched key of the study's
    search space file: kind, range, choices), ``winner`` (the best trial's values of them) and
    ``drawn`` (every trial's values); empty where the space file cannot be read."""
    from bmlr.tuning.search_space import SearchSpaceError, load_search_space

    try:
        params = load_search_space(space_file).params
    except (OSError, SearchSpaceError):
        return {}
    searched = {k: {"kind": p.kind, "low": p.low, "high": p.high, "choices": list(p.choices)}
                for k, p in params.items()}
    return {"searched": searched,
            "winner": {k: best[f"param.{k}"] for k in params if best and best.get(f"param.{k}") is not None},
            "drawn": {k: [t[f"param.{k}"] for t in trials if t.get(f"param.{k}") is not None] for k in params}}
