"""Section 3: the alpha x beta surface (the paper's Figure 5): a surface study's grid (its
figures and a table of every cell), else the study's own scattered trials binned. The numbers
are :mod:`bmlr.tuning.surface`'s, the drawing :mod:`bmlr.tuning.report.surface_figures`."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from bmlr.tuning.report.page import Page
from bmlr.tuning.report.study_view import Context
from bmlr.tuning.surface import IMAGES, SURFACE_CSV, SurfaceError, fmt_value, matrix, read_csv, surface_from_study

__all__ = ["add_surface"]


def _copy_into(path: Path, out_dir: Path) -> Path:
    target = out_dir / path.name
    if path.resolve() != target.resolve():
        shutil.copyfile(path, target)
    return target


def _grid(page: Page, ctx: Context) -> None:
    """A surface study: its figures copied into the report and its cells as a table."""
    folder = ctx.study.dir
    for name in IMAGES:
        if (folder / name).is_file():
            page.img(_copy_into(folder / name, ctx.out), name)
    alphas, betas, values, _ = matrix(read_csv(folder / SURFACE_CSV))
    page.table(["\u03b1 \\ \u03b2"] + [fmt_value(b) for b in betas],
               [[fmt_value(a)] + [f"{values[i, j]:.1f}" if np.isfinite(values[i, j]) else "-"
                                  for j in range(len(betas))] for i, a in enumerate(alphas)])
    page.p(f"Validation accuracy (%) of every cell (mean over its seeds; `{SURFACE_CSV}` has the "
           f"spread and the trial ids). Read it as the paper does: along \u03b2 accuracy should rise then fall; "
           f"across \u03b1 (the layers) it should change less.")


def _scattered(page: Page, ctx: Context) -> None:
    """Any other study: its trials binned over the search ranges (or why that is not drawn)."""
    try:
        paths = surface_from_study(ctx.study.dir, out_dir=ctx.out, log=ctx.log, mlflow=False)
    except SurfaceError as err:
        page.p(f"Not drawn: {err}.")
        return
    for p in paths[1:]:
        page.img(p, p.name)
    page.p("The study's own trials, binned by \u03b1 (log scale) and \u03b2 over the search ranges: a cell is "
           "the best trial in its bin (its other hyperparameters differ from its neighbours'); the dots "
           "are every trial. `tune.py surface` trains a proper grid with everything else fixed.")


def add_surface(page: Page, ctx: Context) -> None:
    page.h(2, "\u03b1 \u00d7 \u03b2 surface (the paper's Figure 5)")
    if (ctx.study.dir / SURFACE_CSV).is_file():
        _grid(page, ctx)
    else:
        _scattered(page, ctx)
