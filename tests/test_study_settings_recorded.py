"""What a study trains is what the user thinks it trains: the fixed keys that differ from the
data set's `configs/<dataset>.yaml` are printed and tagged, the shipped search spaces agree
with their configs (or say why not), and the torch thread count a trial ran with is recorded
with it and in the export (the numbers depend on it)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bmlr.config import from_dict, load_config
from bmlr.tuning.config_drift import config_drift, describe_drift
from bmlr.tuning.search_space import load_search_space

ROOT = Path(__file__).resolve().parents[1]


def _configs(tmp_path: Path, doc: dict) -> Path:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "synthetic.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


def test_drift_lists_the_fixed_keys_that_differ_and_only_those(tmp_path):
    root = _configs(tmp_path, {"dataset": "synthetic", "model_width": 8, "epochs": 30, "lr": 1e-3,
                               "data_root": "/elsewhere"})
    study = from_dict({"dataset": "synthetic", "model_width": 32, "epochs": 30, "lr": 5e-3, "data_root": "/data",
                       "cache_dir": "/c"})
    path, drift = config_drift(study, searched=["lr"], root=root)
    assert [(d.key, d.study, d.config) for d in drift] == [("model_width", 32, 8)]  # lr searched; places ignored
    assert describe_drift(path, drift) == "fixed keys that differ from configs/synthetic.yaml: model_width=32 (8 there)"
    assert describe_drift(*config_drift(from_dict({"dataset": "synthetic", "model_width": 8, "epochs": 30}),
                                        ["lr"], root)) == "every fixed key as in configs/synthetic.yaml"
    assert config_drift(from_dict({"dataset": "avmnist"}), [], root=root) == (None, [])  # no file: nothing


@pytest.mark.parametrize("dataset, expected", [("avmnist", []), ("synthetic", [])])
def test_shipped_search_spaces_agree_with_their_configs(dataset, expected):
    """Neither differs (synthetic's production epochs are 20 in both since data version v3)."""
    space = load_search_space(ROOT / "search_spaces" / f"{dataset}.yaml").for_method("bmlr")
    production = space.base_config({"dataset": dataset, "method": "bmlr", "threads": 1})
    _, drift = config_drift(production, space.params)
    assert [(d.key, d.study, d.config) for d in drift] == expected
    if expected:
        assert "configs/synthetic.yaml" in (ROOT / "search_spaces" / f"{dataset}.yaml").read_text()


def test_the_banner_and_the_parent_run_say_which_fixed_keys_differ(finished_study):
    from mlflow import MlflowClient

    line = next(line.strip() for line in finished_study["out"].splitlines() if "fixed keys that differ" in line)
    # the tiny test study's own model, against configs/synthetic.yaml
    assert "model_width=4 (8 there)" in line and "epochs=2 (20 there)" in line and "lr=" not in line
    parent = MlflowClient(finished_study["uri"]).get_run(finished_study["parent_run_id"])
    assert parent.data.tags["fixed_vs_config"] == line


def test_the_trial_thread_count_is_recorded_and_exported(finished_study):
    """`--cpus-per-trial 1` (the default): each trial ran with one torch thread; its MLflow
    params and best.yaml say so (not 0, "torch's default"), so the export trains alike."""
    from mlflow import MlflowClient

    client = MlflowClient(finished_study["uri"])
    runs = client.search_runs([finished_study["experiment_id"]],
                              filter_string=f"tags.`mlflow.parentRunId` = '{finished_study['parent_run_id']}'")
    assert runs and all(r.data.params["threads"] == "1" for r in runs)
    assert load_config(finished_study["dir"] / "best.yaml").threads == 1


@pytest.mark.slow
def test_an_export_as_trained_repeats_the_trial_exactly(finished_study, tmp_path):
    """`tune.py export --run-id X --as-trained`, trained with bmlr.train, gives the trial's own
    per-epoch validation history, number for number (CPU; the thread count is recorded)."""
    import json
    import os
    import subprocess
    import sys

    from mlflow import MlflowClient

    from bmlr.tuning import cli

    client = MlflowClient(finished_study["uri"])
    runs = client.search_runs([finished_study["experiment_id"]],
                              filter_string=f"tags.`mlflow.parentRunId` = '{finished_study['parent_run_id']}' "
                                            f"and tags.trial_status = 'completed'")
    trial = runs[0]
    out = tmp_path / "as_trained.yaml"
    assert cli.main(["export", "--run-id", trial.info.run_id, "-o", str(out), "--tracking-uri",
                     finished_study["uri"], "--as-trained"]) == 0
    cfg = load_config(out)
    assert cfg.seeds == [3] and cfg.threads == 1  # the study's --seed 3, one thread per trial
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "bmlr.train", "--config", str(out), "--no-progress", "--no-mlflow",
                           "--set", f"output_dir={tmp_path / 'runs'}"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "runs").glob("*/results.json")).read_text())
    produced = [h["val_acc"] for h in results["seeds"][0]["history"]]
    kept = json.loads((finished_study["dir"] / "trials" / f"trial_{trial.data.tags['trial_id']}" /
                       "history.json").read_text())
    assert produced[:len(kept)] == [h["val_acc"] for h in kept]  # exactly, not approximately
    assert cli.main(["export", "--run-id", trial.info.run_id, "-o", str(out), "--tracking-uri",
                     finished_study["uri"], "--as-trained", "--seeds", "0"]) == 2
