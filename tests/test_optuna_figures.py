"""Optuna's own views of a study (bmlr.tuning.report.optuna_study, optuna_figures): the parent
MLflow run of a finished study holds them and each opens as an image; the study Optuna draws
them from is rebuilt from the trials with the search space's distributions; a figure that
cannot be drawn is skipped with its reason; the binned surface labels its best trial by that
trial's own values."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from bmlr.tuning import surface
from bmlr.tuning.report import figure
from bmlr.tuning.report.optuna_figures import FIGURE, FIGURES, OPTUNA_DIR, StudyInputs, draw
from bmlr.tuning.report.optuna_study import optuna_study
from bmlr.tuning.search_space import load_search_space
from bmlr.tuning.selection import SCORE

ALL = {f"{f.name}.png" for f in FIGURES}


def _open_png(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()  # a whole, readable PNG
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _check_plotly(path) -> None:
    """An interactive figure as mlflow.log_figure writes one: a plotly page, plotly.js from its CDN."""
    text = open(path).read()
    assert "Plotly.newPlot" in text and "cdn.plot.ly" in text and len(text) < 500_000, path


@pytest.mark.slow
def test_parent_run_holds_optunas_figures_and_each_opens(finished_study, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=finished_study["uri"])
    logged = {a.path for a in client.list_artifacts(finished_study["parent_run_id"], OPTUNA_DIR)}
    names = {p.split("/", 1)[1] for p in logged}
    md = (finished_study["dir"] / "report" / "report.md").read_text()
    # 6 trials of alpha, beta, lr and fusion: every view can be drawn (importances: scores that differ)
    expected = ALL if "Not computed" not in md else ALL - {"param_importances.png"}
    interactive = {name.replace(".png", ".html") for name in expected}  # each PNG has its plotly twin
    assert names == expected | interactive
    assert {p.name for p in (finished_study["dir"] / OPTUNA_DIR).glob("*.*")} == names  # same as on disk
    for path in sorted(logged):
        local = client.download_artifacts(finished_study["parent_run_id"], path, str(tmp_path))
        if path.endswith(".html"):
            _check_plotly(local)
            assert f"Interactive: `{path}`" in md
            continue
        width, height = _open_png(local)
        assert width > 300 and height > 200, (path, width, height)
        assert f"](../{path})" in md  # the report page shows it too
    assert "## Optuna's views of the study" in md


def _space(tmp_path, search: dict):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"search": search, "fixed": {"epochs": 2}}))
    return load_search_space(path)


def _row(tid, acc, status="completed", **params):
    return {"trial_id": tid, "status": status, SCORE: acc, "best_epoch": 1, "run_id": f"run-{tid}",
            **{f"param.{k}": v for k, v in params.items()}}


def test_rebuilt_study_has_the_spaces_distributions_and_the_trials_scores(tmp_path):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = _space(tmp_path, {"alpha": {"loguniform": [0.5, 2.0]}, "beta": {"uniform": [0.1, 0.9]},
                              "model_depth": {"int": [1, 3]}, "fusion": {"choice": ["concat", "sum"]},
                              "lr": {"loguniform": [1.0e-3, 1.0e-2]}})
    rows = [_row("c", 0.6, alpha=1.5, beta=0.2, model_depth=3, fusion="sum", lr=0.002),
            _row("a", 0.4, alpha=0.7, beta=0.8, model_depth=1, fusion="concat", lr=0.002),
            _row("f", None, "failed", alpha=1.9, beta=0.5, model_depth=2, fusion="sum", lr=0.002),
            _row("b", 0.5, alpha=1.0, beta=0.5, model_depth=2, fusion="concat", lr=0.002)]
    study = optuna_study(rows, space)
    assert [t.user_attrs["trial_id"] for t in study.trials] == ["c", "a", "b"]  # the order given; failed left out
    assert [t.value for t in study.trials] == [0.6, 0.4, 0.5]
    assert study.trials[0].params == {"alpha": 1.5, "beta": 0.2, "model_depth": 3, "fusion": "sum"}
    dists = study.trials[0].distributions
    assert dists["alpha"] == FloatDistribution(0.5, 2.0, log=True)  # the space's range and its log scale
    assert dists["beta"] == FloatDistribution(0.1, 0.9, log=False)
    assert dists["model_depth"] == IntDistribution(1, 3)
    assert dists["fusion"] == CategoricalDistribution(["concat", "sum"])
    assert "lr" not in dists  # the same value in every trial: nothing for Optuna to show
    assert study.best_trial.user_attrs == {"trial_id": "c", "run_id": "run-c"}


def test_trials_are_numbered_in_the_order_they_started(tmp_path):
    """trials.csv is ranked by score; Optuna's history needs the order the trials ran in (from
    each trial's first report to Ray, less the time it had trained by then)."""
    import json

    from bmlr.tuning.report.study_view import StudyView
    from bmlr.tuning.store import StudyStore

    store = StudyStore(tmp_path / "study")
    store.create({"settings": {"name": "s"}})
    rows = [_row("late", 0.9, alpha=1.0), _row("first", 0.5, alpha=2.0), _row("gone", 0.4, alpha=0.5),
            _row("second", 0.3, alpha=0.7)]
    store.write_rows(rows)
    for tid, timestamp, trained in (("late", 1000, 1.0), ("first", 990, 5.5), ("second", 1000, 4.0)):
        folder = store.ray_dir / f"trial_{tid}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({"timestamp": timestamp, "time_total_s": trained}) + "\n")
    view = StudyView(store.dir)
    assert view.started("first") == 984.5 and view.started("gone") is None
    ordered = view.in_start_order(view.rows)  # "gone" has no Ray record: last
    assert [r["trial_id"] for r in ordered] == ["first", "second", "late", "gone"]
    study = optuna_study(ordered, None)
    assert [(t.number, t.user_attrs["trial_id"]) for t in study.trials] == [
        (0, "first"), (1, "second"), (2, "late"), (3, "gone")]


def test_a_view_that_cannot_be_drawn_is_skipped_with_its_reason(tmp_path):
    space = _space(tmp_path, {"alpha": {"loguniform": [0.5, 2.0]}, "lr": {"loguniform": [1.0e-3, 1.0e-2]}})
    rows = [_row("a", 0.4, alpha=0.7, lr=0.002), _row("b", 0.6, alpha=1.5, lr=0.005),
            _row("c", 0.5, alpha=1.0, lr=0.003)]
    inputs = StudyInputs.build(rows, space)
    out = tmp_path / "optuna"
    reason = draw(FIGURE["contour_alpha_beta"], inputs, out)
    assert reason == "beta was not searched (or did not vary); searched: alpha, lr"
    assert not (out / "contour_alpha_beta.png").exists()
    drawn = draw(FIGURE["slice"], inputs, out)  # the other views of the same study are drawn
    assert drawn == out / "slice.png" and _open_png(drawn)[0] > 300
    _check_plotly(out / "slice.html")
    assert not (out / "contour_alpha_beta.html").exists()
    one = StudyInputs.build(rows[:1], space)
    assert draw(FIGURE["optimization_history"], one, out) == "it needs at least 2 finished trials (1 finished)"
    assert "at least 3 finished trials" in draw(FIGURE["param_importances"], StudyInputs.build(rows[:2], space), out)


def test_binned_surface_labels_the_best_trial_by_its_own_values(tmp_path, monkeypatch):
    figures = []
    save = figure.save
    monkeypatch.setattr(figure, "save", lambda fig, path: figures.append(fig) or save(fig, path))
    rows = [_row("t1", 0.72, alpha=1.36, beta=0.61), _row("t2", 0.5, alpha=0.6, beta=0.2),
            _row("t3", 0.6, alpha=1.9, beta=0.85), _row("t4", 0.55, alpha=0.8, beta=0.7)]
    bins, points = surface.binned(rows, None, n_alpha=2, n_beta=2)
    best = max((b for b in bins if b["val_acc_max"] is not None), key=lambda b: b["val_acc_max"])
    # its bin's centre (alpha ~ sqrt(1.068 * 1.9) = 1.42, beta = (0.525 + 0.85) / 2 = 0.688) is no trial's
    assert (best["alpha"], best["beta"]) == (1.42, 0.688)
    assert (best["best_trial_id"], best["best_alpha"], best["best_beta"]) == ("t1", 1.36, 0.61)
    label = "best trial t1: 72.0% at \u03b1=1.36, \u03b2=0.61"
    assert surface.best_trial_label(best) == label
    surface.draw_binned(bins, points, tmp_path, "t", "s")
    legends = [[t.get_text() for t in fig.axes[0].get_legend().get_texts()] for fig in figures]
    assert all(label in texts for texts in legends) and len(legends) == 2  # the 3-D figure and the heat map
    marker = next(c for c in figures[0].axes[0].collections if c.get_label() == label)
    xs, ys, zs = marker._offsets3d  # marked where the trial is, not at the bin's centre
    assert (float(xs[0]), float(ys[0]), float(zs[0])) == pytest.approx((0.61, np.log2(1.36), 72.0))
