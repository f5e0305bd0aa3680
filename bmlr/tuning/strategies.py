"""How a study chooses its trials, as objects composed the way Ray Tune composes a searcher and
a scheduler: each strategy supplies the tuner's searcher, scheduler and parameter space, the
rule that picks the exported trial, and what it writes when the study has finished.

* :class:`Search` - Optuna's TPE with ASHA, Hyperband or no early stopping. Its first trial is
  the untuned configuration (each searched key's ``default``, Ray's ``points_to_evaluate``), so
  a study always measures the defaults it is meant to beat; a search told ``warm_start``
  results first (a staged study's second stage, given the first stage's winner) trains none
  again. Common random numbers in the start-up trials with ``crn``;
* :class:`Grid` - every combination of the search space's choice entries, times the training
  ``seeds``, each trained for all its epochs (a surface must not mix budgets: no early
  stopping); the winner is the best cell's best seed, and a finished grid writes
  ``surface.csv`` and its two images (:mod:`bmlr.tuning.surface`).

A staged search (:mod:`bmlr.tuning.staged`) is two :class:`Search` studies, the second told the
first one's winner; confirmation (:mod:`bmlr.tuning.confirm`) and references
(:mod:`bmlr.tuning.references`) are stages that run after a search.

:func:`strategy_for` reads the strategy from a study's settings (``kind`` and its flags, as
``study.json`` records them), once, when the study is planned.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bmlr.fileio import write_csv
from bmlr.tuning import ray_backend
from bmlr.tuning.rung_check import MIN_TRIALS
from bmlr.tuning.selection import choose_best
from bmlr.tuning.surface import GRID_KEYS, SURFACE_CSV, best_cell_row, cells, describe_grid, draw_grid, format_grid

__all__ = ["Search", "Grid", "Strategy", "strategy_for"]

Row = dict[str, Any]


@dataclass(frozen=True)
class Search:
    """Optuna's TPE with an early-stopping scheduler (``asha``, ``hyperband`` or ``none``)."""

    scheduler: str = "asha"
    crn: bool = False
    warm_start: tuple[dict[str, Any], ...] = ()

    searcher_name = "optuna-tpe"
    role = "study"  # the parent run's tag bmlr.role
    keeps_journal = True  # its Optuna study in the folder's optuna.journal (optuna-dashboard)

    @property
    def early_stopping(self) -> bool:
        return self.scheduler != "none"

    def tuner_args(self, plan) -> dict[str, Any]:
        s = plan.settings
        warm = self._warm(plan)
        first = [self.untuned_point(plan)] if self.untuned_point(plan) else []
        searcher = ray_backend.make_searcher(plan.space.optuna_space(),
                                             ray_backend.make_sampler("tpe", s.seed, crn=self.crn), seed=s.seed,
                                             warm_start=warm, first=first, journal=plan.store.optuna_path,
                                             study_name=plan.study_dir.name)
        scheduler = ray_backend.make_scheduler(self.scheduler, max_t=plan.max_epochs, grace_period=s.grace_period,
                                               reduction_factor=s.reduction_factor, record=plan.store.grace_path)
        return {"searcher": searcher, "scheduler": scheduler, "num_samples": s.samples}

    def _warm(self, plan) -> list[dict[str, Any]]:
        return [w for w in self.warm_start if set(w["params"]) == set(plan.space.params)]

    def untuned_point(self, plan) -> dict[str, Any]:
        """The first trial's values: each searched key's default ({} where the search is
        warm-started: its known result stands in for it)."""
        return {} if self._warm(plan) else plan.space.defaults_point()

    def schedule_text(self, plan) -> str:
        if not self.early_stopping:
            return "every combination trained to the end"
        s = plan.settings
        name = "ASHA" if self.scheduler == "asha" else "Hyperband (ASHA brackets)"
        grace = f"grace {s.grace_period}"
        if s.grace_period == ray_backend.AUTO:  # a resumed study keeps what it measured (bmlr.tuning.calibrated_asha)
            record = plan.store.read_grace() if plan.resumed else None
            grace = (f"grace measured on the first {MIN_TRIALS} trials to finish" if record is None else
                     f"grace {record['grace_period']}, as measured on the first {record['trials']} trials"
                     if record["grace_period"] else
                     f"no early stopping, as measured on the first {record['trials']} trials")
        return f"{name} {grace}, reduction {s.reduction_factor}"

    def choose(self, rows: list[Row]) -> Row | None:
        return choose_best(rows)

    def after(self, plan, outcome, log: Callable[[str], None]) -> list[Path]:
        return []


@dataclass(frozen=True)
class Grid:
    """Every combination of the space's choice entries times ``seeds``, trained to the end."""

    seeds: tuple[int, ...]

    searcher_name = "grid"
    role = "surface"
    keeps_journal = False  # no Optuna study
    scheduler = "fifo"
    early_stopping = False

    def tuner_args(self, plan) -> dict[str, Any]:
        not_grid = [k for k, p in plan.space.params.items() if p.kind != "choice"]
        if not_grid:
            raise ValueError(f"{plan.space.source}: a grid needs choice entries only; {not_grid} are not")
        space = ray_backend.grid_param_space({k: p.choices for k, p in plan.space.params.items()}, self.seeds)
        return {"scheduler": ray_backend.make_scheduler("fifo"), "param_space": space}

    def untuned_point(self, plan) -> dict[str, Any]:
        return {}  # a grid trains its cells, nothing else

    def schedule_text(self, plan) -> str:
        return "every combination trained to the end"

    def choose(self, rows: list[Row]) -> Row | None:
        return best_cell_row(rows)

    def after(self, plan, outcome, log: Callable[[str], None]) -> list[Path]:
        """surface.csv and the two images, logged under ``surface/`` to the parent run."""
        s = plan.settings
        grid = {k: sorted(float(c) for c in plan.space.params[k].choices) for k in GRID_KEYS if k in plan.space.params}
        cell_rows = cells(outcome.rows, grid.get("alpha"), grid.get("beta"))
        csv_path = write_csv(cell_rows, outcome.study_dir / SURFACE_CSV)
        title, subtitle = describe_grid(s.dataset, s.method, plan.max_epochs, list(self.seeds))
        paths = [csv_path] + draw_grid(cell_rows, outcome.study_dir, title, subtitle)
        plan.runs.log_artifacts(paths, "surface")
        log(format_grid(cell_rows))
        log(f"surface: {csv_path}\n  images: {', '.join(str(p) for p in paths[1:])}")
        return paths


Strategy = Search | Grid


def strategy_for(settings) -> Strategy:
    """The strategy a study's settings name (``kind`` "search" or "surface", as recorded)."""
    if settings.kind == "surface":
        return Grid(tuple(settings.grid_seeds or [settings.seed]))
    return Search(settings.scheduler or "asha", crn=settings.crn, warm_start=tuple(settings.warm_start))
