"""The alpha x beta surface as a study (the paper's Figure 5, Section IV-E1): `tune.py surface`.

    python tune.py surface --dataset synthetic                       # grid from the search space
    python tune.py surface --alphas 0.5 1 2 --betas 0.1 0.3 0.5 0.7 0.9 --seeds 0 1 --epochs 10
    python tune.py surface --from-trials tune_runs/synthetic/<study>  # no training (bmlr.tuning.surface)

A surface run is an ordinary study (same folder layout, MLflow parent run with one nested run
per trial, `trials.csv`, `best.yaml`, resumable) whose trials are every (alpha, beta, seed)
combination, each trained for all its epochs: no ASHA, since a surface must not mix budgets.
Everything but alpha and beta is fixed, by default to the best configuration of the last
study on that data set (its `best.yaml`; `--base` names another YAML), else to the search
space's untuned configuration (its fixed part and each searched key's `default`).

Grid values: `--alphas` / `--betas`, else `--grid-size A B` points spread over the search
space's ranges (alpha geometrically on a log range, beta evenly), rounded to three
significant digits.

:func:`plan_surface` builds the grid's search space as an object (the study records it as its
`search_space.yaml`); :func:`run_surface` runs or resumes the study with the surface's rules:
its strategy (:class:`bmlr.tuning.strategies.Grid`) exports the best cell's best seed
(:func:`bmlr.tuning.surface.best_cell_row`), and a finished surface writes `surface.csv` and its
two images (:mod:`bmlr.tuning.surface`), also logged under `surface/` to the study's MLflow run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from bmlr.config import from_dict, load_config
from bmlr.fileio import abs_path, timestamp
from bmlr.methods import METHODS
from bmlr.tuning.search_space import (SearchSpace, load_search_space, parse_search_space,
                                      resolve_search_space)
from bmlr.tuning.store import SPACE_FILE, StoreError, StudyStore, studies, study_folder
from bmlr.tuning.study import Runtime, StudyError, StudyOutcome, StudySettings, run_study
from bmlr.tuning.surface import GRID_KEYS, SurfaceError, grid_values

__all__ = ["last_study_best", "surface_space", "plan_surface", "run_surface"]


# --- base configuration ------------------------------------------------------------------------
def last_study_best(storage: Path, dataset: str) -> Path | None:
    """`best.yaml` of the most recent finished study on `dataset` (surface runs excluded: a
    surface would otherwise build on the previous surface)."""
    for store in reversed(studies(storage, dataset)):
        try:
            kind = store.kind()
        except StoreError:  # a study.json being written or cut off: not a finished study
            continue
        if kind != "surface" and store.best_path.is_file():
            return store.best_path
    return None


def _trial_epochs(folder: Path) -> int | None:
    """The epochs the trials of the study in `folder` trained (its --max-epochs), if recorded."""
    try:
        return StudyStore(folder).trial_epochs()
    except StoreError:
        return None


def _base_config(storage: Path, dataset: str, space: SearchSpace, space_path: Path,
                 base: str | None) -> tuple[dict[str, Any], str, int | None]:
    """(the configuration every cell trains, where it comes from, the epochs its study trained)."""
    if base:
        base_path = abs_path(base)
        if not base_path.is_file():
            raise SurfaceError(f"--base {base}: file not found")
        epochs = _trial_epochs(base_path.parent) if base_path.name == "best.yaml" else None
        return load_config(base_path).to_dict(), f"{base_path}", epochs
    found = last_study_best(storage, dataset)
    if found is not None:
        return load_config(found).to_dict(), f"{found} (the last study on {dataset})", _trial_epochs(found.parent)
    untuned = {k: v for k, v in space.untuned().items() if "." not in k}
    cfg = from_dict({**untuned, "dataset": dataset}, source=f"{space_path} (untuned)").to_dict()
    return cfg, (f"{space_path} (no finished study on {dataset} in {storage}: the search space's fixed part "
                 f"and defaults)"), None


def surface_space(base: dict[str, Any], grid: dict[str, list[float]], header: list[str],
                  source: str) -> SearchSpace:
    """A search space whose only searched keys are the grid (as choices) and whose fixed part
    is the base configuration: a surface is then an ordinary study of it. Its text (what the
    study records) starts with `header` as comments."""
    fixed = {k: v for k, v in base.items() if k not in GRID_KEYS and k != "name"}
    doc = {"search": {k: {"choice": list(v)} for k, v in grid.items()}, "fixed": fixed}
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)
    text = "\n".join(f"# {line}" for line in header) + "\n" + text
    return parse_search_space(yaml.safe_load(text), source=source, text=text)


# --- the command -------------------------------------------------------------------------------
def plan_surface(dataset: str, storage: str, search_space: str | None, base: str | None,
                 alphas: list[float] | None, betas: list[float] | None, grid_size: tuple[int, int],
                 seeds: list[int], epochs: int | None, name: str | None, overrides: dict[str, Any],
                 log: Callable[[str], None] = print, **settings_kwargs) -> tuple[StudySettings, SearchSpace]:
    """The StudySettings of a new surface run and its grid's search space (for
    :func:`run_surface`). Nothing is written: the study records the space when it starts."""
    storage_path = abs_path(storage)
    space_path = resolve_search_space(search_space, dataset)
    space = load_search_space(space_path)
    base_cfg, source, trial_epochs = _base_config(storage_path, dataset, space, space_path, base)
    if base_cfg.get("dataset") != dataset:
        raise SurfaceError(f"the base configuration ({source}) is for data set {base_cfg.get('dataset')!r}, "
                           f"not {dataset!r}")
    method = overrides.get("method", base_cfg.get("method", "bmlr"))
    missing = [k for k in GRID_KEYS if k not in METHODS.get(method).reads]
    if missing:
        raise SurfaceError(f"method {method!r} does not read {missing}: its surface would be flat")
    grid = grid_values(space, alphas, betas, grid_size)
    name = name or f"surface-{timestamp()}"
    study_dir = study_folder(storage_path, dataset, name)
    if StudyStore(study_dir).exists():
        raise StudyError(f"study {study_dir} exists; continue it with `tune.py surface --resume --name {name}` "
                         f"or choose another --name")
    epochs = epochs or trial_epochs or int(base_cfg["epochs"])
    base_cfg = {k: v for k, v in base_cfg.items() if k not in overrides}
    header = [f"alpha x beta surface of study {name}, generated by `bmlr-tune surface`.",
              f"Base configuration: {source}.",
              f"Every cell trains {epochs} epochs with each of the seeds {seeds}; fixed.epochs and fixed.seeds",
              "are the production settings of the exported best cell."]
    grid_space = surface_space(base_cfg, grid, header, source=str(study_dir / SPACE_FILE))
    n_trials = len(grid["alpha"]) * len(grid["beta"]) * len(seeds)
    log(f"surface: base configuration {source}\n  alpha {grid['alpha']}\n  beta {grid['beta']}\n"
        f"  seeds {seeds}, {epochs} epochs per cell: {n_trials} trials")
    settings = StudySettings(dataset=dataset, search_space=str(study_dir / SPACE_FILE), storage=str(storage_path),
                             name=name, samples=n_trials, max_epochs=epochs, grace_period=1, seed=seeds[0],
                             overrides=overrides, kind="surface", grid_seeds=list(seeds),
                             method=overrides.pop("method", None), **settings_kwargs)
    return settings, grid_space


def run_surface(settings: StudySettings, runtime: Runtime = Runtime(), space: SearchSpace | None = None,
                resume: bool = False) -> StudyOutcome:
    """Run the surface `plan_surface` planned (`space` its grid), or with `resume` continue
    the surface `settings` names (:func:`bmlr.tuning.study.run_study`)."""
    return run_study(settings, runtime, resume=resume, space=space)
