"""Production runs in MLflow: `python -m bmlr.train` logs one run per job with a nested run per
seed, into the store the configuration came from (`--from-run`, a study's best.yaml) or the one
named by `--tracking-uri`; a store that cannot be used stops it before training."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from bmlr.config import ConfigError, from_dict, load_config
from bmlr.production_tracking import interrupts_held, resolve_target

ROOT = Path(__file__).resolve().parents[1]
TINY = {"image_size": 32, "frames": 2, "model_width": 4, "model_depth": 1, "batch_size": 16, "val_fraction": 0.3}


def _env() -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _train(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bmlr.train", "--no-progress", *args], env=_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _data_sets(study: dict, out: Path) -> list[str]:
    return ["--set", f"output_dir={out}", "--set", f"data_root={study['data']}", "--set", f"cache_dir={study['cache']}"]


def _best_trial(study: dict):
    client = MlflowClient(study["uri"])
    return client, client.get_run(client.get_run(study["parent_run_id"]).data.tags["best_run_id"])


def _production_runs(client: MlflowClient, experiment_id: str, source_run_id: str) -> list:
    return client.search_runs([experiment_id], filter_string=f"tags.source_run_id = '{source_run_id}' "
                                                             f"and tags.run_kind = 'production'")


def _all_runs(uri: str) -> int:
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(ids, max_results=10000))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_seed_runs(client: MlflowClient, job, seeds: list[int], epochs: int) -> None:
    """One finished nested run per seed: its checkpoint, epoch metrics at steps 1..epochs, test once."""
    seed_runs = client.search_runs([job.info.experiment_id],
                                   filter_string=f"tags.`mlflow.parentRunId` = '{job.info.run_id}'")
    assert sorted(int(r.data.tags["seed"]) for r in seed_runs) == sorted(seeds)
    for run in seed_runs:
        assert run.info.status == "FINISHED"
        assert "model.pt" in [a.path for a in client.list_artifacts(run.info.run_id)]
        [model] = run.outputs.model_outputs  # its MLflow model (the experiment's "Logged models")
        assert client.get_logged_model(model.model_id).source_run_id == run.info.run_id
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == list(range(1, epochs + 1))
        for key in ("test_acc", "test_macro_f1", "test_loss"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 1, key


# --------------------------------------------------------------------------------------------
def test_from_run_trains_the_chosen_trial_and_logs_it_beside_the_study(finished_study, tmp_path, monkeypatch, capsys):
    client, trial = _best_trial(finished_study)
    out = tmp_path / "runs"
    proc = _train(["--from-run", trial.info.run_id, "--tracking-uri", finished_study["uri"], "--register", "tiny-best",
                   *_data_sets(finished_study, out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [job] = _production_runs(client, finished_study["experiment_id"], trial.info.run_id)
    tags, metrics = job.data.tags, job.data.metrics
    assert job.info.status == "FINISHED"
    assert {"test_acc_mean", "test_acc_std"} <= set(metrics)
    assert tags["source_study"] == "tiny" and tags["source_trial_id"] == trial.data.tags["trial_id"]
    assert tags["source_experiment_id"] == finished_study["experiment_id"]
    assert tags["source_parent_run_id"] == finished_study["parent_run_id"]
    assert trial.data.tags["trial_id"] in tags["mlflow.note.content"]
    assert job.info.run_name.startswith("production bmlr synthetic ")
    assert {"config.yaml", "results.json"} <= {a.path for a in client.list_artifacts(job.info.run_id)}
    # the trial's configuration as trained (threads included), production epochs and seeds of the study
    for key in ("lr", "alpha", "beta", "fusion", "threads", "model_width", "batch_size"):
        assert job.data.params[key] == trial.data.params[key], key
    assert yaml.safe_load(job.data.params["seeds"]) == [0, 1] and job.data.params["epochs"] == "2"
    _check_seed_runs(client, job, [0, 1], 2)
    [run_dir] = out.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["complete"] and results["config"]["source"]["run_id"] == trial.info.run_id
    assert metrics["test_acc_mean"] == pytest.approx(results["summary"]["test_acc"]["mean"])
    _check_models(client, finished_study, trial, job, results, run_dir, monkeypatch, capsys)


README_SNIPPET = "<!-- load-and-predict: run by tests/test_production_tracking.py -->"


def _check_models(client, study, trial, job, results, run_dir, monkeypatch, capsys) -> None:
    """Standard source tags; links from the trial's and the study's runs; the seed with the best
    validation accuracy registered; the README's load-and-predict lines, run on the registered
    model, print the test accuracy results.json reports for that seed."""
    tags = job.data.tags
    assert tags["mlflow.source.name"] == "bmlr-train" and tags["mlflow.source.type"] == "LOCAL"
    for source in (trial.info.run_id, study["parent_run_id"]):
        assert job.info.run_id in client.get_run(source).data.tags["production_runs"].split(","), source
    name, version = tags["registered_model"].split("/")
    registered = client.get_run(client.get_model_version(name, version).run_id)
    seed = int(registered.data.tags["seed"])
    assert registered.data.tags["mlflow.parentRunId"] == job.info.run_id and registered.outputs.model_outputs
    best = max(results["seeds"], key=lambda r: r["val"]["acc"])
    assert seed == best["seed"]
    readme = (ROOT / "README.md").read_text()
    code = readme[readme.index(README_SNIPPET):].split("```python\n", 1)[1].split("```", 1)[0]
    code = (code.replace("sqlite:////abs/path/tune_runs/mlflow.db", study["uri"])
            .replace("models:/bmlr-synthetic/1", f"models:/{name}/{version}")
            .replace("tune_runs/synthetic/bmlr-synthetic/best.yaml", str(run_dir / "config.yaml")))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after, as the snippet sets it
    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:
        import mlflow
        mlflow.set_tracking_uri(None)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("test accuracy ")
    assert float(printed.split()[-1]) == pytest.approx(best["test"]["acc"], abs=1e-6)


def test_the_studys_best_yaml_logs_to_the_study_without_a_flag(finished_study, tmp_path):
    best_yaml = finished_study["dir"] / "best.yaml"
    source = load_config(best_yaml).source
    client, trial = _best_trial(finished_study)
    assert source, "best.yaml names no source: bmlr/tuning/results.py must give production_config a source_of(...)"
    assert source["tracking_uri"] == finished_study["uri"] and source["run_id"] == trial.info.run_id
    assert load_config(best_yaml).output_dir == str(finished_study["dir"] / "production")  # trains beside the study
    proc = _train(["--config", str(best_yaml), "--set", "seeds=[0]", *_data_sets(finished_study, tmp_path / "runs")],
                  tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    jobs = _production_runs(client, finished_study["experiment_id"], trial.info.run_id)
    job = next(j for j in jobs if j.data.tags.get("config_file") == str(best_yaml))
    assert job.data.tags["source_study"] == "tiny" and "test_acc_mean" in job.data.metrics
    _check_seed_runs(client, job, [0], 2)


def test_no_mlflow_logs_nothing(finished_study, tmp_path):
    _, trial = _best_trial(finished_study)
    before = _all_runs(finished_study["uri"])
    proc = _train(["--from-run", trial.info.run_id, "--storage", str(finished_study["storage"]), "--no-mlflow",
                   "--set", "seeds=[0]", "--set", "epochs=1", *_data_sets(finished_study, tmp_path / "runs")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "MLflow:" not in proc.stdout
    assert _all_runs(finished_study["uri"]) == before


def test_register_needs_a_store_and_says_so_before_training(tmp_path, capsys):
    from bmlr.train import main

    assert main(["--no-mlflow", "--register", "m", "--set", f"output_dir={tmp_path}"]) == 2
    assert "--register m: needs an MLflow store, not --no-mlflow" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_from_run_with_an_unknown_id_names_it_and_the_store(finished_study, tmp_path):
    missing = "0" * 32
    proc = _train(["--from-run", missing, "--tracking-uri", finished_study["uri"], "--set", f"output_dir={tmp_path}/o"],
                  tmp_path)
    assert proc.returncode == 2
    assert missing in proc.stderr and finished_study["uri"] in proc.stderr
    proc = _train(["--from-run", missing, "--storage", "nowhere"], tmp_path)  # a store that is not there
    assert proc.returncode == 2 and missing in proc.stderr and "--tracking-uri" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder, no database


def test_an_unreachable_server_stops_before_training(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"
    proc = _train(["--tracking-uri", url, "--set", f"output_dir={tmp_path / 'runs'}", "--set", "epochs=1"], tmp_path,
                  timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "not reachable" in proc.stderr and url in proc.stderr
    assert "epoch" not in proc.stdout and not (tmp_path / "runs").exists()


def test_an_interrupted_run_ends_killed_with_the_finished_seeds(tmp_path):
    from bmlr.data.synthetic import generate

    data = generate(tmp_path / "data", seed=0, n_train_per_class=12,
        n_test_per_class=2, n_val_per_class=2, image_size=32, n_frames=2)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    args = ["--tracking-uri", uri, "--experiment", "prod"] + [
        a for k, v in {**TINY, "data_root": str(data), "cache_dir": str(tmp_path / "cache"), "epochs": 1000,
                       "seeds": "[0, 1]", "output_dir": str(tmp_path / "runs")}.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.Popen([sys.executable, "-m", "bmlr.train", "--no-progress", *args], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # a few epochs of the first seed
        if "epoch   3/1000" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("prod").experiment_id
    [job] = client.search_runs([experiment], filter_string="tags.run_kind = 'production'")
    [seed] = client.search_runs([experiment], filter_string="tags.run_kind = 'production_seed'")
    assert job.info.status == "KILLED" and seed.info.status == "KILLED"
    assert "results.json" in [a.path for a in client.list_artifacts(job.info.run_id)]
    assert len(client.get_metric_history(seed.info.run_id, "val_acc")) >= 2  # logged before epoch 3's line
    assert not client.get_metric_history(seed.info.run_id, "test_acc")  # test never read
    [run_dir] = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "results.json").read_text())["complete"] is False


def test_ctrl_c_inside_a_store_call_is_held_until_the_call_returns():
    """A Ctrl-C (or a SIGTERM, which bmlr.train routes to it) that arrives inside a call to the
    store is raised once the call has returned: raised inside a SQLite transaction it left the
    store locked, and the job's run RUNNING after exit 130 (seen in CI). A second one is raised
    at once, and the Ctrl-C handler is the one before the block afterwards. Python's own Ctrl-C
    handler is installed for the test (what `python -m bmlr.train` runs with; a test before this
    one in the same process may have left another, e.g. Ray's)."""
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        steps = []
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("the call went on")
        assert steps == ["the call went on"]
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("not reached")
        assert steps == ["the call went on"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)


def test_a_studys_store_that_is_gone_stops_before_training(tmp_path, monkeypatch, capsys):
    from bmlr import train as train_cli

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    gone = tmp_path / "moved" / "mlflow.db"
    cfg_path = tmp_path / "best.yaml"
    from_dict({"output_dir": str(tmp_path / "runs"), "epochs": 1,
               "source": {"tracking_uri": f"sqlite:///{gone}", "run_id": "r1"}}).to_yaml(cfg_path)
    assert train_cli.main(["--config", str(cfg_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(gone) in err and "--no-mlflow" in err and "source" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.yaml"]  # no run folder, no database


# --------------------------------------------------------------------------------------------
def test_the_store_comes_from_the_flag_then_the_environment_then_the_source(monkeypatch):
    cfg = from_dict({"source": {"tracking_uri": "sqlite:////s/mlflow.db", "run_id": "r", "trial_id": 7}})
    assert cfg.source == {"tracking_uri": "sqlite:////s/mlflow.db", "run_id": "r", "trial_id": "7"}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_target(cfg).uri == "sqlite:////s/mlflow.db"
    assert resolve_target(from_dict({})) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_target(cfg).uri == "http://env:5000"
    assert resolve_target(cfg, "http://flag:5000").uri == "http://flag:5000"
    assert resolve_target(cfg, "http://flag:5000", no_mlflow=True) is None


@pytest.mark.parametrize("bad", [{"where": "x"}, "sqlite:////s/mlflow.db", {"run_id": ["a"]}, {"run_id": True}])
def test_a_bad_source_is_an_error_naming_it(bad):
    with pytest.raises(ConfigError, match="'source'"):
        from_dict({"source": bad})
