"""Shared fixtures. Tests run on 2 CPU cores: tiny models, tiny data, few epochs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data of ../shared/data (FSDD + MNIST); skips where it is absent."""
    if not (SHARED_DATA / "fsdd" / "recordings").is_dir() or not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (fsdd/recordings and mnist/); "
                    "it is provided beside the project checkout as ../shared/data")
    return SHARED_DATA


# a finished tiny study, shared by the tests of what a user does after tuning (the MLflow UI,
# Optuna's figures on the parent run, `bmlr.train --from-run`): 6 trials of 2 epochs on a tiny
# generated synthetic data set, run as a user runs it (`python tune.py ...` in a subprocess)
TINY_STUDY_FIXED = {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2, "batch_size": 16,
                    "val_fraction": 0.3, "epochs": 2, "seeds": [0, 1]}
# with defaults, as the shipped spaces: the study's first trial is the untuned configuration
TINY_STUDY_SPACE = {"search": {"beta": {"uniform": [0.1, 0.9], "default": 0.5},
                               "alpha": {"loguniform": [0.5, 2.0], "default": 1.0},
                               "lr": {"loguniform": [1.0e-3, 1.0e-2], "default": 3.0e-3},
                               "fusion": {"choice": ["concat", "sum"], "default": "concat"}},
                    "fixed": TINY_STUDY_FIXED}


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory) -> dict:
    """``{"storage", "dir", "uri", "experiment_id", "parent_run_id", "out", "data", "cache"}`` of
    a finished study named ``tiny`` (6 trials, at most 2 epochs, ASHA grace 1 stops some after 1, the full
    report, the references of bmlr.tuning.references)."""
    import json
    import subprocess
    import sys

    import yaml

    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("finished-study")
    data = generate(base / "data", seed=0, n_train_per_class=12,
        n_test_per_class=2, n_val_per_class=2, image_size=32, n_frames=2)
    space = base / "space.yaml"
    space.write_text(yaml.safe_dump(TINY_STUDY_SPACE, sort_keys=False))
    storage = base / "runs"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, str(PROJECT_ROOT / "tune.py"), "--data-root", str(data), "--search-space", str(space),
           "--storage", str(storage), "--set", f"cache_dir={base / 'cache'}", "--num-cpus", "2", "-v", "0",
           "--samples", "6", "--max-epochs", "2", "--grace-period", "1", "--name", "tiny", "--seed", "3",
           "--references"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=base)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study_dir = storage / "synthetic" / "tiny"
    info = json.loads((study_dir / "study.json").read_text())
    return {"storage": storage, "dir": study_dir, "uri": f"sqlite:///{storage.resolve()}/mlflow.db",
            "experiment_id": info["experiment_id"], "parent_run_id": info["parent_run_id"],
            "out": out.stdout, "data": data, "cache": base / "cache", "space": space}


@pytest.fixture(scope="session")
def confirmed_study(finished_study, tmp_path_factory) -> dict:
    """A finished tiny study with a score rule, Hyperband with the default (measured) grace period
    and a confirmation (``--score last-2 --scheduler hyperband --confirm 2 --confirm-seeds 2``, 4
    trials of 2 epochs, the fast report), run as a user runs it:
    ``{"dir", "out", "uri"}`` and its ``study.json``."""
    import json
    import subprocess
    import sys

    storage = tmp_path_factory.mktemp("confirmed") / "runs"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, str(PROJECT_ROOT / "tune.py"), "--data-root", str(finished_study["data"]),
           "--search-space", str(finished_study["space"]), "--storage", str(storage), "--set",
           f"cache_dir={finished_study['cache']}", "--num-cpus", "2", "-v", "0", "--samples", "4", "--max-epochs",
           "2", "--name", "conf", "--seed", "3", "--report", "fast", "--score", "last-2", "--confirm", "2",
           "--confirm-seeds", "2", "--scheduler", "hyperband"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study_dir = storage / "synthetic" / "conf"
    info = json.loads((study_dir / "study.json").read_text())
    return {"dir": study_dir, "out": out.stdout, "uri": f"sqlite:///{storage.resolve()}/mlflow.db", **info}
