"""The alpha x beta surface (the paper's Figure 5, Section IV-E1): train a grid, or draw one
from a finished study's scattered trials.

    python tune.py surface --dataset synthetic                       # grid from the search space
    python tune.py surface --alphas 0.5 1 2 --betas 0.1 0.3 0.5 0.7 0.9 --seeds 0 1 --epochs 10
    python tune.py surface --from-trials tune_runs/synthetic/<study>  # no training

A surface run is an ordinary study (same folder layout, MLflow parent run with one nested run
per trial, `trials.csv`, `best.yaml`, resumable) whose trials are every (alpha, beta, seed)
combination, each trained for all its epochs: no ASHA, since a surface must not mix budgets.
Everything but alpha and beta is fixed, by default to the best configuration of the last
study on that data set (its `best.yaml`; `--base` names another YAML), else to the search
space's untuned configuration (its fixed part and each searched key's `default`).

Grid values: `--alphas` / `--betas`, else `--grid-size A B` points spread over the search
space's ranges (alpha geometrically on a log range, beta evenly), rounded to three
significant digits.

Outputs in the study folder (and, under `surface/`, as artifacts of the study's MLflow run):

    surface.csv           one row per (alpha, beta): validation accuracy over the cell's seeds
                          (mean, std, min, max; each seed's value is its trial's best_val_acc in
                          trials.csv), the per-modality accuracies at those epochs, trial ids
    surface_3d.png        one layer per alpha over beta, as the paper draws it
    surface_heatmap.png   the same values, written in each cell

`--from-trials DIR` bins a study's trials (alpha on a log scale, beta linearly, over the
search space's ranges) and writes `surface_from_trials.csv` and the two images (value of a
bin: the best validation accuracy of its trials; every trial is drawn as a dot in 3-D).
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from bmlr.tuning import plots

SURFACE_CSV = "surface.csv"
FROM_TRIALS_CSV = "surface_from_trials.csv"
IMAGES = ("surface_3d.png", "surface_heatmap.png")
GRID_KEYS = ("alpha", "beta")
DEFAULT_GRID_SIZE = (3, 5)
# used when the search space searches neither key (the paper's Figure 5 spans similar values)
FALLBACK_RANGES = {"alpha": (0.25, 4.0, True), "beta": (0.1, 0.9, False)}


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


# --- base configuration ------------------------------------------------------------------------
def last_study_best(storage: Path, dataset: str) -> Path | None:
    """`best.yaml` of the most recent finished study on `dataset` (surface runs excluded: a
    surface would otherwise build on the previous surface)."""
    base = Path(storage) / dataset
    found = []
    for info in base.glob("*/study.json"):
        try:
            data = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        kind = data.get("kind") or (data.get("settings") or {}).get("kind", "search")
        if kind == "surface" or not (info.parent / "best.yaml").is_file():
            continue
        found.append((info.stat().st_mtime, info.parent / "best.yaml"))
    return max(found)[1] if found else None


def study_trial_epochs(study_dir: Path) -> int | None:
    """The epochs the trials of a study trained (its --max-epochs), if recorded."""
    try:
        data = json.loads((study_dir / "study.json").read_text())
    except (OSError, ValueError):
        return None
    settings = data.get("settings") or {}
    return data.get("trial_epochs") or settings.get("max_epochs")


def surface_space_yaml(base: dict[str, Any], grid: dict[str, list[float]], header: list[str]) -> str:
    """A search-space file whose only searched keys are the grid (as choices) and whose fixed
    part is the base configuration: a surface is then an ordinary study of that file."""
    fixed = {k: v for k, v in base.items() if k not in GRID_KEYS and k != "name"}
    doc = {"search": {k: {"choice": list(v)} for k, v in grid.items()}, "fixed": fixed}
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
    return "\n".join(f"# {line}" for line in header) + "\n" + text


# --- results --------------------------------------------------------------------------------------
def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _seed_of(row: dict[str, Any]) -> int | None:
    value = row.get("param.seeds")
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if isinstance(value, (list, tuple)) and value:
        return int(value[0])
    return None


def cells(rows: list[dict[str, Any]], alphas: list[float] | None = None,
          betas: list[float] | None = None) -> list[dict[str, Any]]:
    """One dict per (alpha, beta) of a grid study's trials: the seeds' best_val_acc values
    aggregated (failed trials counted, not averaged), per-modality accuracies at those epochs."""
    groups: dict[tuple[float, float], list[dict[str, Any]]] = {}
    for row in rows:
        a, b = _float(row.get("param.alpha")), _float(row.get("param.beta"))
        if a is None or b is None:
            continue
        groups.setdefault((a, b), []).append(row)
    alphas = alphas or sorted({a for a, _ in groups})
    betas = betas or sorted({b for _, b in groups})
    extra_keys: list[str] = []
    for row in rows:
        extra_keys.extend(k for k in row if k.startswith("val_") and k not in extra_keys)
    out = []
    for a in alphas:
        for b in betas:
            members = sorted(groups.get((a, b), []), key=lambda r: (_seed_of(r) is None, _seed_of(r) or 0))
            ok = [r for r in members if r.get("status") != "failed" and _float(r.get("best_val_acc")) is not None]
            vals = [_float(r["best_val_acc"]) for r in ok]
            cell: dict[str, Any] = {"alpha": a, "beta": b, "seeds": len(ok), "failed": len(members) - len(ok)}
            if vals:
                cell.update(val_acc_mean=float(np.mean(vals)),
                            val_acc_std=float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                            val_acc_min=min(vals), val_acc_max=max(vals))
            else:
                cell.update(val_acc_mean=None, val_acc_std=None, val_acc_min=None, val_acc_max=None)
            for key in extra_keys:
                xs = [x for x in (_float(r.get(key)) for r in ok) if x is not None]
                cell[f"{key}_mean"] = float(np.mean(xs)) if xs else None
            epochs = [x for x in (_float(r.get("best_epoch")) for r in ok) if x is not None]
            cell["best_epoch_mean"] = float(np.mean(epochs)) if epochs else None
            cell["seed_values"] = " ".join(f"{_seed_of(r)}:{_float(r.get('best_val_acc'))}" for r in ok)
            cell["trial_ids"] = " ".join(str(r["trial_id"]) for r in members)
            cell["run_ids"] = " ".join(str(r.get("run_id") or "") for r in members)
            out.append(cell)
    return out


def best_cell_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A surface's best trial for `best.yaml`: from the cell with the highest mean over its
    seeds (ties: the smaller beta, then alpha), that cell's best seed's trial."""
    scored = [c for c in cells(rows) if c["val_acc_mean"] is not None]
    if not scored:
        return None
    best = sorted(scored, key=lambda c: (-c["val_acc_mean"], c["beta"], c["alpha"]))[0]
    members = [r for r in rows if _float(r.get("param.alpha")) == best["alpha"]
               and _float(r.get("param.beta")) == best["beta"] and r.get("status") != "failed"
               and _float(r.get("best_val_acc")) is not None]
    return max(members, key=lambda r: (_float(r["best_val_acc"]), str(r["trial_id"])))


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    tmp.replace(path)
    return path


def read_csv(path: Path) -> list[dict[str, Any]]:
    with Path(path).open() as f:
        return list(csv.DictReader(f))


def matrix(cell_rows: list[dict[str, Any]], key: str = "val_acc_mean"):
    """(alphas, betas, values [A, B] in % with NaN for none, the cells by (i, j))."""
    alphas = sorted({float(c["alpha"]) for c in cell_rows})
    betas = sorted({float(c["beta"]) for c in cell_rows})
    values = np.full((len(alphas), len(betas)), np.nan)
    by_index = {}
    for c in cell_rows:
        i, j = alphas.index(float(c["alpha"])), betas.index(float(c["beta"]))
        v = _float(c.get(key))
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


def draw_grid(cell_rows: list[dict[str, Any]], out_dir: Path, title: str, subtitle: str) -> list[Path]:
    alphas, betas, values, by_index = matrix(cell_rows)
    best = best_index(alphas, betas, values)
    notes = []
    for i in range(len(alphas)):
        line = []
        for j in range(len(betas)):
            c = by_index.get((i, j), {})
            n, failed = int(float(c.get("seeds") or 0)), int(float(c.get("failed") or 0))
            std = _float(c.get("val_acc_std"))
            text = f"\u00b1 {100 * std:.1f} (n={n})" if n > 1 and std is not None else ""
            if failed:
                text = (text + " " if text else "") + f"{failed} failed"
            line.append(text)
        notes.append(line)
    return [plots.surface_3d(alphas, betas, values, out_dir / IMAGES[0], title, subtitle, best=best),
            plots.surface_heatmap(alphas, betas, values, out_dir / IMAGES[1], title, subtitle, cells=notes,
                                  empty="failed", best=best)]


def _describe(settings, epochs: int, seeds: list[int]) -> tuple[str, str]:
    seeds_text = f"mean of {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
    title = f"{settings.dataset}: validation accuracy over \u03b1 \u00d7 \u03b2 (method {settings.method})"
    subtitle = f"best validation accuracy within {epochs} epochs, {seeds_text}, other settings fixed"
    return title, subtitle


def write_grid_outputs(plan, outcome, log: Callable[[str], None] = print) -> list[Path]:
    """After a surface study: surface.csv and the two images, logged to the parent run."""
    from bmlr.tuning import tracking

    s = plan.settings
    grid = {k: sorted(float(c) for c in plan.space.params[k].choices) for k in GRID_KEYS if k in plan.space.params}
    cell_rows = cells(outcome.rows, grid.get("alpha"), grid.get("beta"))
    csv_path = write_csv(cell_rows, outcome.study_dir / SURFACE_CSV)
    title, subtitle = _describe(s, plan.max_epochs, list(s.grid_seeds or [s.seed]))
    paths = [csv_path] + draw_grid(cell_rows, outcome.study_dir, title, subtitle)
    client = tracking.client_for(plan.tracking_uri)
    for path in paths:
        client.log_artifact(outcome.parent_run_id, str(path), "surface")
    log(format_grid(cell_rows))
    log(f"surface: {csv_path}\n  images: {', '.join(str(p) for p in paths[1:])}")
    return paths


def format_grid(cell_rows: list[dict[str, Any]]) -> str:
    """The grid as text: rows alpha, columns beta, validation accuracy in %."""
    alphas, betas, values, _ = matrix(cell_rows)
    head = "alpha \\ beta " + " ".join(f"{plots.fmt_value(b):>7s}" for b in betas)
    lines = ["validation accuracy (%):", head]
    for i, a in enumerate(alphas):
        lines.append(f"{plots.fmt_value(a):>12s} " + " ".join(
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
    trials = []
    for r in rows:
        a, b, v = _float(r.get("param.alpha")), _float(r.get("param.beta")), _float(r.get("best_val_acc"))
        if a is not None and b is not None and v is not None and r.get("status") != "failed":
            trials.append((a, b, v, r))
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
            centre_a = math.sqrt(a_edges[i] * a_edges[i + 1]) if a_log else (a_edges[i] + a_edges[i + 1]) / 2
            centre_b = math.sqrt(b_edges[j] * b_edges[j + 1]) if b_log else (b_edges[j] + b_edges[j + 1]) / 2
            out.append({"alpha": round_sig(centre_a), "beta": round_sig(centre_b),
                        "alpha_low": a_edges[i], "alpha_high": a_edges[i + 1],
                        "beta_low": b_edges[j], "beta_high": b_edges[j + 1], "trials": len(vals),
                        "val_acc_max": max(vals) if vals else None,
                        "val_acc_mean": float(np.mean(vals)) if vals else None,
                        "trial_ids": " ".join(str(t[3]["trial_id"]) for t in inside)})
    points = [(t[0], t[1], 100.0 * t[2]) for t in trials]
    return out, points


def draw_binned(bins: list[dict[str, Any]], points, out_dir: Path, title: str, subtitle: str,
                prefix: str = "surface_") -> list[Path]:
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
            ranges[key].append(f"{plots.fmt_value(round_sig(b[f'{key}_low']))}\u2013"
                               f"{plots.fmt_value(round_sig(b[f'{key}_high']))}")
    best = best_index(alphas, betas, values)
    return [plots.surface_3d(alphas, betas, values, out_dir / f"{prefix}3d.png", title, subtitle, points=points,
                             layer_label="\u03b1 bin \u2248 {} (best trial per \u03b2 bin)", best=best),
            plots.surface_heatmap(alphas, betas, values, out_dir / f"{prefix}heatmap.png", title, subtitle,
                                  cells=notes, colour_label="best validation accuracy in the bin (%)",
                                  empty="no trial", best=best, alpha_ticks=ranges["alpha"], beta_ticks=ranges["beta"])]


def surface_from_study(study_dir: Path, out_dir: Path | None = None, n_alpha: int | None = None,
                       n_beta: int | None = None, log: Callable[[str], None] = print,
                       mlflow: bool = True) -> list[Path]:
    """The scattered-trials surface of a finished study: `surface_from_trials.csv` and images
    `surface_from_trials_3d.png`, `surface_from_trials_heatmap.png` in `out_dir` (default: the
    study folder), logged to the study's MLflow run under `surface_from_trials/`."""
    from bmlr.tuning.search_space import load_search_space

    study_dir = Path(study_dir).resolve()
    if not (study_dir / "trials.csv").is_file():
        raise SurfaceError(f"{study_dir}: no trials.csv (is it a finished bmlr-tune study?)")
    rows = read_csv(study_dir / "trials.csv")
    space = None
    # the ranges to bin over: the study's copy of its search space (a staged study: the file it started from)
    for candidate in (study_dir / "search_space.yaml", _study_info(study_dir).get("search_space")):
        if candidate and Path(candidate).is_file():
            try:
                space = load_search_space(candidate)
                break
            except Exception:
                continue
    n = len([r for r in rows if r.get("status") != "failed"])
    n_alpha = n_alpha or (2 if n < 12 else 3)
    n_beta = n_beta or (3 if n < 12 else 5)
    bins, points = binned(rows, space, n_alpha, n_beta)
    out_dir = Path(out_dir or study_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(bins, out_dir / FROM_TRIALS_CSV)
    info = _study_info(study_dir)
    title = (f"{info.get('dataset', '?')}: validation accuracy of the study's trials over \u03b1 \u00d7 \u03b2 "
             f"(method {info.get('method', '?')})")
    subtitle = (f"{len(points)} trials binned; a cell is the best trial in its bin (other hyperparameters "
                f"vary); dots: every trial")
    paths = [csv_path] + draw_binned(bins, points, out_dir, title, subtitle, prefix="surface_from_trials_")
    if mlflow:
        _log_to_study_run(study_dir, paths, "surface_from_trials", log)
    return paths


def _study_info(study_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((Path(study_dir) / "study.json").read_text())
    except (OSError, ValueError):
        return {}
    settings = data.get("settings") or {}
    return {**settings, **{k: v for k, v in data.items() if k != "settings"}}


def _log_to_study_run(study_dir: Path, paths: list[Path], folder: str, log: Callable[[str], None]) -> None:
    from bmlr.tuning import tracking

    info = _study_info(study_dir)
    uri, run_id = info.get("tracking_uri"), info.get("parent_run_id")
    if not uri or not run_id:
        return
    try:
        client = tracking.client_for(uri)
        for path in paths:
            client.log_artifact(run_id, str(path), folder)
    except Exception as err:  # the figures are on disk; MLflow is a copy
        log(f"note: could not log {folder}/ to MLflow run {run_id} at {uri} ({type(err).__name__}: {err})")


# --- the command -------------------------------------------------------------------------------
def plan_surface(dataset: str, storage: str, search_space: str | None, base: str | None,
                 alphas: list[float] | None, betas: list[float] | None, grid_size: tuple[int, int],
                 seeds: list[int], epochs: int | None, name: str | None, overrides: dict[str, Any],
                 log: Callable[[str], None] = print, **settings_kwargs):
    """The StudySettings of a surface run, its generated search space written into the new
    study folder (`search_space.yaml`)."""
    from bmlr.config import from_dict, load_config
    from bmlr.tuning.search_space import load_search_space, method_reads, resolve_search_space
    from bmlr.tuning.study import StudyError, StudySettings

    storage_path = Path(storage).expanduser().resolve()
    space_path = resolve_search_space(search_space, dataset)
    space = load_search_space(space_path)
    trial_epochs = None
    if base:
        base_path = Path(base).expanduser().resolve()
        if not base_path.is_file():
            raise SurfaceError(f"--base {base}: file not found")
        base_cfg = load_config(base_path).to_dict()
        source = f"{base_path}"
        if base_path.name == "best.yaml":
            trial_epochs = study_trial_epochs(base_path.parent)
    else:
        found = last_study_best(storage_path, dataset)
        if found is not None:
            base_cfg = load_config(found).to_dict()
            source = f"{found} (the last study on {dataset})"
            trial_epochs = study_trial_epochs(found.parent)
        else:
            untuned = space.untuned()
            untuned = {k: v for k, v in untuned.items() if "." not in k}
            base_cfg = from_dict({**untuned, "dataset": dataset}, source=f"{space_path} (untuned)").to_dict()
            source = f"{space_path} (no finished study on {dataset} in {storage_path}: the search space's " \
                     f"fixed part and defaults)"
    if base_cfg.get("dataset") != dataset:
        raise SurfaceError(f"the base configuration ({source}) is for data set {base_cfg.get('dataset')!r}, "
                           f"not {dataset!r}")
    method = overrides.get("method", base_cfg.get("method", "bmlr"))
    missing = [k for k in GRID_KEYS if k not in method_reads(method)]
    if missing:
        raise SurfaceError(f"method {method!r} does not read {missing}: its surface would be flat")
    grid = grid_values(space, alphas, betas, grid_size)
    name = name or f"surface-{time.strftime('%Y%m%d-%H%M%S')}"
    study_dir = storage_path / dataset / name
    if (study_dir / "study.json").exists():
        raise StudyError(f"study {study_dir} exists; continue it with `tune.py surface --resume --name {name}` "
                         f"or choose another --name")
    epochs = epochs or trial_epochs or int(base_cfg["epochs"])
    base_cfg = {k: v for k, v in base_cfg.items() if k not in overrides}
    header = [f"alpha x beta surface of study {name}, generated by `bmlr-tune surface`.",
              f"Base configuration: {source}.",
              f"Every cell trains {epochs} epochs with each of the seeds {seeds}; fixed.epochs and fixed.seeds",
              "are the production settings of the exported best cell."]
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / "search_space.yaml"
    path.write_text(surface_space_yaml(base_cfg, grid, header))
    log(f"surface: base configuration {source}\n  alpha {grid['alpha']}\n  beta {grid['beta']}\n"
        f"  seeds {seeds}, {epochs} epochs per cell: {len(grid['alpha']) * len(grid['beta']) * len(seeds)} trials")
    settings = StudySettings(dataset=dataset, search_space=str(path), storage=str(storage_path), name=name,
                             samples=len(grid["alpha"]) * len(grid["beta"]) * len(seeds), max_epochs=epochs,
                             grace_period=1, seed=seeds[0], overrides=overrides, kind="surface",
                             grid_seeds=list(seeds), method=overrides.pop("method", None), **settings_kwargs)
    settings.grace_period = min(settings.grace_period, epochs)
    return settings, study_dir


def cleanup_failed_plan(study_dir: Path) -> None:
    """Remove a surface folder that holds nothing but its generated search space."""
    try:
        if study_dir.is_dir() and {p.name for p in study_dir.iterdir()} <= {"search_space.yaml"}:
            (study_dir / "search_space.yaml").unlink(missing_ok=True)
            study_dir.rmdir()
    except OSError:
        pass
