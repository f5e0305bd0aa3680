"""Issue 30, item 6: the conventions Ray and MLflow users rely on. `RAY_ADDRESS` and
`MLFLOW_EXPERIMENT_NAME` are honoured as Ray and MLflow honour them, and an unknown `--set` key
suggests the closest one (the parent-run link's `workflowType`: tests/test_tuning.py).

In-process and without Ray: every command here stops in its checks or its plan.
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bmlr import train as train_cli
from bmlr.config import from_dict
from bmlr.production_tracking import resolve_target
from bmlr.tuning import cli
from bmlr.tuning.plan import StudySettings, plan_study

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_address_is_the_cluster_a_study_joins(tmp_path, monkeypatch, capsys):
    port = _closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    assert cli.main(["--samples", "1", "--storage", str(tmp_path / "runs"), "--connect-timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "no Ray cluster answers" in err  # not silently a local study
    assert not (tmp_path / "runs").exists()


def test_mlflow_experiment_name_names_the_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-the-environment")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plan = plan_study(StudySettings(search_space=str(ROOT / "search_spaces" / "synthetic.yaml"),
                                    storage=str(tmp_path / "runs"), name="env"), lock=False)
    assert plan.settings.experiment == "from-the-environment"
    plan = plan_study(StudySettings(search_space=str(ROOT / "search_spaces" / "synthetic.yaml"),
                                    storage=str(tmp_path / "runs"), name="flag", experiment="mine"), lock=False)
    assert plan.settings.experiment == "mine"  # the flag wins
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert resolve_target(from_dict({})).experiment == "from-the-environment"
    assert resolve_target(from_dict({}), experiment="mine").experiment == "mine"


@pytest.mark.parametrize("command", ["tune", "train"])
def test_an_unknown_set_key_suggests_the_closest(tmp_path, capsys, command):
    if command == "tune":
        assert cli.main(["--set", "epoch=3", "--storage", str(tmp_path / "runs")]) == 2
    else:
        assert train_cli.main(["--set", "epoch=3", "--set", f"output_dir={tmp_path / 'out'}", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "'epoch'" in err and "did you mean 'epochs'" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()



def test_the_train_hint_names_the_installed_command(monkeypatch):
    """The summary's "train it:" line: `bmlr-train` where the package is installed (as the
    docs say), `python -m bmlr.train` in a checkout without it."""
    import shutil

    from bmlr.tuning.export import train_command

    monkeypatch.setattr(shutil, "which", lambda name: f"/venv/bin/{name}")
    assert train_command("/a b/best.yaml") == "bmlr-train --config '/a b/best.yaml'"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert train_command("best.yaml") == "python -m bmlr.train --config best.yaml"
