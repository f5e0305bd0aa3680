"""The alpha x beta surface (the paper's Figure 5, Section IV-E1) as data and figures: the grid's
values, a grid study's cells, a finished study's trials binned, the CSV files and the images.

This module computes (a figure's numbers and labels: :class:`SurfaceFigure`, drawn by
:mod:`bmlr.tuning.report.surface_figures`); planning and running a surface study (the `tune.py
surface` command) is :mod:`bmlr.tuning.surface_study`. It imports neither the study nor the
report's sections, so both can use it.

    surface.csv           one row per (alpha, beta): validation accuracy over the cell's seeds
                          (mean, std, min, max; each seed's value is its trial's best_val_acc in
                          trials.csv), the per-modality accuracies at those epochs, trial ids
    surface_3d.png        one layer per alpha over beta, as the paper draws it
    surface_heatmap.png   the same values, written in each cell

:func:`surface_from_study` bins a finished study's trials (alpha on a log scale, beta linearly,
over the search space's ranges) and writes `surface_from_trials.csv` and the two images (value
of a bin: the best validation accuracy of its trials; every trial is drawn as a dot in 3-D).

The best cell is :func:`bmlr.tuning.selection.choose_best_group` over the (alpha, beta) cells:
the highest mean over the seeds, ties to the smaller beta, then the smaller alpha.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from bmlr import fileio
from bmlr.fileio import finite_or_none
from bmlr.tuning.search_space import SearchSpaceError, load_search_space
from bmlr.tuning.selection import choose_best, choose_best_group, is_candidate, score
from bmlr.tuning.store import StoreError, StudyStore

__all__ = ["SURFACE_CSV", "FROM_TRIALS_CSV", "IMAGES", "GRID_KEYS", "DEFAULT_GRID_SIZE", "SurfaceError",
           "round_sig", "spread", "axis_range", "grid_values", "cells", "cell_key", "best_cell_row", "read_csv",
           "matrix", "best_index", "fmt_value", "best_cell_label", "SurfaceFigure", "grid_figure", "draw_grid",
           "describe_grid", "format_grid", "binned", "binned_figure", "draw_binned", "best_trial_label",
           "surface_from_study"]

SURFACE_CSV = "surface.csv"
FROM_TRIALS_CSV = "surface_from_trials.csv"
IMAGES = ("surface_3d.png", "surface_heatmap.png")
GRID_KEYS = ("alpha", "beta")
DEFAULT_GRID_SIZE = (3, 5)
# used when the search space searches neither key (the paper's Figure 5 spans similar values)
FALLBACK_RANGES = {"alpha": (0.25, 4.0, True), "beta": (0.1, 0.9, False)}
TEXT_COLUMNS = ("trial_ids", "run_ids", "seed_values", "best_trial_id")  # space-separated identifiers, kept as text


class SurfaceError(RuntimeError):
    """The surface cannot be built; the message says why."""


# --- grid values ----------------------------------------------------------------------------------
def round_sig(value: float, digits: int = 3) -> float:
    if value == 0:
        return 0.0
    return float(f"{value:.{digits}g}")


def spread(low: float, high: float, n: int, log: bool) -> list[float]:
    """`n` values from low to high (both included), geometric when `log`, rounded to 3 digits."""
    if n < 1:
        raise SurfaceError(f"a grid needs at least one value per axis, got {n}")
    if n == 1:
        return [round_sig(math.sqrt(low * high) if log else (low + high) / 2)]
    values = np.geomspace(low, high, n) if log else np.linspace(low, high, n)
    out = []
    for v in values:
        r = round_sig(float(v))
        if r not in out:
            out.append(r)
    return out


def axis_range(space, key: str) -> tuple[float, float, bool]:
    """(low, high, log) of `key` in a search space, or a fallback when it is not searched."""
    param = space.params.get(key) if space is not None else None
    if param is not None and param.kind in ("uniform", "loguniform"):
        return float(param.low), float(param.high), param.kind == "loguniform"
    if param is not None and param.kind == "choice":
        numbers = [float(c) for c in param.choices]
        return min(numbers), max(numbers), key == "alpha"
    return FALLBACK_RANGES[key]


def grid_values(space, alphas: list[float] | None, betas: list[float] | None,
                grid_size: tuple[int, int] = DEFAULT_GRID_SIZE) -> dict[str, list[float]]:
    """The grid: explicit values where given, else spread over the search space's ranges."""
    out = {}
    for key, given, n in (("alpha", alphas, grid_size[0]), ("beta", betas, grid_size[1])):
        if given:
            values = [float(v) for v in given]
            if len(set(values)) != len(values):
                raise SurfaceError(f"--{key}s: values must be distinct, got {values}")
            out[key] = sorted(values)
        else:
            low, high, log = axis_range(space, key)
            out[key] = spread(low, high, n, log)
    return out


# --- a grid study's cells --------------------------------------------------------------------------
def _seed_of(row: dict[str, Any]) -> int | None:
    value = row.get("param.seeds")
    if isinstance(value, str):  # a list cell of trials.csv reads back as its text, "[0]"
        value = yaml.safe_load(value)
    if isinstance(value, (list, tuple)) and value:
        return int(value[0])
    return None


def cell_key(row: dict[str, Any]) -> tuple[float, float] | None:
    """The trial's (alpha, beta) cell, or None where it has no value for either."""
    a, b = finite_or_none(row.get("param.alpha")), finite_or_none(row.get("param.beta"))
    return None if a is None or b is None else (a, b)


def cells(rows: list[dict[str, Any]], alphas: list[float] | None = None,
          betas: list[float] | None = None) -> list[dict[str, Any]]:
    """One dict per (alpha, beta) of a grid study's trials: the seeds' best_val_acc values
    aggregated (failed trials counted, not averaged), per-modality accuracies at those epochs."""
    groups: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for row in rows:
        key = cell_key(row)
        if key is not None:
            groups.setdefault(key, []).append(row)
    alphas = alphas or sorted({a for a, _ in groups})
    betas = betas or sorted({b for _, b in groups})
    extra_keys: list[str] = []
    for row in rows:
        extra_keys.extend(k for k in row if k.startswith("val_") and k not in extra_keys)
    return [_cell(a, b, groups.get((a, b), []), extra_keys) for a in alphas for b in betas]


def _cell(alpha: float, beta: float, members: list[dict[str, Any]], extra_keys: list[str]) -> dict[str, Any]:
    members = sorted(members, key=lambda r: (_seed_of(r) is None, _seed_of(r) or 0))
    ok = [r for r in members if is_candidate(r)]
    vals = [score(r) for r in ok]
    cell: dict[str, Any] = {"alpha": alpha, "beta": beta, "seeds": len(ok), "failed": len(members) - len(ok)}
    if vals:
        cell.update(val_acc_mean=float(np.mean(vals)),
                    val_acc_std=float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                    val_acc_min=min(vals), val_acc_max=max(vals))
    else:
        cell.update(val_acc_mean=None, val_acc_std=None, val_acc_min=None, val_acc_max=None)
    for key in extra_keys:
        xs = [x for x in (finite_or_none(r.get(key)) for r in ok) if x is not None]
        cell[f"{key}_mean"] = float(np.mean(xs)) if xs else None
    epochs = [x for x in (finite_or_none(r.get("best_epoch")) for r in ok) if x is not None]
    cell["best_epoch_mean"] = float(np.mean(epochs)) if epochs else None
    cell["seed_values"] = " ".join(f"{_seed_of(r)}:{score(r)}" for r in ok)
    cell["trial_ids"] = " ".join(str(r["trial_id"]) for r in members)
    cell["run_ids"] = " ".join(str(r.get("run_id") or "") for r in members)
    return cell


def best_cell_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A surface's best trial for `best.yaml`: from the cell with the highest mean over its
    seeds (ties: the smaller beta, then alpha), that cell's best seed's trial (the selection
    rule's order)."""
    return choose_best_group(rows, cell_key, tie=lambda key: (key[1], key[0]))


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """`surface.csv` or `surface_from_trials.csv`, each cell typed back (numbers, None)."""
    return fileio.read_csv(path, text_columns=TEXT_COLUMNS)


def matrix(cell_rows: list[dict[str, Any]], key: str = "val_acc_mean"):
    """(alphas, betas, values [A, B] in % with NaN for none, the cells by (i, j))."""
    alphas = sorted({float(c["alpha"]) for c in cell_rows})
    betas = sorted({float(c["beta"]) for c in cell_rows})
    values = np.full((len(alphas), len(betas)), np.nan)
    by_index = {}
    for c in cell_rows:
        i, j = alphas.index(float(c["alpha"])), betas.index(float(c["beta"]))
        v = finite_or_none(c.get(key))
        if v is not None:
            values[i, j] = 100.0 * v
        by_index[i, j] = c
    return alphas, betas, values, by_index


def best_index(alphas: list[float], betas: list[float], values: np.ndarray) -> tuple[int, int] | None:
    """The best cell by the rule `best_cell_row` uses: highest value, then the smaller beta,
    then the smaller alpha."""
    found = [(-values[i, j], betas[j], alphas[i], i, j) for i in range(len(alphas)) for j in range(len(betas))
             if np.isfinite(values[i, j])]
    return tuple(min(found)[3:]) if found else None


def fmt_value(value: float) -> str:
    """Grid values as typed: 0.5, 0.275, 2, 0.25 (no trailing zeros)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def best_cell_label(value: float, alpha: float, beta: float) -> str:
    """The legend text of a grid's best cell: its value (%) and its alpha and beta."""
    return f"best cell: {value:.1f}% at \u03b1={fmt_value(alpha)}, \u03b2={fmt_value(beta)}"


@dataclass
class SurfaceFigure:
    """What a surface's two figures (:mod:`bmlr.tuning.report.surface_figures`) draw: `values[i, j]`
    in % at alphas[i], betas[j] (NaN: none) and the labels. The best cell (default: :func:`best_index`'s)
    is marked in 3-D at `best_point` (a binned surface: its best trial's own alpha and beta)."""

    alphas: list[float]
    betas: list[float]
    values: np.ndarray
    title: str
    subtitle: str = ""
    best: tuple[int, int] | None = None
    best_point: tuple[float, float, float] | None = None
    best_label: str | None = None
    notes: list[list[str]] | None = None    # under each heat-map cell's value
    points: list[tuple[float, float, float]] | None = None  # (alpha, beta, %): trials drawn as dots in 3-D
    layer_label: str = "\u03b1 = {}"
    colour_label: str = "validation accuracy (%)"
    empty: str = "no value"                 # a heat-map cell without a value
    alpha_ticks: list[str] | None = None    # the heat map's own tick labels (default: the values)
    beta_ticks: list[str] | None = None

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=float)
        if self.best is None:
            self.best = best_index(self.alphas, self.betas, self.values)
        if self.best is not None:
            i, j = self.best
            self.best_point = self.best_point or (self.alphas[i], self.betas[j], float(self.values[i, j]))
            self.best_label = self.best_label or best_cell_label(self.values[i, j], self.alphas[i], self.betas[j])

    label = staticmethod(fmt_value)  # how the figures write an alpha or a beta


def grid_figure(cell_rows: list[dict[str, Any]], title: str, subtitle: str) -> SurfaceFigure:
    """A grid study's figures: each cell's mean, with its spread over the seeds and its failed
    trials written under it."""
    alphas, betas, values, by_index = matrix(cell_rows)
    notes = []
    for i in range(len(alphas)):
        line = []
        for j in range(len(betas)):
            c = by_index.get((i, j), {})
            n, failed = int(float(c.get("seeds") or 0)), int(float(c.get("failed") or 0))
            std = finite_or_none(c.get("val_acc_std"))
            text = f"\u00b1 {100 * std:.1f} (n={n})" if n > 1 and std is not None else ""
            if failed:
                text = (text + " " if text else "") + f"{failed} failed"
            line.append(text)
        notes.append(line)
    return SurfaceFigure(alphas, betas, values, title, subtitle, notes=notes, empty="failed")


def draw_grid(cell_rows: list[dict[str, Any]], out_dir: Path, title: str, subtitle: str) -> list[Path]:
    """`surface_3d.png` and `surface_heatmap.png` of a grid study in `out_dir`."""
    from bmlr.tuning.report import surface_figures  # (matplotlib; and the report imports this module)

    return surface_figures.write(grid_figure(cell_rows, title, subtitle), out_dir / IMAGES[0], out_dir / IMAGES[1])


def describe_grid(dataset: str, method: str, epochs: int, seeds: list[int]) -> tuple[str, str]:
    """The title and subtitle of a grid study's figures."""
    seeds_text = f"mean of {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
    title = f"{dataset}: validation accuracy over \u03b1 \u00d7 \u03b2 (method {method})"
    subtitle = f"best validation accuracy within {epochs} epochs, {seeds_text}, other settings fixed"
    return title, subtitle


def format_grid(cell_rows: list[dict[str, Any]]) -> str:
    """The grid as text: rows alpha, columns beta, validation accuracy in %."""
    alphas, betas, values, _ = matrix(cell_rows)
    head = "alpha \\ beta " + " ".join(f"{fmt_value(b):>7s}" for b in betas)
    lines = ["validation accuracy (%):", head]
    for i, a in enumerate(alphas):
        lines.append(f"{fmt_value(a):>12s} " + " ".join(
            f"{values[i, j]:7.1f}" if np.isfinite(values[i, j]) else f"{'-':>7s}" for j in range(len(betas))))
    return "\n".join(lines)


# --- a surface from a study's scattered trials ----------------------------------------------------
def _edges(low: float, high: float, n: int, log: bool) -> np.ndarray:
    if high <= low:
        return np.array([low, high])
    return np.geomspace(low, high, n + 1) if log else np.linspace(low, high, n + 1)


def binned(rows: list[dict[str, Any]], space=None, n_alpha: int = 3, n_beta: int = 5):
    """Bin trials by (alpha, beta): alpha on a log scale, beta linearly, over the search space's
    ranges (else the trials' own). Returns (bin rows, points) where a bin's value is the best
    validation accuracy of its non-failed trials; `points` are the trials (alpha, beta, % value)."""
    trials = [(*cell_key(r), score(r), r) for r in rows if cell_key(r) is not None and is_candidate(r)]
    if not trials:
        raise SurfaceError("no finished trial with both alpha and beta: nothing to draw")
    axes = {}
    for key, n, idx in (("alpha", n_alpha, 0), ("beta", n_beta, 1)):
        seen = [t[idx] for t in trials]
        low, high, log = axis_range(space, key) if space is not None and key in space.params else (
            min(seen), max(seen), key == "alpha")
        low, high = min(low, min(seen)), max(high, max(seen))
        n = 1 if max(seen) - min(seen) < 1e-12 else n
        axes[key] = (_edges(low, high, n, log), log)
    out = []
    a_edges, a_log = axes["alpha"]
    b_edges, b_log = axes["beta"]
    for i in range(len(a_edges) - 1):
        for j in range(len(b_edges) - 1):
            inside = [t for t in trials
                      if (a_edges[i] <= t[0] <= a_edges[i + 1] if i == len(a_edges) - 2 else a_edges[i] <= t[0] < a_edges[i + 1])
                      and (b_edges[j] <= t[1] <= b_edges[j + 1] if j == len(b_edges) - 2 else b_edges[j] <= t[1] < b_edges[j + 1])]
            vals = [t[2] for t in inside]
            top = choose_best([t[3] for t in inside])
            centre_a = math.sqrt(a_edges[i] * a_edges[i + 1]) if a_log else (a_edges[i] + a_edges[i + 1]) / 2
            centre_b = math.sqrt(b_edges[j] * b_edges[j + 1]) if b_log else (b_edges[j] + b_edges[j + 1]) / 2
            out.append({"alpha": round_sig(centre_a), "beta": round_sig(centre_b),
                        "alpha_low": a_edges[i], "alpha_high": a_edges[i + 1],
                        "beta_low": b_edges[j], "beta_high": b_edges[j + 1], "trials": len(vals),
                        "val_acc_max": max(vals) if vals else None,
                        "val_acc_mean": float(np.mean(vals)) if vals else None,
                        "trial_ids": " ".join(str(t[3]["trial_id"]) for t in inside),
                        "best_trial_id": top["trial_id"] if top else None,
                        "best_alpha": cell_key(top)[0] if top else None,
                        "best_beta": cell_key(top)[1] if top else None})
    points = [(t[0], t[1], 100.0 * t[2]) for t in trials]
    return out, points


def binned_figure(bins: list[dict[str, Any]], points, title: str, subtitle: str) -> SurfaceFigure:
    """A binned surface's figures: a bin's best trial's value, the trials per bin under it, the
    bins' ranges as the heat map's ticks, the best bin marked where its best trial lies."""
    alphas = sorted({b["alpha"] for b in bins})
    betas = sorted({b["beta"] for b in bins})
    values = np.full((len(alphas), len(betas)), np.nan)
    notes = [["" for _ in betas] for _ in alphas]
    for b in bins:
        i, j = alphas.index(b["alpha"]), betas.index(b["beta"])
        if b["val_acc_max"] is not None:
            values[i, j] = 100.0 * b["val_acc_max"]
        notes[i][j] = f"n={b['trials']}" if b["trials"] else ""
    ranges = {}
    for key, centres in (("alpha", alphas), ("beta", betas)):
        ranges[key] = []
        for c in centres:
            b = next(x for x in bins if x[key] == c)
            ranges[key].append(f"{fmt_value(round_sig(b[f'{key}_low']))}\u2013{fmt_value(round_sig(b[f'{key}_high']))}")
    best = best_index(alphas, betas, values)
    top = next((b for b in bins if best is not None and (b["alpha"], b["beta"]) == (alphas[best[0]], betas[best[1]])),
               None)
    return SurfaceFigure(alphas, betas, values, title, subtitle, best=best,
                         best_point=(top["best_alpha"], top["best_beta"], 100.0 * top["val_acc_max"]) if top else None,
                         best_label=best_trial_label(top) if top else None, notes=notes, points=points,
                         layer_label="\u03b1 bin \u2248 {} (best trial per \u03b2 bin)",
                         colour_label="best validation accuracy in the bin (%)", empty="no trial",
                         alpha_ticks=ranges["alpha"], beta_ticks=ranges["beta"])


def draw_binned(bins: list[dict[str, Any]], points, out_dir: Path, title: str, subtitle: str,
                prefix: str = "surface_") -> list[Path]:
    """`<prefix>3d.png` and `<prefix>heatmap.png` of a binned surface in `out_dir`."""
    from bmlr.tuning.report import surface_figures

    return surface_figures.write(binned_figure(bins, points, title, subtitle), out_dir / f"{prefix}3d.png",
                                 out_dir / f"{prefix}heatmap.png")


def best_trial_label(bin_row: dict[str, Any]) -> str:
    """The legend text of a binned surface's best bin: its best trial's own score and sampled
    alpha and beta (not the bin's centre, which no trial need have)."""
    return (f"best trial {bin_row['best_trial_id']}: {100.0 * bin_row['val_acc_max']:.1f}% at "
            f"\u03b1={fmt_value(bin_row['best_alpha'])}, \u03b2={fmt_value(bin_row['best_beta'])}")


def surface_from_study(study_dir: Path, out_dir: Path | None = None, n_alpha: int | None = None,
                       n_beta: int | None = None, log: Callable[[str], None] = print,
                       mlflow: bool = True) -> list[Path]:
    """The scattered-trials surface of a finished study: `surface_from_trials.csv` and images
    `surface_from_trials_3d.png`, `surface_from_trials_heatmap.png` in `out_dir` (default: the
    study folder), logged to the study's MLflow run under `surface_from_trials/`."""
    store = StudyStore(study_dir)
    try:
        rows = store.read_rows()
        info = store.read_info() if store.exists() else {}
    except StoreError as err:
        raise SurfaceError(f"{store.dir}: not a finished bmlr-tune study ({err})") from None
    settings = info.get("settings") or {}
    space = _study_space(store, settings.get("search_space"), log)
    n = len([r for r in rows if r.get("status") != "failed"])
    n_alpha = n_alpha or (2 if n < 12 else 3)
    n_beta = n_beta or (3 if n < 12 else 5)
    bins, points = binned(rows, space, n_alpha, n_beta)
    out_dir = Path(out_dir or store.dir)
    csv_path = fileio.write_csv(bins, out_dir / FROM_TRIALS_CSV)
    title = (f"{settings.get('dataset', '?')}: validation accuracy of the study's trials over \u03b1 \u00d7 "
             f"\u03b2 (method {settings.get('method', '?')})")
    subtitle = (f"{len(points)} trials binned; a cell is the best trial in its bin (other hyperparameters "
                f"vary); dots: every trial")
    paths = [csv_path] + draw_binned(bins, points, out_dir, title, subtitle, prefix="surface_from_trials_")
    if mlflow and info.get("tracking_uri") and info.get("parent_run_id"):
        from bmlr.tuning import tracking  # (imports Ray Tune: only where MLflow is written)

        tracking.log_artifacts_safely(info["tracking_uri"], info["parent_run_id"], paths, "surface_from_trials",
                                      log)
    return paths


def _study_space(store: StudyStore, original: str | None, log: Callable[[str], None]):
    """The ranges to bin over: the study's copy of its search space, else (a staged study) the
    file it started from; None (the trials' own ranges) where neither can be read."""
    for candidate in (store.space_path, original):
        if candidate and Path(candidate).is_file():
            try:
                return load_search_space(candidate)
            except (SearchSpaceError, OSError) as err:
                log(f"note: {candidate} not used for the bins' ranges ({err})")
    return None
