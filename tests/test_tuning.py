"""Tuning (bmlr.tuning, tune.py): the trainable, the pre-flight checks and end-to-end
studies on a tiny generated synthetic data set with a tiny model.

Fast tests need no Ray cluster. The `slow` ones start Ray (a local instance, or a
cluster from `ray start --head`) and, for one, a real `mlflow server` on loopback;
everything they start is stopped by its process id afterwards.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from bmlr.config import load_config
from bmlr.tuning import cli

from process_helpers import stop_process

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ.pop("MLFLOW_TRACKING_URI", None)  # these tests exercise the default store in --storage
# a trial: tiny ResNet, 2 frames of 32x32, batches of 16 (tests run on 2 CPU cores)
TINY_FIXED = {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2, "batch_size": 16,
              "val_fraction": 0.3, "epochs": 2, "seeds": [0, 1]}
SPACE = {"search": {"beta": {"uniform": [0.1, 0.9]}, "alpha": {"loguniform": [0.5, 2.0]},
                    "lr": {"loguniform": [1.0e-3, 1.0e-2]}, "fusion": {"choice": ["concat", "sum"]}},
         "fixed": TINY_FIXED}
# lr 1e-6 does not learn in a few epochs (ASHA stops it), 1e20 makes the loss NaN (the trial
# fails). TPE starts with seeded random samples: with --seed 27 the 9 trials draw lr
# 5e-3, 5e-3, 5e-3, 1e20, 1e20, 1e-6, 5e-3, 1e20, 1e-6 (good ones first, so ASHA has a bar).
ASHA_SPACE = {"search": {**SPACE["search"], "lr": {"choice": [1.0e-6, 5.0e-3, 1.0e20]}}, "fixed": TINY_FIXED}
ASHA_SEED = "27"


def _env() -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny synthetic data set (6 classes, 12 train / 2 test clips each) and a cache folder."""
    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("tuning")
    data = generate(base / "data", seed=0, n_train_per_class=12,
        n_test_per_class=2, n_val_per_class=2, image_size=32, n_frames=2)
    return {"base": base, "data": data, "cache": base / "cache"}


def _space(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _args(tiny, storage: Path, space: Path, *extra: str, local: bool = True) -> list[str]:
    return ["--data-root", str(tiny["data"]), "--search-space", str(space), "--storage", str(storage),
            "--set", f"cache_dir={tiny['cache']}", *(["--num-cpus", "2"] if local else []), "-v", "0", *extra]


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _study_runs(uri: str, study_dir: Path):
    info = json.loads((study_dir / "study.json").read_text())
    client = _client(uri)
    children = client.search_runs([info["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")
    return info, client, client.get_run(info["parent_run_id"]), children


def _rows(study_dir: Path) -> list[dict]:
    with (study_dir / "trials.csv").open() as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# the trainable without a cluster
def test_trial_continues_from_its_saved_state_exactly(tiny, tmp_path, monkeypatch):
    """A trial that dies after reporting epoch 2 (before saving it) restarts from its
    epoch-1 state, redoes epoch 2 and reproduces the uninterrupted run exactly (model,
    optimizer and random states restored); it never evaluates the test split."""
    import types

    import torch
    from ray import tune

    from bmlr.config import from_dict
    from bmlr.engine import Trainer
    from bmlr.tuning.trainable import state_path, train_trial

    torch.set_num_threads(1)
    base = from_dict({**TINY_FIXED, "data_root": str(tiny["data"]), "cache_dir": str(tiny["cache"]),
                      "epochs": 3, "seeds": [0]}).to_dict()
    splits = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, split: splits.append(split) or evaluate(self, split))
    monkeypatch.setattr(tune, "get_context", lambda: types.SimpleNamespace(get_trial_id=lambda: "abc"))
    reports, crash_at = [], [None]

    def report(metrics, checkpoint=None):
        reports.append(metrics)
        if metrics["epoch"] == crash_at[0]:
            crash_at[0] = None
            raise RuntimeError("node lost")

    monkeypatch.setattr(tune, "report", report)
    sampled = {"beta": 0.5, "alpha": 1.0, "lr": 5e-3}
    train_trial(sampled, base, state_dir=str(tmp_path / "uninterrupted"))
    full = list(reports)
    assert [m["epoch"] for m in full] == [1, 2, 3]
    assert {"val_acc", "val_macro_f1", "val_acc_audio", "val_acc_visual", "train_loss", "reshaped/audio",
            "best_val_acc"} <= set(full[0])

    reports.clear()
    crash_at[0] = 2
    with pytest.raises(RuntimeError, match="node lost"):
        train_trial(sampled, base, state_dir=str(tmp_path / "crashed"))
    saved = torch.load(state_path(tmp_path / "crashed", "abc"), weights_only=False)
    assert saved["epoch"] == 1
    reports.clear()
    train_trial(sampled, base, state_dir=str(tmp_path / "crashed"))  # Ray retries it
    assert [m["epoch"] for m in reports] == [2, 3]
    for a, b in zip(reports, full[1:]):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    assert set(splits) == {"val"}


def test_report_metrics_drops_non_finite_values():
    from bmlr.tuning.trainable import report_metrics

    out = report_metrics({"val_acc": 0.5, "val_imbalance_ratio": float("inf"), "epoch": 3, "note": "x"})
    assert out == {"val_acc": 0.5, "epoch": 3}
    with pytest.raises(FloatingPointError):
        report_metrics({"val_acc": float("nan"), "epoch": 1})


# ---------------------------------------------------------------------------------------------
# pre-flight: reported before any trial (or Ray) starts, non-zero exit
def _preflight(capsys, argv) -> str:
    import ray

    rc = cli.main(argv)
    assert rc == 2
    assert not ray.is_initialized()
    return capsys.readouterr().err


def test_unreachable_tracking_server_fails_before_trials(tiny, tmp_path, capsys):
    space = _space(tmp_path / "s.yaml", SPACE)
    port = _free_port()  # nothing listens there
    err = _preflight(capsys, _args(tiny, tmp_path / "runs", space, "--tracking-uri", f"http://127.0.0.1:{port}"))
    assert f"127.0.0.1:{port} is not reachable" in err
    assert not (tmp_path / "runs" / "synthetic").exists()


def test_missing_data_root_fails_before_trials(tiny, tmp_path, capsys):
    space = _space(tmp_path / "s.yaml", SPACE)
    argv = _args(tiny, tmp_path / "runs", space)
    argv[argv.index("--data-root") + 1] = str(tmp_path / "no-such-data")
    err = _preflight(capsys, argv)
    assert "data root not found" in err and "no-such-data" in err


def test_unusable_data_root_fails_before_trials(tiny, tmp_path, capsys):
    space = _space(tmp_path / "s.yaml", SPACE)
    empty = tmp_path / "empty-data"
    empty.mkdir()
    argv = _args(tiny, tmp_path / "runs", space)
    argv[argv.index("--data-root") + 1] = str(empty)
    err = _preflight(capsys, argv)
    assert "cannot prepare data set 'synthetic'" in err
    info_files = list((tmp_path / "runs").glob("*/*/study.json"))
    assert not info_files  # no study folder, no parent run


def test_malformed_search_space_fails_with_file_and_key(tiny, tmp_path, capsys):
    bad = _space(tmp_path / "bad.yaml", {"search": {"alpha": {"loguniform": [0, 2]}}, "fixed": TINY_FIXED})
    err = _preflight(capsys, _args(tiny, tmp_path / "runs", bad))
    assert str(bad) in err and "search.alpha" in err and "low > 0" in err
    bad = _space(tmp_path / "bad2.yaml", {"search": {"fusion": {"choice": ["concat", "attention"]}}})
    err = _preflight(capsys, _args(tiny, tmp_path / "runs", bad))
    assert str(bad) in err and "search.fusion" in err and "attention" in err


def test_set_of_a_searched_key_is_rejected(tiny, tmp_path, capsys):
    space = _space(tmp_path / "s.yaml", SPACE)
    err = _preflight(capsys, _args(tiny, tmp_path / "runs", space, "--set", "beta=0.5"))
    assert "'beta' is searched" in err


def test_relative_sqlite_uri_is_rejected(tiny, tmp_path, capsys):
    space = _space(tmp_path / "s.yaml", SPACE)
    err = _preflight(capsys, _args(tiny, tmp_path / "runs", space, "--tracking-uri", "sqlite:///rel/mlflow.db"))
    assert "absolute path" in err


# ---------------------------------------------------------------------------------------------
# export: finding the store, creating nothing
def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("how", ["default", "env", "flag"])
def test_export_without_a_store_creates_nothing(tmp_path, monkeypatch, capsys, how):
    monkeypatch.chdir(tmp_path)
    missing = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    argv = ["export", "--run-id", "0" * 32, "-o", "x.yaml"]
    if how == "env":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", missing)
    if how == "flag":
        argv += ["--tracking-uri", missing]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "no MLflow store at" in err
    assert all(name in err for name in ("--tracking-uri", "--storage", "MLFLOW_TRACKING_URI")), err
    assert {"default": "tune_runs/mlflow.db", "env": "MLFLOW_TRACKING_URI", "flag": "--tracking-uri"}[how] in err
    assert _files(tmp_path) == []  # no database file, no folder


def _store_with_trial(storage: Path) -> tuple[str, str]:
    from bmlr.tuning import tracking

    uri = tracking.default_tracking_uri(storage)
    tracking.check_reachable(uri)
    experiment = tracking.get_or_create_experiment(uri, "export-test")
    client = _client(uri)
    run = client.create_run(experiment, tags={"trial_id": "t1", "study": "s", "export.epochs": "3",
                                              "export.seeds": "[4, 5]"})
    client.log_text(run.info.run_id, yaml.safe_dump({"dataset": "synthetic", "beta": 0.37}), "config.yaml")
    return uri, run.info.run_id


def test_export_finds_the_run_through_storage_and_environment(tmp_path, monkeypatch, capsys):
    uri, run_id = _store_with_trial(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export", "--run-id", run_id, "-o", "a.yaml", "--storage", "runs"]) == 0
    cfg = load_config(tmp_path / "a.yaml")
    assert cfg.beta == pytest.approx(0.37) and cfg.epochs == 3 and cfg.seeds == [4, 5]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert cli.main(["export", "--run-id", run_id, "-o", "b.yaml"]) == 0
    assert load_config(tmp_path / "b.yaml").beta == pytest.approx(0.37)
    assert cli.main(["export", "--run-id", "0" * 32, "-o", "c.yaml"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "--tracking-uri" in err and not (tmp_path / "c.yaml").exists()


# ---------------------------------------------------------------------------------------------
# how the runs read in the MLflow UI
def test_trial_run_names_show_the_sampled_values_compactly():
    from bmlr.tuning.run_view import compact, trial_run_name

    assert [compact(v) for v in (1.3612, 0.6149, 1.7e-3, 0.0, 123456.0, 5, True, "sum")] == \
        ["1.36", "0.615", "1.7e-3", "0", "1.23e5", "5", "true", "sum"]
    sampled = {"lr": 0.0017, "fusion": "concat", "beta": 0.6149, "alpha": 1.3612}
    assert trial_run_name(sampled, ["alpha", "beta", "lr", "fusion"]) == "a=1.36 b=0.615 lr=1.7e-3 concat"
    assert trial_run_name({"alpha": 1.0, "seed": 2}, ["alpha"]) == "a=1 seed=2"  # unlisted keys follow


def test_the_best_run_is_marked_and_described_once(tmp_path):
    from bmlr.tuning import tracking

    uri = tracking.default_tracking_uri(tmp_path)
    experiment = tracking.get_or_create_experiment(uri, "names")
    client = _client(uri)
    ids = [client.create_run(experiment, run_name=f"a={i}").info.run_id for i in range(3)]
    tracking.mark_best(client, [client.get_run(i) for i in ids], ids[1], "won: 0.9 at epoch 3")
    tracking.mark_best(client, [client.get_run(i) for i in ids], ids[2], "won: 0.95 at epoch 2")  # a resume
    runs = [client.get_run(i) for i in ids]
    assert [r.info.run_name for r in runs] == ["a=0", "a=1", "★ a=2"]
    assert [r.data.tags["best_trial"] for r in runs] == ["false", "false", "true"]
    assert [r.data.tags.get("mlflow.note.content") for r in runs] == [None, None, "won: 0.95 at epoch 2"]


def test_summary_links_to_the_runs_table_and_the_parent_run():
    from bmlr.tuning.run_view import ui_lines

    lines = ui_lines("sqlite:////data/runs/mlflow.db", "3", "abc")
    assert "mlflow ui --backend-store-uri sqlite:////data/runs/mlflow.db" in lines[0]
    assert lines[1].endswith("http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning")
    assert lines[2].endswith("http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning")
    served = ui_lines("http://10.0.0.5:8080/", "3", "abc")
    assert len(served) == 2 and "mlflow ui" not in " ".join(served)
    assert served[0].endswith("http://10.0.0.5:8080/#/experiments/3/runs?workflowType=machine_learning")
    viewed = ui_lines("http://10.0.0.5:8080/", "3", "abc", view="bmlr-abc")
    assert viewed[0].endswith("/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=bmlr-abc")


def test_the_study_view_lists_its_trials_best_first_with_the_sampled_columns(tmp_path):
    from bmlr.tuning import tracking

    client = _client(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    key = tracking.save_table_view(client, experiment, "p1", ["beta", "alpha", "lr"], "best_val_acc")
    assert key == "bmlr-p1"
    view = json.loads(client.get_experiment(experiment).tags["mlflow.sharedViewState.bmlr-p1"])
    assert view["searchFilter"] == "tags.`mlflow.parentRunId` = 'p1'"
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`best_val_acc`", False)
    assert view["selectedColumns"][:4] == ["metrics.`best_val_acc`", "params.`beta`", "params.`alpha`",
                                           "params.`lr`"]
    assert view["columnOrder"][0] == "attributes.`Run Name`" and view["columnOrder"][1:] == view["selectedColumns"]


def test_report_best_trials_table_carries_the_mlflow_run_ids():
    from bmlr.tuning.report import best_trials_table

    rows = [{"trial_id": "t1", "status": "completed", "epochs": 4, "best_epoch": 3, "best_val_acc": 0.5,
             "run_id": "r1", "param.beta": 0.3},
            {"trial_id": "t2", "status": "completed", "epochs": 4, "best_epoch": 2, "best_val_acc": 0.7,
             "run_id": "r2", "param.beta": 0.5},
            {"trial_id": "t3", "status": "failed", "epochs": 1, "run_id": None, "param.beta": 0.9}]
    head, body = best_trials_table(rows, ["audio", "visual"], top=5)
    column = head.index("MLflow run")
    assert [line[column] for line in body] == ["r2", "r1", "-"]


# ---------------------------------------------------------------------------------------------
# end to end: one study, several checks
@pytest.fixture(scope="module")
def asha_study(tiny):
    """9 trials of at most 4 epochs, ASHA (grace 1, reduction 2); a third of the trials get
    lr 1e20 (NaN loss: they fail), a third lr 1e-5 (no progress: ASHA stops them)."""
    storage = tiny["base"] / "asha-runs"
    space = _space(tiny["base"] / "asha.yaml", ASHA_SPACE)
    start = time.time()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(_args(tiny, storage, space, "--samples", "9", "--max-epochs", "4", "--grace-period", "1",
                            "--reduction-factor", "2", "--name", "asha", "--seed", ASHA_SEED))
    print(out.getvalue())
    study_dir = storage / "synthetic" / "asha"
    return {"rc": rc, "dir": study_dir, "uri": f"sqlite:///{storage.resolve()}/mlflow.db",
            "seconds": time.time() - start, "out": out.getvalue()}


@pytest.mark.slow
def test_study_asha_stops_some_trials_early(asha_study):
    assert asha_study["rc"] == 0
    rows = _rows(asha_study["dir"])
    assert len(rows) == 9
    statuses = [r["status"] for r in rows]
    assert statuses.count("stopped_early") >= 1, rows
    assert statuses.count("completed") >= 1, rows
    for r in rows:
        if r["status"] == "stopped_early":
            assert int(r["epochs"]) < 4
        if r["status"] == "completed":
            assert int(r["epochs"]) == 4


@pytest.mark.slow
def test_study_logs_parent_and_nested_runs_to_mlflow(asha_study):
    info, client, parent, children = _study_runs(asha_study["uri"], asha_study["dir"])
    tags = parent.data.tags
    assert tags["dataset"] == "synthetic" and tags["method"] == "bmlr"
    assert tags["search_space"].endswith("asha.yaml") and tags.get("git_commit")
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"search_space.yaml", "best.yaml",
                                                                             "trials.csv"}
    assert parent.info.status == "FINISHED"
    assert len(children) == 9 and len({r.data.tags["trial_id"] for r in children}) == 9
    best = [r for r in children if r.data.tags.get("best_trial") == "true"]
    assert len(best) == 1 and tags["best_run_id"] == best[0].info.run_id
    # readable runs: named by the sampled values (search-space order), the winner marked and described
    assert best[0].info.run_name.startswith("★ b=") and "validation accuracy" in best[0].data.tags["mlflow.note.content"]
    assert [r for r in children if r.info.run_name.startswith("★")] == best
    assert all(re.fullmatch(r"(★ )?b=\S+ a=\S+ lr=\S+ (concat|sum)", r.info.run_name) for r in children), \
        [r.info.run_name for r in children]
    assert "best_val_acc" not in parent.data.metrics and float(tags["best_score"]) > 0  # not sorted among trials
    # the summary: how to open the store, then links to the classic runs table and the parent run
    ui = f"http://127.0.0.1:5000/#/experiments/{info['experiment_id']}"
    assert f"mlflow ui --backend-store-uri {asha_study['uri']}" in asha_study["out"]
    assert f"runs table: {ui}/runs?workflowType=machine_learning&viewStateShareKey=bmlr-{parent.info.run_id}" \
        in asha_study["out"]
    experiment = client.get_experiment(info["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # "model training"
    assert f"mlflow.sharedViewState.bmlr-{parent.info.run_id}" in experiment.tags
    assert f"parent run: {ui}/runs/{parent.info.run_id}?workflowType=machine_learning" in asha_study["out"]
    for run in children:
        t = run.data.tags
        assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"alpha", "beta", "lr", "fusion", "model_width"} <= set(run.data.params)
        assert not any(k.startswith("test") for k in run.data.metrics)  # selection never sees test
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        if t["trial_status"] == "failed":
            assert run.info.status == "FAILED"
            continue
        assert run.info.status == "FINISHED"
        assert steps == list(range(1, int(t["epochs_trained"]) + 1))  # one point per epoch, step = epoch
        assert t["early_stopped"] == str(t["trial_status"] == "stopped_early").lower()
        for key in ("val_macro_f1", "val_acc_audio", "val_acc_visual", "train_loss", "reshaped/audio"):
            assert len(client.get_metric_history(run.info.run_id, key)) == len(steps)


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_study_goes_on(asha_study):
    rows = _rows(asha_study["dir"])
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 3 and all(float(r["param.lr"]) == 1e20 for r in failed)
    assert all("FloatingPointError" in r["error"] for r in failed)
    assert len(rows) - len(failed) >= 3  # the others ran to the end or were stopped by ASHA
    _, _, _, children = _study_runs(asha_study["uri"], asha_study["dir"])
    failed_runs = [r for r in children if r.data.tags["trial_status"] == "failed"]
    assert len(failed_runs) == len(failed)
    assert all(r.info.status == "FAILED" and "FloatingPointError" in r.data.tags["error"] for r in failed_runs)
    assert "1e+20" not in (asha_study["dir"] / "best.yaml").read_text()


@pytest.mark.slow
def test_best_yaml_trains_with_bmlr_train(asha_study, tmp_path):
    best = asha_study["dir"] / "best.yaml"
    cfg = load_config(best)
    assert cfg.epochs == TINY_FIXED["epochs"] and cfg.seeds == TINY_FIXED["seeds"]  # production, not trial
    rows = _rows(asha_study["dir"])
    top = max((r for r in rows if r["status"] != "failed"), key=lambda r: float(r["best_val_acc"]))
    assert cfg.beta == pytest.approx(float(top["param.beta"])) and cfg.lr == pytest.approx(float(top["param.lr"]))
    out = subprocess.run([sys.executable, "-m", "bmlr.train", "--config", str(best), "--no-progress",
                          "--set", f"output_dir={tmp_path}"], env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(next(tmp_path.glob("*/results.json")).read_text())
    assert [s["seed"] for s in results["seeds"]] == TINY_FIXED["seeds"]
    assert "test_acc" in results["summary"]


@pytest.mark.slow
def test_export_any_trial_by_mlflow_run_id(asha_study, tmp_path, capsys):
    _, _, _, children = _study_runs(asha_study["uri"], asha_study["dir"])
    chosen = next(r for r in children if r.data.tags["trial_status"] != "failed"
                  and r.data.tags.get("best_trial") != "true")
    out = tmp_path / "chosen.yaml"
    rc = cli.main(["export", "--run-id", chosen.info.run_id, "-o", str(out), "--tracking-uri", asha_study["uri"]])
    assert rc == 0, capsys.readouterr().err
    cfg = load_config(out)
    assert cfg.beta == pytest.approx(float(chosen.data.params["beta"]))
    assert cfg.fusion == chosen.data.params["fusion"]
    assert cfg.epochs == TINY_FIXED["epochs"] and cfg.seeds == TINY_FIXED["seeds"]
    assert cli.main(["export", "--run-id", "0" * 32, "-o", str(out), "--tracking-uri", asha_study["uri"]]) == 2


# ---------------------------------------------------------------------------------------------
# resume after Ctrl-C
def _finished_children(uri: str, study_dir: Path) -> list:
    if not (study_dir / "study.json").is_file():
        return []
    try:
        _, _, _, children = _study_runs(uri, study_dir)
    except Exception:  # the store may be mid-write
        return []
    return [r for r in children if r.info.status == "FINISHED"]


@pytest.mark.slow
def test_interrupted_study_resumes_without_rerunning_finished_trials(tiny, tmp_path):
    storage = tmp_path / "runs"
    space = _space(tmp_path / "s.yaml", SPACE)
    uri = f"sqlite:///{storage.resolve()}/mlflow.db"
    study_dir = storage / "synthetic" / "resumable"
    # grace period = max epochs: ASHA stops nothing, so the study cannot end before the Ctrl-C
    argv = _args(tiny, storage, space, "--samples", "5", "--max-epochs", "3", "--grace-period", "3",
                 "--concurrent", "1", "--name", "resumable")
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, str(ROOT / "tune.py"), *argv], env=_env(), stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while len(_finished_children(uri, study_dir)) < 2:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, "no two trials finished in time"
            time.sleep(0.5)
        driver.send_signal(signal.SIGINT)  # Ctrl-C
        assert driver.wait(120) == cli.EXIT_INTERRUPTED, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        stop_process(driver)

    before = {}
    _, client, parent, children = _study_runs(uri, study_dir)
    for run in children:
        if run.info.status == "FINISHED":
            trial_dir = Path(run.data.tags["trial_dir"])
            before[run.data.tags["trial_id"]] = {
                "run_id": run.info.run_id,
                "val_acc": [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_acc")],
                "results": (trial_dir / "result.json").read_text().count("\n")}
    assert len(before) >= 2 and len(children) < 5

    assert cli.main(["--storage", str(storage), "--name", "resumable", "--resume", "-v", "0"]) == 0

    info, client, parent2, children = _study_runs(uri, study_dir)
    assert parent2.info.run_id == parent.info.run_id == info["parent_run_id"]  # the same parent run
    assert parent2.info.status == "FINISHED" and parent2.data.tags["resumed"] == "1"
    assert len(children) == 5 and len({r.data.tags["trial_id"] for r in children}) == 5
    by_trial = {r.data.tags["trial_id"]: r for r in children}
    for trial_id, old in before.items():  # finished trials: same run, nothing rerun or lost
        run = by_trial[trial_id]
        assert run.info.run_id == old["run_id"]
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert history == old["val_acc"]
        assert (Path(run.data.tags["trial_dir"]) / "result.json").read_text().count("\n") == old["results"]
    for run in children:  # every trial complete, one point per epoch, no epoch logged twice
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, int(run.data.tags["epochs_trained"]) + 1))
    assert len(_rows(study_dir)) == 5 and (study_dir / "best.yaml").is_file()


# ---------------------------------------------------------------------------------------------
# a real MLflow server and a real Ray cluster (started together: both take a while to boot)
def _wait_until(ready, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        assert time.time() < deadline, f"{what} did not come up in {timeout}s"
        time.sleep(0.5)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_study_on_a_ray_start_cluster_logging_to_an_mlflow_server(tiny, tmp_path):
    """`ray start --head` (then --address) and `mlflow server` on loopback, both torn down
    afterwards by their process ids."""
    import ray

    mlflow_port, ray_port = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="bmlr-ray-", dir="/tmp")  # short: Ray's socket paths have a limit
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
             str(tmp_path / "art")],
            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        procs.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--port", str(ray_port), "--num-cpus", "2",
             "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir],
            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        uri = f"http://127.0.0.1:{mlflow_port}"
        _wait_until(lambda: _http_ok(f"{uri}/health"), procs[0], "mlflow server")
        _wait_until(lambda: _port_open(ray_port), procs[1], "ray start --head")

        storage = tmp_path / "runs"
        space = _space(tmp_path / "s.yaml", SPACE)
        rc = cli.main(_args(tiny, storage, space, "--samples", "2", "--max-epochs", "2", "--name", "served",
                            "--tracking-uri", uri, "--experiment", "served-test", "--address",
                            f"127.0.0.1:{ray_port}", local=False))
        assert rc == 0
        assert not ray.is_initialized()  # disconnected from the cluster afterwards
        study_dir = storage / "synthetic" / "served"
        rows = _rows(study_dir)
        assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
        info, client, parent, children = _study_runs(uri, study_dir)
        assert info["tracking_uri"] == uri and not (storage / "mlflow.db").exists()
        assert parent.data.tags["study"] == "served" and len(children) == 2
        for run in children:
            assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
            assert run.data.tags["trial_dir"].startswith(str(study_dir))
        assert "best.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
        out = tmp_path / "from-server.yaml"
        assert cli.main(["export", "--run-id", parent.info.run_id, "-o", str(out), "--tracking-uri", uri]) == 0
        assert load_config(out) == load_config(study_dir / "best.yaml")
    finally:
        for proc in procs:
            stop_process(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
