"""Tuning (bmlr.tuning, tune.py): the trainable, the pre-flight checks and end-to-end
studies on a tiny generated synthetic data set with a tiny model.

Fast tests need no Ray cluster. The `slow` ones start Ray (a local instance, or a
cluster from `ray start --head`) and, for one, a real `mlflow server` on loopback;
everything they start is stopped by its process id afterwards.
"""
from __future__ import annotations

import csv
import json
import os
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


def _stop(proc: subprocess.Popen, timeout: float = 40) -> None:
    """Stop a process we started (and its process group: it was started in its own session)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of our own process group only
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny synthetic data set (6 classes, 12 train / 2 test clips each) and a cache folder."""
    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("tuning")
    data = generate(base / "data", seed=0, n_train_per_class=12, n_test_per_class=2, image_size=32, n_frames=2)
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
# end to end: one study, several checks
@pytest.fixture(scope="module")
def asha_study(tiny):
    """9 trials of at most 4 epochs, ASHA (grace 1, reduction 2); a third of the trials get
    lr 1e20 (NaN loss: they fail), a third lr 1e-5 (no progress: ASHA stops them)."""
    storage = tiny["base"] / "asha-runs"
    space = _space(tiny["base"] / "asha.yaml", ASHA_SPACE)
    start = time.time()
    rc = cli.main(_args(tiny, storage, space, "--samples", "9", "--max-epochs", "4", "--grace-period", "1",
                        "--reduction-factor", "2", "--name", "asha", "--seed", ASHA_SEED))
    study_dir = storage / "synthetic" / "asha"
    return {"rc": rc, "dir": study_dir, "uri": f"sqlite:///{storage.resolve()}/mlflow.db",
            "seconds": time.time() - start}


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
        _stop(driver)

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
            _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
