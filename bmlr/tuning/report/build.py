"""The report, section by section: `write_report` reads the study once and hands every
section (one module each) the same context; `write_report_safely` is the end-of-study call
that reports a failure instead of raising it (the study itself succeeded). The report reads the
study folder and trains nothing."""
from __future__ import annotations

import functools
import time
import traceback
from pathlib import Path
from typing import Callable

from bmlr.tuning import tracking
from bmlr.tuning.report.best_model import Unavailable, ValidationSample, best_model_sample
from bmlr.tuning.report.best_trials import add_best_trials
from bmlr.tuning.report.confirmation import add_confirmation
from bmlr.tuning.report.curves import add_learning_curves
from bmlr.tuning.report.importances import add_importances
from bmlr.tuning.report.optuna_figures import OPTUNA_DIR, add_optuna_views, figure_paths, study_inputs
from bmlr.tuning.report.page import Page
from bmlr.tuning.report.reshaped import add_reshaped
from bmlr.tuning.report.study_view import REPORT_DIR, Context, Log
from bmlr.tuning.report.summary import add_summary
from bmlr.tuning.report.surface import add_surface
from bmlr.tuning.report.top3 import add_top3
from bmlr.tuning.report.tsne_features import add_tsne_features
from bmlr.tuning.report.tsne_labels import add_tsne_labels

__all__ = ["write_report", "write_report_safely", "log_to_mlflow"]

PAGE_FILES = (".md", ".html", ".png")  # what the study's MLflow run gets under report/


def _clear(ctx: Context) -> None:
    """The report folder, without the figures of an earlier report (a figure may not recur);
    the same for Optuna's figures beside it."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    for old in [*ctx.out.glob("*.png"), *figure_paths(ctx.study.dir / OPTUNA_DIR)]:
        old.unlink()


def write_report(study_dir: str | Path, baseline_study: str | Path | None = None, log: Log = print,
                 mlflow: bool = True, top: int = 10) -> Path:
    """Write `<study>/report/report.md` and `report.html` (and their PNGs); returns the .md path.
    `baseline_study`: a study whose best trial is the learning curves' left panel (else the
    study's baseline reference, where it has one). The report trains nothing. Raises
    ReportError where the folder is not a finished study or no trial finished."""
    ctx = Context.open(study_dir, log)
    _clear(ctx)
    page = Page()
    sections = _sections(page, ctx, top, baseline_study)
    start = time.monotonic()
    log(f"report: writing {ctx.out} ({len(sections)} sections, from the study folder)")
    for i, (name, add) in enumerate(sections, 1):
        began = time.monotonic()
        add()
        log(f"report: {i}/{len(sections)} {name} ({time.monotonic() - began:.1f} s)")
    md_path = page.write(ctx.out, f"Study report: {ctx.study.name}")
    log(f"report: {md_path} (and report.html, {len(page.images())} figures, {time.monotonic() - start:.0f} s)")
    if mlflow:
        log_to_mlflow(ctx)
    return md_path


def _sections(page: Page, ctx: Context, top: int, baseline_study: str | Path | None) -> list[tuple[str, Callable]]:
    """The report's sections in page order, each a name and what adds it to ``page``."""
    inputs = functools.cache(lambda: study_inputs(ctx))  # the trials as Optuna reads them, once
    sample = functools.cache(lambda: _best_model_sample(ctx))  # the t-SNE sections' input, once
    return [("summary", lambda: add_summary(page, ctx)),
            ("best trials", lambda: add_best_trials(page, ctx, top)),
            ("confirmation", lambda: add_confirmation(page, ctx)),
            ("importances", lambda: add_importances(page, ctx, inputs())),
            ("Optuna's figures", lambda: add_optuna_views(page, ctx, inputs())),
            ("surface", lambda: add_surface(page, ctx)),
            ("learning curves", lambda: add_learning_curves(page, ctx, baseline_study)),
            ("reshaped samples", lambda: add_reshaped(page, ctx)),
            ("t-SNE of the fused features", lambda: add_tsne_features(page, ctx, sample())),
            ("t-SNE of the reshaped labels", lambda: add_tsne_labels(page, ctx, sample())),
            ("top-3 classes", lambda: add_top3(page, ctx))]


def _best_model_sample(ctx: Context) -> ValidationSample | Unavailable:
    """The t-SNE sections' input: the validation sample the best trial saved, else the reason
    it is not there."""
    try:
        return best_model_sample(ctx)
    except Unavailable as reason:
        return reason


def log_to_mlflow(ctx: Context) -> None:
    """Copy the page and its figures to the study's MLflow parent run under `report/`, and
    Optuna's figures under `optuna/` (where the MLflow UI shows them on the parent run); a
    failure is said in the log (the files are on disk; MLflow holds a copy)."""
    uri, run_id = ctx.study.info.get("tracking_uri"), ctx.study.info.get("parent_run_id")
    if uri and run_id:
        files = [p for p in sorted(ctx.out.iterdir()) if p.suffix in PAGE_FILES]
        tracking.log_artifacts_safely(uri, run_id, files, REPORT_DIR, ctx.log)
        optuna_files = figure_paths(ctx.study.dir / OPTUNA_DIR)
        if optuna_files:
            tracking.log_artifacts_safely(uri, run_id, optuna_files, OPTUNA_DIR, ctx.log)


def write_report_safely(study_dir: str | Path, log: Log = print, **kwargs) -> Path | None:
    """The end-of-study report: a failure is reported with its reason and traceback, never
    raised (the study itself succeeded; `tune.py report` retries)."""
    try:
        return write_report(study_dir, log=log, **kwargs)
    except Exception as err:  # any failure: the study's results stand; the log says why and how to retry
        log(f"warning: the study report could not be written ({type(err).__name__}: {err}); retry with "
            f"`tune.py report --study {study_dir}`\n" + "".join(traceback.format_exc(limit=3)))
        return None
