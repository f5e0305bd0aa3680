"""A study (`tune.py`) whose terminal is closed (a hang-up, SIGHUP) and which then gets a second
Ctrl-C (Ray Tune's first stop is graceful, the second raises out of the tuner at once): it
still writes its records (trials.csv, best.yaml, every MLflow run ended), says how to
continue, exits 130, and `--resume` finishes it. Plus the pieces that read a study's trials
without Ray and recognise a full disk.

Real Ray, a real MLflow SQLite store and a tiny generated synthetic data set; the driver runs
in its own session with a pseudo-terminal as its controlling terminal, and is stopped by its
process id (and its own process group) afterwards.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from bmlr.tuning import cli
from bmlr.tuning.results import folder_results, trial_rows
from bmlr.tuning.scores import ScoreRule
from bmlr.tuning.store import StudyStore
from bmlr.tuning.faults import no_space_left

from process_helpers import stop_process

ROOT = Path(__file__).resolve().parents[1]
os.environ.pop("MLFLOW_TRACKING_URI", None)  # the default store in --storage
TINY_FIXED = {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2, "batch_size": 16,
              "val_fraction": 0.3, "epochs": 3, "seeds": [0, 1]}
SPACE = {"search": {"beta": {"uniform": [0.1, 0.9]}, "lr": {"loguniform": [1.0e-3, 1.0e-2]}}, "fixed": TINY_FIXED}
SAMPLES = 3
# a controlling terminal for the driver: stdin is a pseudo-terminal's slave end, which the
# driver (a session leader) makes its controlling terminal before it becomes tune.py
WITH_TERMINAL = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                 "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def _env() -> dict:
    return dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny synthetic data set (6 classes, 12 train / 2 test clips each), a cache folder and a
    search space over it."""
    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("faults_hangup")
    data = generate(base / "data", seed=0, n_train_per_class=12, n_test_per_class=2, n_val_per_class=2,
                    image_size=32, n_frames=2)
    space = base / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return {"base": base, "data": data, "cache": base / "cache", "space": space}


def _all_runs(uri: str, experiment_id: str) -> list:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    return MlflowClient(tracking_uri=uri).search_runs([experiment_id], run_view_type=ViewType.ALL)


def _drain(terminal: int, seen: bytearray, timeout: float) -> None:
    """Read what the driver wrote to its terminal (a terminal nobody reads fills up and blocks it)."""
    if select.select([terminal], [], [], timeout)[0]:
        with contextlib.suppress(OSError):
            seen.extend(os.read(terminal, 65536))


@pytest.mark.slow
def test_a_hangup_then_a_second_ctrl_c_still_writes_the_records(tiny, tmp_path):
    """The driver's terminal (its stdin and stdout; stderr goes to a file) closes mid-study, and
    a second interrupt follows at once: the records are written though printing them fails."""
    storage = tmp_path / "runs"
    study_dir = storage / "synthetic" / "hup"
    # one trial at a time, none stopped early: the study cannot end before the signals
    argv = ["--data-root", str(tiny["data"]), "--search-space", str(tiny["space"]), "--storage", str(storage),
            "--set", f"cache_dir={tiny['cache']}", "--num-cpus", "2", "--report", "none", "--name", "hup",
            "--samples", str(SAMPLES), "--max-epochs", "3", "--grace-period", "3", "--concurrent", "1"]
    log = tmp_path / "driver.err"
    terminal, slave = pty.openpty()
    seen = bytearray()
    with log.open("w") as err:
        driver = subprocess.Popen([sys.executable, "-c", WITH_TERMINAL, str(ROOT / "tune.py"), *argv], env=_env(),
                                  stdin=slave, stdout=slave, stderr=err, start_new_session=True)
    os.close(slave)
    try:
        deadline = time.time() + 240
        while not list(study_dir.glob("trials/trial_*/history.json")):  # a trial has trained an epoch
            assert driver.poll() is None, seen.decode(errors="replace")[-2000:] + log.read_text()[-3000:]
            assert time.time() < deadline, "no epoch trained in time"
            _drain(terminal, seen, 0.1)
        os.close(terminal)  # the terminal closes: the kernel hangs the driver up (SIGHUP)
        terminal = None
        driver.send_signal(signal.SIGINT)  # and a second interrupt, before Ray Tune's graceful stop is done
        code = driver.wait(120)
    finally:
        if terminal is not None:
            os.close(terminal)
        stop_process(driver)
    text = log.read_text()
    assert code == cli.EXIT_INTERRUPTED, seen.decode(errors="replace")[-2000:] + text[-3000:]
    assert "Traceback" not in text, text[-3000:]

    store = StudyStore(study_dir)
    rows = store.read_rows()
    trained = {p.parent.name.removeprefix("trial_") for p in study_dir.glob("trials/trial_*/history.json")}
    assert trained and trained <= {r["trial_id"] for r in rows}, (rows, trained)
    assert any(r["status"] == "interrupted" for r in rows), rows
    assert store.best_path.is_file() == any(r.get("score") is not None for r in rows), rows
    info = json.loads(store.info_path.read_text())
    runs = _all_runs(info["tracking_uri"], info["experiment_id"])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], [(r.info.run_name, r.info.status)
                                                                            for r in runs]
    assert {r.info.run_id: r.info.status for r in runs}[info["parent_run_id"]] == "KILLED"

    assert cli.main(["--storage", str(storage), "--name", "hup", "--resume", "--num-cpus", "2", "-v", "0",
                     "--report", "none"]) == 0
    rows = store.read_rows()
    assert len(rows) == SAMPLES and all(r["status"] == "completed" for r in rows), rows
    runs = {r.info.run_id: r for r in _all_runs(info["tracking_uri"], info["experiment_id"])}
    assert runs[info["parent_run_id"]].info.status == "FINISHED"
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


# --- the pieces, without Ray -----------------------------------------------------------------------
def test_trials_are_read_from_ray_s_experiment_folder(tmp_path):
    """What a second Ctrl-C leaves (no result grid): each trial's params.json, result.json
    (its last line cut off by the kill) and error.txt; a trial the MLflow callback saw end."""
    ray_dir = tmp_path / "ray"

    def trial(trial_id: str, results: list[dict], cut: str = "", error: str | None = None) -> None:
        folder = ray_dir / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        (folder / "params.json").write_text(json.dumps({"beta": 0.5, "lr": 0.01}, indent=2))
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results) + cut)
        if error is not None:
            (folder / "error.txt").write_text(f"Traceback ...\n{error}\n")

    trial("aa", [{"epoch": 1, "score": 0.5}, {"epoch": 2, "score": 0.6}], cut='{"epoch": 3, "sco')
    trial("bb", [{"epoch": 1, "score": 0.4}], error="OSError: [Errno 28] No space left on device")
    trial("cc", [{"epoch": 1, "score": 0.3}, {"epoch": 2, "score": 0.7}])
    trial("dd", [])  # started, nothing reported yet

    def run(**tags: str):  # a trial's MLflow run as `tracking.child_runs` gives it
        return SimpleNamespace(data=SimpleNamespace(tags={"trial_status": "running", **tags}))

    runs = {"aa": run(), "bb": run(), "cc": run(trial_status="completed"), "dd": run()}  # the callback ended cc
    results = folder_results(ray_dir, runs)
    assert [Path(r.path).name for r in results] == ["trial_aa", "trial_bb", "trial_cc", "trial_dd"]
    assert [Path(r.path).name for r in folder_results(ray_dir, {"cc": runs["cc"]})] == ["trial_cc"]  # others lost
    assert results[0].metrics["epoch"] == 2 and results[0].config == {"beta": 0.5, "lr": 0.01}
    store = StudyStore(tmp_path)  # no history.json: the rows read Ray's result.json
    rows = {r["trial_id"]: r for r in trial_rows(results, 2, {}, store, ScoreRule("best"))}
    assert {k: r["status"] for k, r in rows.items()} == {"aa": "interrupted", "bb": "failed", "cc": "completed",
                                                          "dd": "interrupted"}
    assert rows["bb"]["error"] == "OSError: [Errno 28] No space left on device"
    assert rows["dd"]["epochs"] == 0 and rows["aa"]["param.lr"] == 0.01
    assert folder_results(tmp_path / "missing") == []


def test_a_full_disk_is_recognised_through_the_errors_that_carry_it():
    assert no_space_left(OSError(errno.ENOSPC, "No space left on device", "/x/trials.csv"))
    assert no_space_left(OSError(errno.EDQUOT, "Disk quota exceeded"))
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as err:
            raise RuntimeError("the store refused") from err
    except RuntimeError as err:
        assert no_space_left(err)
    # Ray Tune passes a callback's error on as the text of its traceback
    assert no_space_left(RuntimeError("Traceback ...\nOSError: [Errno 28] No space left on device"))
    assert not no_space_left(OSError(errno.EACCES, "Permission denied"))
    assert not no_space_left(ValueError("bad value"))
