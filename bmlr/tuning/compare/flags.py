"""Which rows' places rest on their search, judged by each row's own search, never by another
row's score (a row that scores below the others is what a comparison exists to show).

A tuned row is flagged, with the reason and what to rerun, where:

* **seeds**: its searches (study seeds) exported winners whose test accuracies differ by more
  than the training seeds' noise (two standard errors of the difference of their means): which
  search ran decides the row's number;
* **edge**: a search's winner lies in the outer tenth of a searched numeric range (log scale
  where the range is): the best may lie beyond it;
* **missed**: a row ranked above it, trained with the same optimizer, won at a value of a
  shared key that this row's space excludes, or that none of its trials drew (within a tenth
  of its range; a choice never drawn): with common random numbers every row draws the same
  start-up values, so a region one row found and another never tried is the search's, not
  the method's;
* **budget**: TPE had only its random start-up trials (samples <= start-up), or the row had
  fewer trials than ``TRIALS_PER_KEY`` per key it searches (what a search was measured to need
  to settle, :mod:`~bmlr.tuning.compare.settings`).

Each search record carries what these read (:mod:`~bmlr.tuning.compare.records` writes
them): ``searched`` (each searched key's kind and range or choices), ``winner`` (the exported
values), ``drawn`` (every trial's value of each key) and ``trials``, beside ``results`` (its
production runs).
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from bmlr.tuning.compare.records import searches_of
from bmlr.tuning.compare.settings import TRIALS_PER_KEY
from bmlr.tuning.compare.verdict import runs_of
from bmlr.tuning.search_space import Param

__all__ = ["FLAG_NOTES", "search_flags", "edge_of"]

FLAG_NOTES = {
    "seeds": "its searches (study seeds) exported winners whose test accuracies differ by more than two standard "
             "errors of the training seeds' noise: the row's number depends on which search ran; rerun it with "
             "more `--samples` or `--study-seeds`",
    "edge": "a search's winner lies in the outer tenth of a searched range: the best may lie beyond it; widen "
            "that range in the row's search space (or `--widen` a study) and rerun the row",
    "missed": "a row ranked above it won at a value of a shared key that this row's space excludes or that none "
              "of its trials drew: the difference may be the search's; rerun the row with that range or more "
              "`--samples`",
    "budget": "the row's trials were only TPE's random start-up trials, or fewer than the trials per searched key "
              "a search was measured to need (docs/comparisons.md): its verdict may rest on which values were "
              "drawn; rerun without `--samples` (the default gives each row trials in proportion to its keys) or "
              "with more",
}
TENTH = 0.1  # "near" and "edge": a tenth of the range, on its own scale


def _param(key: str, spec: dict) -> Param:
    """A search record's range or choices as the search space's :class:`Param`."""
    return Param(key, spec.get("kind", "choice"), spec.get("low"), spec.get("high"),
                 choices=tuple(spec.get("choices") or ()))


def _numeric(spec: dict, value: Any) -> bool:
    return spec.get("kind") != "choice" and isinstance(value, (int, float))


def _study_runs(row: dict) -> dict[Any, list[float]]:
    """Study seed -> the test accuracies (points) of its winner's production runs."""
    out: dict[Any, list[float]] = {}
    for (study_seed, _), acc in runs_of(row).items():
        out.setdefault(study_seed, []).append(100 * acc)
    return out


def _seeds_flag(row: dict) -> str | None:
    """The two searches whose winners' test means differ most, where that exceeds two standard
    errors of the difference (the training seeds' spread within each)."""
    stats = [(seed, statistics.fmean(accs), statistics.stdev(accs) / math.sqrt(len(accs)))
             for seed, accs in _study_runs(row).items() if len(accs) > 1]
    if len(stats) < 2:
        return None
    hi, lo = max(stats, key=lambda s: s[1]), min(stats, key=lambda s: s[1])
    gap, two_se = hi[1] - lo[1], 2 * math.hypot(hi[2], lo[2])
    if gap <= two_se:
        return None
    return (f"study seeds disagree: {hi[1]:.2f} (seed {hi[0]}) vs {lo[1]:.2f} (seed {lo[0]}), {gap:.2f} points "
            f"apart (2 SE of training noise {two_se:.2f})")


def edge_of(spec: dict, value: Any) -> str | None:
    """``"top"`` or ``"bottom"`` where ``value`` lies in the outer tenth of the range ``spec``
    (:meth:`Param.edge`)."""
    if not _numeric(spec, value):
        return None
    return {"low": "bottom", "high": "top"}.get(_param("", spec).edge(value, TENTH))


def _edge_flags(row: dict) -> list[str]:
    out = []
    for k, search in enumerate(searches_of(row)):
        searched = search.get("searched") or {}
        for key, value in (search.get("winner") or {}).items():
            side = edge_of(searched.get(key) or {}, value)
            if side:
                spec = searched[key]
                out.append(f"study seed {search.get('study_seed', k)}: {key} = {value:.4g} at the {side} of "
                           f"[{spec['low']}, {spec['high']}]")
    return out


def _near(spec: dict, value: Any, drawn: list) -> bool:
    """Whether any drawn value is ``value`` (a choice) or within a tenth of the range of it."""
    if not _numeric(spec, value):
        return value in drawn
    param = _param("", spec)
    where = param.position(value)
    return any(abs(param.position(d) - where) <= TENTH for d in drawn if isinstance(d, (int, float)))


def _excludes(spec: dict, value: Any) -> bool:
    if spec.get("kind") == "choice":
        return value not in (spec.get("choices") or [])
    return isinstance(value, (int, float)) and not spec["low"] <= value <= spec["high"]


def _optimizer(row: dict) -> str | None:
    """The optimizer a row's winners trained with (None: not known)."""
    return next(((s.get("results") or {}).get("config", {}).get("optimizer") for s in searches_of(row)
                 if (s.get("results") or {}).get("config")), None)


def _missed_flags(row: dict, above: list[dict]) -> list[str]:
    """Each key of this row where a row ranked above it, with the same optimizer (an lr means
    another step with another optimizer: SGD rows beside Adam rows under `--protocol authors`),
    won at a value this row's space excludes or its trials never drew near (one reason per key)."""
    above = [o for o in above if None in (_optimizer(o), _optimizer(row)) or _optimizer(o) == _optimizer(row)]
    searched = {}
    drawn: dict[str, list] = {}
    for search in searches_of(row):
        searched.update(search.get("searched") or {})
        for key, values in (search.get("drawn") or {}).items():
            drawn.setdefault(key, []).extend(values)
    out = {}
    for other in above:
        for search in searches_of(other):
            for key, value in (search.get("winner") or {}).items():
                spec = searched.get(key)
                if spec is None or key in out:
                    continue
                if _excludes(spec, value):
                    out[key] = f"its {key} range excludes {value:.4g}, where {other['label']} won" if isinstance(
                        value, (int, float)) else f"its {key} choices exclude {value}, where {other['label']} won"
                elif key in drawn and not _near(spec, value, drawn[key]):
                    shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
                    out[key] = f"none of its trials drew {key} near {shown}, where {other['label']} won"
    return list(out.values())


def _mean_test(row: dict) -> float | None:
    accs = list(runs_of(row).values())
    return statistics.fmean(accs) if accs else None


def search_flags(rows: list[dict], samples: int | None = None) -> dict[str, list[tuple[str, str]]]:
    """Per row label, its flags as (kind, reason) (:data:`FLAG_NOTES`), from each row's own
    search (its `trials`, else ``samples``); rows without a search (untuned, failed) get only
    what they have evidence for."""
    means = {r["label"]: _mean_test(r) for r in rows}
    flags: dict[str, list[tuple[str, str]]] = {r["label"]: [] for r in rows}
    for r in rows:
        label = r["label"]
        if (reason := _seeds_flag(r)) is not None:
            flags[label].append(("seeds", reason))
        flags[label] += [("edge", reason) for reason in _edge_flags(r)]
        above = [o for o in rows if o is not r and None not in (means[label], means[o["label"]])
                 and means[o["label"]] > means[label]]
        flags[label] += [("missed", reason) for reason in _missed_flags(r, above)]
        if (reason := _budget_flag(r, samples)) is not None:
            flags[label].append(("budget", reason))
    return flags


def _budget_flag(row: dict, samples: int | None) -> str | None:
    """Random start-up trials only, or fewer than TRIALS_PER_KEY per searched key (a row's own
    trials: `trials`, else ``samples``)."""
    startup, trials = row.get("startup_trials"), row.get("trials", samples)
    if not isinstance(trials, int):
        return None
    if isinstance(startup, int) and trials <= startup:
        return f"random search only ({trials} trials <= {startup} start-up)"
    keys = len(searches_of(row)[0].get("searched") or {})
    if trials < TRIALS_PER_KEY * keys:
        return f"{trials} trials for {keys} searched keys, fewer than {TRIALS_PER_KEY} per key"
    return None
