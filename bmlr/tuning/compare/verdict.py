"""Which differences between a comparison's rows are real: each row against the reference and
against the best row, as a mean difference of test accuracy with two standard errors of it and
a verdict in words (ahead, behind, within the noise), and the rows that cannot be told apart
from the best.

A row's runs are its winners' production seeds, one winner per study seed. Two rows trained
with the same study seeds and training seeds are **paired**: per study seed, the mean over
training seeds of the seed-by-seed differences. With several study seeds, the standard error
is the spread of those per-study-seed differences over the study seeds (so it holds both the
search's luck and the training seeds' noise), but never less than the training seeds' own
(the spread of every run's difference): two searches that export the same configuration train
the same runs, and their agreement says nothing of the training noise. With one study seed it
is the spread over training seeds, which leaves the search's luck out (the text says so). Rows
whose runs do not pair are compared by their means with the standard errors of both (Welch).

The ranking's groups (:func:`groups`) follow the mean test accuracy down: a row joins the group
above it unless that group's first row is ahead of it.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from bmlr.tuning.compare.records import searches_of

__all__ = ["Difference", "runs_of", "difference", "best_row", "groups", "verdict_lines"]


def runs_of(row: dict) -> dict[tuple[int, int], float]:
    """``(study seed, training seed) -> test accuracy`` of every production run of the row."""
    out = {}
    for k, search in enumerate(searches_of(row)):
        for run in (search.get("results") or {}).get("seeds", []):
            acc = (run.get("test") or {}).get("acc")
            if isinstance(acc, (int, float)):
                out[(search.get("study_seed", k), run["seed"])] = float(acc)
    return out


@dataclass(frozen=True)
class Difference:
    """Row ``a`` minus row ``b``, in points of test accuracy."""

    a: str
    b: str
    points: float
    two_se: float | None  # None: one run each, nothing to estimate the noise from
    basis: str  # how the noise was estimated

    @property
    def verdict(self) -> str:
        if self.two_se is None:
            return "noise unknown"
        if abs(self.points) <= self.two_se:
            return "within the noise"
        return "ahead" if self.points > 0 else "behind"

    def text(self) -> str:
        band = "" if self.two_se is None else f" ± {self.two_se:.2f}"
        return f"{self.a} - {self.b}: {self.points:+.2f}{band} ({self.basis}): {self.verdict}"


def _se(values: list[float]) -> float | None:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def difference(a: dict, b: dict) -> Difference | None:
    """Row ``a`` against row ``b`` (None where either has no run)."""
    ra, rb = runs_of(a), runs_of(b)
    if not ra or not rb:
        return None
    if set(ra) == set(rb):
        studies = sorted({s for s, _ in ra})
        per_study = [statistics.fmean(100 * (ra[k] - rb[k]) for k in ra if k[0] == s) for s in studies]
        training = _se([100 * (ra[k] - rb[k]) for k in ra])  # the training seeds' noise alone
        if len(studies) > 1:
            se, basis = max(_se(per_study), training or 0.0), f"paired, over {len(studies)} study seeds"
        else:
            se, basis = training, f"paired, over {len(ra)} training seeds only"
        return Difference(a["label"], b["label"], statistics.fmean(per_study), None if se is None else 2 * se, basis)
    va, vb = [100 * v for v in ra.values()], [100 * v for v in rb.values()]
    ses = [_se(va), _se(vb)]
    se = None if None in ses else math.sqrt(ses[0] ** 2 + ses[1] ** 2)
    return Difference(a["label"], b["label"], statistics.fmean(va) - statistics.fmean(vb),
                      None if se is None else 2 * se, f"unpaired, {len(va)} and {len(vb)} runs")


def _mean(row: dict) -> float:
    return statistics.fmean(runs_of(row).values())


def best_row(rows: list[dict]) -> dict | None:
    """The row with the highest mean test accuracy over its runs (None: no row has a run)."""
    done = [r for r in rows if runs_of(r)]
    return max(done, key=_mean) if done else None


def groups(rows: list[dict]) -> list[list[dict]]:
    """The rows with runs as groups, best first, in order of mean test accuracy: a row joins the
    current group where the group's first row is not ahead of it (within the noise, or noise
    unknown), else it starts the next group. The ranking so never puts a row below one with a
    lower mean."""
    out: list[list[dict]] = []
    for row in sorted((r for r in rows if runs_of(r)), key=_mean, reverse=True):
        if out and difference(out[-1][0], row).verdict != "ahead":
            out[-1].append(row)
        else:
            out.append([row])
    return out


def verdict_lines(rows: list[dict], reference: str | None) -> list[str]:
    """The section of comparison.md: every row against the reference and against the best row
    (by mean test accuracy), and the rows that cannot be told apart from the best."""
    done = [r for r in rows if runs_of(r)]
    if len(done) < 2:
        return []
    best = best_row(done)
    ref = next((r for r in done if r["label"] == reference), None)
    lines = ["Differences in test accuracy (points; ± two standard errors of the difference):", ""]
    if ref is not None:
        lines += [f"- {d.text()}" for r in done if r is not ref and (d := difference(r, ref))]
    if best is not ref:
        lines += [f"- {d.text()}" for r in done if r is not best and r is not ref and (d := difference(best, r))]
    tied = [r["label"] for r in done if r is not best and difference(best, r).verdict != "ahead"]
    lines += ["", f"Cannot be told apart from the best row ({best['label']}): "
              + (", ".join(tied) if tied else "none") + "."]
    return lines
