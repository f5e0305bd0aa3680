"""alpha x beta surfaces, the staged strategy and the study report (bmlr.tuning.surface,
staged, report and its figures) on a tiny generated synthetic data set with a tiny model.

One Ray instance serves the whole module (a study that finds Ray running leaves it running);
the end-to-end studies train 1 epoch per trial. The rest needs no Ray.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from bmlr.config import load_config
from bmlr.tuning import cli, surface
from bmlr.tuning.report import surface_figures
from bmlr.tuning.report.figure import save as save_figure

os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
TINY = {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2, "batch_size": 16, "val_fraction": 0.3,
        "epochs": 2, "seeds": [0, 1], "threads": 1}
SPACE = {"search": {"beta": {"uniform": [0.1, 0.9]}, "alpha": {"loguniform": [0.5, 2.0], "default": 1.0},
                    "lr": {"loguniform": [1.0e-3, 1.0e-2]}, "fusion": {"choice": ["concat", "sum"]}},
         "fixed": TINY}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("surface")
    data = generate(base / "data", seed=0, n_train_per_class=10,
        n_test_per_class=2, n_val_per_class=2, image_size=32, n_frames=2)
    space = base / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return {"base": base, "data": data, "cache": base / "cache", "space": space, "storage": base / "runs"}


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield
    ray.shutdown()


def _common(tiny) -> list[str]:
    return ["--data-root", str(tiny["data"]), "--storage", str(tiny["storage"]), "--search-space", str(tiny["space"]),
            "--set", f"cache_dir={tiny['cache']}", "-v", "0"]


def _csv(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return list(csv.DictReader(f))


def _uri(tiny) -> str:
    return f"sqlite:///{tiny['storage'].resolve()}/mlflow.db"


def _assert_png(path: Path) -> None:
    """A real PNG with content: the signature, a sensible size, more than one colour."""
    import matplotlib.image as mpimg

    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = mpimg.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 300, (path, image.shape)
    assert float(image[..., :3].std()) > 0.05, f"{path} is (nearly) one colour"
    assert path.stat().st_size > 10_000, path


# ---------------------------------------------------------------------------------------------
# end to end: a surface study, a staged study, their reports
@pytest.fixture(scope="module")
def surface_study(tiny, ray_session):
    rc = cli.main(["surface", *_common(tiny), "--alphas", "0.5", "2", "--betas", "0.3", "0.7", "--epochs", "1",
                   "--seeds", "0", "--name", "surf", "--report", "fast", "--set", "lr=0.005"])
    return {"rc": rc, "dir": tiny["storage"] / "synthetic" / "surf"}


@pytest.fixture(scope="module")
def staged_study(tiny, ray_session):
    rc = cli.main([*_common(tiny), "--strategy", "staged", "--samples", "3", "--stage2-samples", "1",
                   "--max-epochs", "1", "--name", "staged", "--seed", "1", "--report", "full"])
    return {"rc": rc, "dir": tiny["storage"] / "synthetic" / "staged"}


def test_surface_csv_holds_the_trials_values_and_the_images_exist(surface_study, tiny):
    from mlflow import MlflowClient

    assert surface_study["rc"] == 0
    folder = surface_study["dir"]
    cells = _csv(folder / "surface.csv")
    trials = _csv(folder / "trials.csv")
    assert len(cells) == 4 and len(trials) == 4
    assert {(float(c["alpha"]), float(c["beta"])) for c in cells} == {(0.5, 0.3), (0.5, 0.7), (2.0, 0.3), (2.0, 0.7)}
    client = MlflowClient(tracking_uri=_uri(tiny))
    for c in cells:
        (trial,) = [t for t in trials if float(t["param.alpha"]) == float(c["alpha"])
                    and float(t["param.beta"]) == float(c["beta"])]
        assert c["trial_ids"] == trial["trial_id"] and int(c["seeds"]) == 1
        assert float(c["val_acc_mean"]) == float(trial["best_val_acc"])  # the very value, not rounded
        history = client.get_metric_history(trial["run_id"], "val_acc")  # and what MLflow logged
        assert float(c["val_acc_mean"]) == pytest.approx(max(m.value for m in history), abs=1e-12)
        assert trial["status"] == "completed" and int(trial["epochs"]) == 1  # a surface never stops early
    for name in surface.IMAGES:
        _assert_png(folder / name)
    # the best cell is exported, with the production epochs and seeds of the base
    best = max(cells, key=lambda c: (float(c["val_acc_mean"]), -float(c["beta"]), -float(c["alpha"])))
    cfg = load_config(folder / "best.yaml")
    assert (cfg.alpha, cfg.beta) == (float(best["alpha"]), float(best["beta"]))
    assert cfg.epochs == TINY["epochs"] and cfg.seeds == TINY["seeds"]
    info = json.loads((folder / "study.json").read_text())
    parent = client.get_run(info["parent_run_id"])
    assert parent.data.tags["bmlr.role"] == "surface"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "surface")}
    assert artifacts == {"surface/surface.csv", "surface/surface_3d.png", "surface/surface_heatmap.png"}


def test_staged_export_is_the_stage2_winner(staged_study, tiny):
    from mlflow import MlflowClient

    assert staged_study["rc"] == 0
    folder = staged_study["dir"]
    rows = _csv(folder / "trials.csv")
    stage1 = [r for r in rows if r["stage"] == "1"]
    stage2 = [r for r in rows if r["stage"] == "2"]
    assert len(stage1) == 2 and len(stage2) == 1
    assert all(float(r["param.alpha"]) == 1.0 for r in stage1)  # stage 1 at the space's alpha default
    incumbent = [r for r in stage1 if r["stage2_candidate"] == "True"]
    assert len(incumbent) == 1
    assert float(incumbent[0]["best_val_acc"]) == max(float(r["best_val_acc"]) for r in stage1)
    for key in ("beta", "lr", "fusion"):  # stage 2 kept stage 1's winner fixed
        assert all(r[f"param.{key}"] == incumbent[0][f"param.{key}"] for r in stage2)
    candidates = incumbent + stage2
    top = max(float(r["best_val_acc"]) for r in candidates)
    winner = incumbent[0] if float(incumbent[0]["best_val_acc"]) == top else \
        next(r for r in stage2 if float(r["best_val_acc"]) == top)
    cfg = load_config(folder / "best.yaml")
    assert cfg.alpha == pytest.approx(float(winner["param.alpha"]))
    assert cfg.beta == pytest.approx(float(winner["param.beta"]))
    assert cfg.lr == pytest.approx(float(winner["param.lr"])) and cfg.fusion == winner["param.fusion"]
    assert cfg.epochs == TINY["epochs"] and cfg.seeds == TINY["seeds"]
    info = json.loads((folder / "study.json").read_text())
    assert info["best_trial_id"] == winner["trial_id"]
    # MLflow: the staged run holds both stages' parent runs; exporting it gives best.yaml
    client = MlflowClient(tracking_uri=_uri(tiny))
    for stage in ("stage1", "stage2"):
        stage_info = json.loads((folder / stage / "study.json").read_text())
        run = client.get_run(stage_info["parent_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == info["parent_run_id"]
        assert run.data.tags["bmlr.role"] == stage
    # one winner marked among both stages' trial runs; the staged run's score is a tag, not a metric
    trial_runs = [client.get_run(r["run_id"]) for r in rows]
    assert [r.info.run_id for r in trial_runs if r.info.run_name.startswith("★ ")] == [winner["run_id"]]
    staged_run = client.get_run(info["parent_run_id"])
    assert "best_val_acc" not in staged_run.data.metrics and float(staged_run.data.tags["best_score"]) > 0
    out = tiny["base"] / "exported.yaml"
    assert cli.main(["export", "--run-id", info["parent_run_id"], "-o", str(out), "--tracking-uri", _uri(tiny)]) == 0
    assert load_config(out) == cfg


def _image_refs(md: str) -> list[str]:
    import re

    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


@pytest.mark.parametrize("which", ["staged_study", "surface_study"])
def test_report_renders_and_references_every_figure(which, request, tiny):
    from mlflow import MlflowClient

    study = request.getfixturevalue(which)
    assert study["rc"] == 0
    report = study["dir"] / "report"
    md = (report / "report.md").read_text()
    refs = _image_refs(md)
    optuna_dir = study["dir"] / "optuna"  # Optuna's views, beside the report (the parent run's optuna/)
    own = sorted(p.name for p in report.glob("*.png"))
    pngs = own + sorted(f"../optuna/{p.name}" for p in optuna_dir.glob("*.png"))
    assert sorted(refs) == sorted(pngs)  # every figure referenced, every reference a file
    expected = {"learning_curves.png", "reshaped_counts.png", "top3_per_class.png", "../optuna/param_importances.png",
                "../optuna/optimization_history.png", "../optuna/parallel_coordinate.png", "../optuna/slice.png",
                "../optuna/contour_alpha_beta.png"}
    expected |= ({"surface_3d.png", "surface_heatmap.png"} if which == "surface_study" else
                 {"surface_from_trials_3d.png", "surface_from_trials_heatmap.png"})
    # the t-SNE figures: each winner trained all its epochs (a grid: no early stopping; the staged
    # study's 1-epoch trials), so the report reads the sample it saved (a staged one: in its stage's folder)
    expected |= {"tsne_features.png", "tsne_labels.png"}
    assert md.count("(the trial's own model) at its best validation epoch") == 1
    if "../optuna/param_importances.png" not in pngs:  # e.g. two stage-1 trials: too few; the page says so instead
        expected.discard("../optuna/param_importances.png")
        assert "Not computed: it needs at least 3 finished trials" in md
    if which == "staged_study":  # stage 1 holds alpha at its default: no alpha x beta contour, and the page says why
        expected.discard("../optuna/contour_alpha_beta.png")
        assert "not drawn: alpha was not searched" in md
    assert set(pngs) == expected
    for name in pngs:
        _assert_png(report / name)
    for section in ("Best trials", "Hyperparameter importances", "Optuna's views of the study", "surface", "Learning curves",
                    "Reshaped training samples", "Top-3 predicted classes"):
        assert section in md
    html = (report / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == len(pngs)  # self-contained
    info = json.loads((study["dir"] / "study.json").read_text())
    client = MlflowClient(tracking_uri=_uri(tiny))
    logged = {a.path for a in client.list_artifacts(info["parent_run_id"], "report")}
    assert {"report/report.md", "report/report.html"} | {f"report/{p}" for p in own} <= logged
    logged = {a.path for a in client.list_artifacts(info["parent_run_id"], "optuna")}
    assert logged == {f"optuna/{p.name}" for p in optuna_dir.glob("*.*")}  # each PNG and its interactive HTML
    assert {p.stem for p in optuna_dir.glob("*.html")} == {p.stem for p in optuna_dir.glob("*.png")}
    if which == "staged_study":  # --report full trains nothing: a staged study has no baseline reference
        assert not (report / "baseline_counterpart.json").exists() and not (study["dir"] / "references.json").exists()
        assert "No baseline shown: the study has no baseline reference (`references.json`" in md
        top3 = next(report.parent.glob("stage*/trials/trial_*/val_top3.json"))
        data = json.loads(top3.read_text())
        assert data["split"] == "val" and set(data["top_k"]) == {"multimodal", "audio", "visual"}


def test_report_command_rerenders_and_reports_errors(staged_study, tiny, capsys):
    assert cli.main(["report", "--study", str(staged_study["dir"]), "--no-mlflow"]) == 0  # reads, trains nothing
    assert cli.main(["report", "--study", str(tiny["base"] / "nothing-here")]) == 2
    assert "not a finished bmlr-tune study" in capsys.readouterr().err


def test_surface_from_a_studys_scattered_trials(staged_study, tmp_path):
    rc = cli.main(["surface", "--from-trials", str(staged_study["dir"]), "--bins", "2", "2"])
    assert rc == 0
    bins = _csv(staged_study["dir"] / surface.FROM_TRIALS_CSV)
    trials = [r for r in _csv(staged_study["dir"] / "trials.csv") if r["status"] != "failed"]
    assert len(bins) == 4 and sum(int(b["trials"]) for b in bins) == len(trials)
    for b in bins:
        inside = [float(t["best_val_acc"]) for t in trials if t["trial_id"] in b["trial_ids"].split()]
        assert (float(b["val_acc_max"]) if b["val_acc_max"] else None) == (max(inside) if inside else None)
    for name in ("surface_from_trials_3d.png", "surface_from_trials_heatmap.png"):
        _assert_png(staged_study["dir"] / name)


# ---------------------------------------------------------------------------------------------
# no Ray
def test_grid_values_from_the_search_space_and_from_options():
    from bmlr.tuning.search_space import load_search_space, project_root

    space = load_search_space(project_root() / "search_spaces" / "synthetic.yaml")
    grid = surface.grid_values(space, None, None, (3, 5))
    assert grid["alpha"] == [0.25, 1.0, 4.0]  # geometric over loguniform [0.25, 4]
    assert grid["beta"] == [0.05, 0.275, 0.5, 0.725, 0.95]
    assert surface.grid_values(space, [2, 0.5], [0.3], (3, 5)) == {"alpha": [0.5, 2.0], "beta": [0.3]}
    with pytest.raises(surface.SurfaceError, match="distinct"):
        surface.grid_values(space, [1, 1], None, (3, 5))


def _row(tid, alpha, beta, seed, acc, status="completed"):
    return {"trial_id": tid, "status": status, "best_val_acc": acc, "best_epoch": 1, "val_acc_audio": 0.5,
            "param.alpha": alpha, "param.beta": beta, "param.seeds": [seed], "run_id": f"r{tid}"}


def test_cells_average_the_seeds_and_count_failures():
    rows = [_row("a", 1.0, 0.5, 0, 0.6), _row("b", 1.0, 0.5, 1, 0.8), _row("c", 1.0, 0.9, 0, 0.7),
            _row("d", 1.0, 0.9, 1, None, "failed"), _row("e", 2.0, 0.5, 0, 0.7), _row("f", 2.0, 0.5, 1, 0.7),
            _row("g", 2.0, 0.9, 0, None, "failed"), _row("h", 2.0, 0.9, 1, None, "failed")]
    cells = {(c["alpha"], c["beta"]): c for c in surface.cells(rows)}
    assert cells[1.0, 0.5]["val_acc_mean"] == pytest.approx(0.7)
    assert cells[1.0, 0.5]["val_acc_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert (cells[1.0, 0.9]["seeds"], cells[1.0, 0.9]["failed"], cells[1.0, 0.9]["val_acc_mean"]) == (1, 1, 0.7)
    assert cells[2.0, 0.9]["val_acc_mean"] is None and cells[2.0, 0.9]["failed"] == 2
    # three cells at 0.7: the smaller beta wins, then the smaller alpha; its best seed's trial
    assert surface.best_cell_row(rows)["trial_id"] == "b"
    alphas, betas, values, _ = surface.matrix(surface.cells(rows))
    assert surface.best_index(alphas, betas, values) == (0, 0)


def test_heatmap_writes_every_cells_value(tmp_path):
    """The images show the grid's values: each cell's number is a text of the heat map and the
    3-D figure plots exactly the grid's values."""
    values = np.array([[61.25, 70.0, np.nan], [65.5, 72.25, 68.0]])
    info = surface.SurfaceFigure([0.5, 2.0], [0.1, 0.5, 0.9], values, "t", empty="failed")
    heatmap = surface_figures.draw_heatmap(info)
    texts = [t.get_text() for t in heatmap.axes[0].texts]
    assert {"61.2", "70.0", "65.5", "72.2", "68.0", "failed"} <= set(texts)  # 61.25 -> 61.2 (half to even)
    layers = surface_figures.draw_3d(info)
    lines = [ln for ln in layers.axes[0].get_lines() if ln.get_label().startswith("\u03b1 =")]
    drawn = sorted(float(z) for ln in lines for z in ln.get_data_3d()[2])
    assert drawn == sorted(values[np.isfinite(values)].tolist())
    for fig, name in ((heatmap, "h.png"), (layers, "s.png")):
        _assert_png(save_figure(fig, tmp_path / name))


def test_stage2_winner_keeps_the_incumbent_on_a_tie():
    from bmlr.tuning.staged import choose_stage2_winner

    def r(tid, stage, acc, cand=True):
        return {"trial_id": tid, "stage": stage, "best_val_acc": acc, "status": "completed", "best_epoch": 1,
                "stage2_candidate": cand}

    rows = [r("s1a", 1, 0.8), r("s1b", 1, 0.9, cand=False), r("s2a", 2, 0.8), r("s2b", 2, 0.7)]
    assert choose_stage2_winner(rows)["trial_id"] == "s1a"  # a stage-1 trial that was not the winner never counts
    rows.append(r("s2c", 2, 0.85))
    assert choose_stage2_winner(rows)["trial_id"] == "s2c"


def test_val_top3_counts_and_rng_untouched(tiny, tmp_path):
    import torch

    from bmlr.config import from_dict
    from bmlr.engine import Trainer
    from bmlr.tuning.trainable import save_val_top3

    torch.set_num_threads(1)
    cfg = from_dict({**TINY, "data_root": str(tiny["data"]), "cache_dir": str(tiny["cache"]), "epochs": 1,
                     "seeds": [0]})
    trainer = Trainer(cfg, seed=0)
    trainer.step_epoch()
    state = torch.get_rng_state()
    save_val_top3(trainer, tmp_path / "t.json")
    assert torch.equal(state, torch.get_rng_state())
    data = json.loads((tmp_path / "t.json").read_text())
    support = np.array(data["support"])
    assert support.sum() == len(trainer.data.val)
    for head in ("multimodal", "audio", "visual"):
        counts = np.array(data["top_k"][head])
        assert counts.shape == (6, 6) and (counts.sum(1) == 3 * support).all()
