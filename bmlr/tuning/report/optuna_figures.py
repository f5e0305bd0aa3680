"""Optuna's own figures of a finished study, drawn by `optuna.visualization.matplotlib` from the
study rebuilt by :func:`bmlr.tuning.report.optuna_study.optuna_study` (the same trials and
search space as the importances), written as PNGs into `<study>/optuna/` and logged to the
study's MLflow parent run under `optuna/` (by `build.log_to_mlflow`), so that opening the
parent run in the MLflow UI shows them. Beside each PNG, the interactive version: Optuna's
plotly figure (`optuna.visualization`) as `<name>.html`, written as ``mlflow.log_figure``
writes a plotly figure (plotly.js from its CDN), which the MLflow UI shows in the run's
artifacts with hover, zoom and trial numbers.

    optimization_history.png  each trial's score in start order, and the best so far
    parallel_coordinate.png   every trial as a line across the searched keys (log axes for
                              log-sampled keys: Optuna reads log=True off the distribution)
    slice.png                 the score against each searched key
    contour_alpha_beta.png    the score over alpha x beta (where both were searched)
    param_importances.png     fANOVA importances (seed 0), beside the report's table

A figure that cannot be drawn (too few trials, a key that did not vary) is skipped with its
reason on the page; the report never fails for one. The figures Optuna lacks (the paper's
surfaces, reshaped counts, learning curves...) are drawn by the report's sections themselves.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bmlr.tuning.report.figure import pyplot, save
from bmlr.tuning.report.optuna_study import distributions, optuna_study
from bmlr.tuning.report.page import Page
from bmlr.tuning.report.scoring import score_label, target_name
from bmlr.tuning.report.study_view import Context
from bmlr.tuning.search_space import SearchSpace
from bmlr.tuning.selection import is_candidate

if TYPE_CHECKING:
    import optuna

__all__ = ["OPTUNA_DIR", "FIGURES", "FIGURE", "Figure", "StudyInputs", "study_inputs", "figure_paths", "draw",
           "show", "add_optuna_views"]

OPTUNA_DIR = "optuna"  # inside the study folder, and the artifact folder of the study's MLflow parent run
MIN_TRIALS = 2  # a figure of one trial shows nothing
MIN_IMPORTANCE_TRIALS = 3  # fANOVA on fewer is noise
FIGSIZE = (9.0, 5.0)  # inches; Optuna's figures take matplotlib's default size

Row = dict[str, Any]


def _needs_trials(study: "optuna.Study", dists: dict[str, Any]) -> str | None:
    n = len(study.trials)
    if n < MIN_TRIALS:
        return f"it needs at least {MIN_TRIALS} finished trials ({n} finished)"
    if not dists:
        return "no hyperparameter varied across the finished trials"
    return None


def _needs_alpha_beta(study: "optuna.Study", dists: dict[str, Any]) -> str | None:
    missing = [k for k in ("alpha", "beta") if k not in dists]
    if missing:
        return (f"{' and '.join(missing)} {'was' if len(missing) == 1 else 'were'} not searched (or did not "
                f"vary); searched: {', '.join(dists) or 'nothing'}")
    return _needs_trials(study, dists)


def _needs_spread(study: "optuna.Study", dists: dict[str, Any]) -> str | None:
    n = len(study.trials)
    if n < MIN_IMPORTANCE_TRIALS or len({t.value for t in study.trials}) < 2:
        return (f"it needs at least {MIN_IMPORTANCE_TRIALS} finished trials whose scores differ "
                f"({n} finished)")
    return _needs_trials(study, dists)


def _optuna(name: str, interactive: bool = False) -> Callable:
    """`optuna.visualization.matplotlib.<name>` (``interactive``: the plotly one of
    `optuna.visualization`), imported when drawn (Optuna loads slowly); the importances with
    fANOVA, seed 0."""
    def call(study: "optuna.Study", **kwargs):
        import optuna.visualization as plotly_vis
        import optuna.visualization.matplotlib as matplotlib_vis
        from optuna.importance import FanovaImportanceEvaluator

        if name == "plot_param_importances":
            kwargs["evaluator"] = FanovaImportanceEvaluator(seed=0)
        return getattr(plotly_vis if interactive else matplotlib_vis, name)(study, **kwargs)
    return call


@dataclass(frozen=True)
class Figure:
    """One Optuna figure: its files, its title, Optuna's function (``function``: its name in
    `optuna.visualization` and `.matplotlib`) and that function's arguments, what it needs of
    the study (None: drawable, else the reason not) and a caption for the page."""

    name: str
    title: str
    function: str
    kwargs: dict = field(default_factory=dict)
    needs: Callable[["optuna.Study", dict], str | None] = _needs_trials
    caption: str = ""

    def draw(self, study: "optuna.Study", **kwargs):
        return _optuna(self.function)(study, **self.kwargs, **kwargs)

    def interactive(self, study: "optuna.Study", **kwargs):
        return _optuna(self.function, interactive=True)(study, **self.kwargs, **kwargs)


FIGURES = (
    Figure("optimization_history", "Optimization history", "plot_optimization_history", caption=(
        "each trial's score in the order the trials started, and the best so far.")),
    Figure("parallel_coordinate", "Parallel coordinates", "plot_parallel_coordinate", caption=(
        "one line per trial across the searched hyperparameters, coloured by its score (log axes where "
        "the space samples on a log scale).")),
    Figure("slice", "Slice", "plot_slice", caption=(
        "the score against each searched hyperparameter (colour: the trial's number).")),
    Figure("contour_alpha_beta", "Contour of \u03b1 \u00d7 \u03b2", "plot_contour",
           {"params": ["alpha", "beta"]}, _needs_alpha_beta, (
               "the score interpolated between the trials (dots); the other hyperparameters vary "
               "between them.")),
    Figure("param_importances", "Hyperparameter importances", "plot_param_importances", needs=_needs_spread,
           caption="Optuna's own figure of the importances in the table below (fANOVA, seed 0)."),
)
FIGURE = {f.name: f for f in FIGURES}


@dataclass
class StudyInputs:
    """The trials and space Optuna's views explain, the rebuilt study (None where it could not
    be built: `failed` says why), its distributions, a note for titles and the name of a
    trial's value on Optuna's axes (the score and its rule)."""

    rows: list[Row]
    space: SearchSpace | None
    note: str
    study: "optuna.Study | None"
    dists: dict[str, Any]
    failed: str = ""
    target: str = "score"

    @classmethod
    def build(cls, rows: list[Row], space: SearchSpace | None, note: str = "") -> "StudyInputs":
        """`rows` (in the order Optuna is to number them) rebuilt as an Optuna study."""
        from optuna.exceptions import OptunaError

        target = target_name(rows)
        try:
            return cls(rows, space, note, optuna_study(rows, space),
                       distributions([r for r in rows if is_candidate(r)], space), target=target)
        except (OptunaError, ValueError) as err:  # the Optuna views are missing; the page says why
            return cls(rows, space, note, None, {},
                       f"the trials could not be rebuilt as an Optuna study ({type(err).__name__}: {err})", target)


def study_inputs(ctx: Context) -> StudyInputs:
    """The study's finished trials in start order as an Optuna study; a staged study's stage 1
    (stage 2 varies alpha alone)."""
    view = ctx.study
    if view.kind == "staged" and view.stage_dirs:
        rows = [r for r in view.rows if str(r.get("stage")) == "1"]
        space, note = view.search_space(ctx.log, view.stage_dirs[0]), " (stage 1; stage 2 varied \u03b1 only)"
    else:
        rows, space, note = view.rows, view.search_space(ctx.log), ""
    inputs = StudyInputs.build(view.in_start_order(rows), space, note)
    if inputs.failed:
        ctx.log(f"report: {inputs.failed}")
    return inputs


def figure_paths(out_dir: Path) -> list[Path]:
    """The Optuna figures in `out_dir` (each PNG, then its interactive HTML), in FIGURES order."""
    return [out_dir / f"{f.name}{kind}" for f in FIGURES for kind in (".png", ".html")
            if (out_dir / f"{f.name}{kind}").is_file()]


def write_interactive(figure: Figure, inputs: StudyInputs, out_dir: Path) -> Path | None:
    """Optuna's plotly figure as `out_dir/<name>.html`, plotly.js from its CDN as
    ``mlflow.log_figure`` writes it; None where plotly cannot draw it (the PNG stands alone)."""
    from optuna.exceptions import ExperimentalWarning, OptunaError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            fig = figure.interactive(inputs.study, target_name=inputs.target)
        path = out_dir / f"{figure.name}.html"
        fig.write_html(path, include_plotlyjs="cdn")
        return path
    except (ImportError, OptunaError, ValueError, RuntimeError):  # no plotly, or a figure it cannot draw
        return None


def draw(figure: Figure, inputs: StudyInputs, out_dir: Path) -> Path | str:
    """Draw one figure to `out_dir/<name>.png`; returns its path, or the reason it was not drawn."""
    from optuna.exceptions import ExperimentalWarning, OptunaError

    if inputs.study is None:
        return inputs.failed
    reason = figure.needs(inputs.study, inputs.dists)
    if reason:
        return reason
    plt = pyplot()
    try:
        # Optuna sets the ggplot style globally: the context undoes it on exit
        with warnings.catch_warnings(), plt.style.context("default"), plt.rc_context({"figure.figsize": FIGSIZE}):
            warnings.simplefilter("ignore", ExperimentalWarning)
            axes = figure.draw(inputs.study, target_name=inputs.target)
            first = axes.flat[0] if hasattr(axes, "flat") else axes
            out_dir.mkdir(parents=True, exist_ok=True)
            path = save(first.figure, out_dir / f"{figure.name}.png")
        write_interactive(figure, inputs, out_dir)
        return path
    except (OptunaError, ValueError, RuntimeError) as err:  # a figure missing; the page says why
        plt.close("all")
        return f"Optuna could not draw it ({type(err).__name__}: {err})"


def show(page: Page, ctx: Context, figure: Figure, inputs: StudyInputs) -> Path | None:
    """Draw `figure` into `<study>/optuna/` and put it on the page with its caption, or the
    reason it is missing; returns its path (None where not drawn)."""
    drawn = draw(figure, inputs, ctx.study.dir / OPTUNA_DIR)
    if isinstance(drawn, Path):
        page.img(drawn, f"Optuna: {figure.title}")
        interactive = drawn.with_suffix(".html")
        more = f" Interactive: `{OPTUNA_DIR}/{interactive.name}`." if interactive.is_file() else ""
        page.p(f"**{figure.title}**{inputs.note}: {figure.caption}{more}")
        return drawn
    page.p(f"**{figure.title}**: not drawn: {drawn}.")
    ctx.log(f"report: Optuna's {figure.name} not drawn: {drawn}")
    return None


def add_optuna_views(page: Page, ctx: Context, inputs: StudyInputs) -> None:
    """The section: every figure of FIGURES but the importances (their section shows them)."""
    n = len(inputs.study.trials) if inputs.study is not None else 0
    page.h(2, "Optuna's views of the study")
    page.p(f"Drawn by Optuna (`optuna.visualization.matplotlib`) from the study's {n} finished trials"
           f"{inputs.note} rebuilt as an Optuna study (a trial's value: its {score_label(inputs.rows)}, the "
           f"number the study ranks it by; the distributions: the search space's). The study's MLflow parent run "
           f"holds them under `{OPTUNA_DIR}/`.")
    for figure in FIGURES:
        if figure.name != "param_importances":
            show(page, ctx, figure, inputs)
