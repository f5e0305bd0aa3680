"""Studies that cannot be corrupted (issue 12): one driver per study, the MLflow store created
once, full trial histories after a resume, current records after a resume, and a soak test
(a study whose driver is killed with SIGKILL three times).

Real Ray, a real MLflow SQLite store and a tiny generated synthetic data set; every process a
test starts is stopped by its process id (or its own process group) afterwards.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bmlr.tuning import cli
from bmlr.tuning.results import best_epoch
from bmlr.tuning.selection import SCORE, choose_best
from bmlr.tuning.store import LOCK_FILE, StudyBusy, StudyStore

ROOT = Path(__file__).resolve().parents[1]
os.environ.pop("MLFLOW_TRACKING_URI", None)  # these tests use the default store in --storage
TINY_FIXED = {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2, "batch_size": 16,
              "val_fraction": 0.3, "epochs": 2, "seeds": [0, 1]}
SPACE = {"search": {"beta": {"uniform": [0.1, 0.9]}, "alpha": {"loguniform": [0.5, 2.0]},
                    "lr": {"loguniform": [1.0e-3, 1.0e-2]}},
         "fixed": TINY_FIXED}
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def _env() -> dict:
    return dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny synthetic data set (6 classes, 12 train / 2 test clips each), its cache folder
    and a search space over it."""
    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("faults")
    data = generate(base / "data", seed=0, n_train_per_class=12,
        n_test_per_class=2, n_val_per_class=2, image_size=32, n_frames=2)
    space = base / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return {"base": base, "data": data, "cache": base / "cache", "space": space}


def _argv(tiny, storage: Path, name: str, *extra: str) -> list[str]:
    return ["--data-root", str(tiny["data"]), "--search-space", str(tiny["space"]), "--storage", str(storage),
            "--set", f"cache_dir={tiny['cache']}", "--num-cpus", "2", "-v", "0", "--report", "none",
            "--name", name, *extra]


def _resume_argv(storage: Path, name: str) -> list[str]:
    return ["--storage", str(storage), "--name", name, "--resume", "--num-cpus", "2", "-v", "0", "--report", "none"]


def _driver(argv: list[str], log: Path) -> subprocess.Popen:
    """tune.py in its own session (so that whatever it leaves behind can be found and stopped)."""
    return subprocess.Popen([sys.executable, str(ROOT / "tune.py"), *argv], env=_env(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a driver we started, and its own process group (Ray processes it started)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(10)


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _uri(storage: Path) -> str:
    return f"sqlite:///{storage.resolve()}/mlflow.db"


def _children(uri: str, study_dir: Path) -> list:
    info = json.loads((study_dir / "study.json").read_text())
    return _client(uri).search_runs([info["experiment_id"]],
                                    filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")


def _val_acc(client, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_acc"))


def _check_records(uri: str, study_dir: Path, samples: int) -> None:
    """The study's records agree: one row and one nested run per trial, all ended; each trial's
    history (trials.csv, the report) equals its MLflow history, no step logged twice; best.yaml
    names the true best of those histories."""
    store = StudyStore(study_dir)
    rows = store.read_rows()
    assert len(rows) == samples and len({r["trial_id"] for r in rows}) == samples, rows
    assert all(r["status"] in ("completed", "stopped_early", "failed") for r in rows), rows
    client = _client(uri)
    runs = _children(uri, study_dir)
    by_trial = {r.data.tags["trial_id"]: r for r in runs}
    assert len(runs) == samples and set(by_trial) == {r["trial_id"] for r in rows}
    recomputed = []
    for row in rows:
        run = by_trial[row["trial_id"]]
        assert run.info.status in TERMINAL and run.info.status != "KILLED", (row, run.info.status)
        history = store.history(row["trial_id"])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert len(steps) == len(set(steps)), f"trial {row['trial_id']}: a step logged twice: {sorted(steps)}"
        assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
        assert _val_acc(client, run.info.run_id) == [(h["epoch"], h["val_acc"]) for h in history], row["trial_id"]
        assert row["epochs"] == (history[-1]["epoch"] if history else 0)
        assert run.data.tags["epochs_trained"] == str(row["epochs"])
        expected = best_epoch(history)
        if expected:
            assert row["best_epoch"] == expected["best_epoch"] and row[SCORE] == pytest.approx(expected[SCORE])
        recomputed.append({**row, **expected})
    best = choose_best(recomputed)
    header = store.best_path.read_text().splitlines()[:3]
    assert any(f"trial {best['trial_id']}," in line for line in header), (best["trial_id"], header)
    parent = client.get_run(json.loads(store.info_path.read_text())["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial_id"] == best["trial_id"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped_early", "failed", "interrupted")}
    for status, n in counts.items():
        assert parent.data.tags.get(f"trials.{status}", "0") == str(n), (status, parent.data.tags)


# ---------------------------------------------------------------------------------------------
# items 1, 2: one driver per study
HOLD = """
import sys, time
from bmlr.tuning.store import StudyStore
lock = StudyStore(sys.argv[1]).lock()
print("locked", flush=True)
time.sleep(120)
"""


def test_study_lock_names_its_holder_and_dies_with_it(tmp_path):
    folder = tmp_path / "runs" / "synthetic" / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=_env(), stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StudyBusy) as err:
            StudyStore(folder).lock()
        message = str(err.value)
        assert f"study {folder} is being run by PID {holder.pid} on {socket.gethostname()} since " in message
        holder.send_signal(signal.SIGKILL)  # a driver killed outright: the kernel drops its lock
        holder.wait(10)
        with StudyStore(folder).lock() as lock:
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with StudyStore(tmp_path / "new" / "synthetic" / "never").lock():
            pass
        assert not (tmp_path / "new").exists()  # a study that never started leaves no folder
    finally:
        _stop(holder)


CREATE = """
import sys
from bmlr.tuning import tracking
print(tracking.get_or_create_experiment(sys.argv[1], "bmlr-tune-synthetic"), flush=True)
"""


def test_a_fresh_mlflow_store_opened_by_several_drivers_at_once(tmp_path):
    """Item 4: drivers starting together on a fresh storage do not race on creating the
    SQLite database (alembic's "Online migration expected to match one row")."""
    uri = _uri(tmp_path / "runs")
    procs = [subprocess.Popen([sys.executable, "-c", CREATE, uri], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1


@pytest.mark.slow
def test_one_driver_per_study_and_two_names_on_a_fresh_storage(tiny, tmp_path):
    """Two drivers on one name started together: one runs, the other exits 2 naming the first's
    PID and host; `--resume` while it runs exits 2 too; a third driver on another name, started
    at the same moment on the same fresh storage, finishes."""
    storage = tmp_path / "runs"
    study_dir = storage / "synthetic" / "twin"
    extra = ("--samples", "2", "--max-epochs", "3", "--grace-period", "3")
    twins = [_driver(_argv(tiny, storage, "twin", *extra), tmp_path / f"twin{i}.log") for i in range(2)]
    other = _driver(_argv(tiny, storage, "other", *extra), tmp_path / "other.log")
    procs = [*twins, other]
    try:
        deadline = time.time() + 240
        while not (study_dir / "study.json").is_file() or all(p.poll() is None for p in twins):
            assert time.time() < deadline, "no driver created the study"
            time.sleep(0.2)
        running = [p for p in twins if p.poll() is None]
        assert len(running) == 1, [p.poll() for p in twins]  # the other exits at once
        # the study exists and its driver is still preparing or training: --resume must refuse
        resume = subprocess.run([sys.executable, str(ROOT / "tune.py"), *_resume_argv(storage, "twin")],
                                env=_env(), capture_output=True, text=True, timeout=120)
        assert resume.returncode == cli.EXIT_ERROR, resume.stderr[-2000:]
        assert f"is being run by PID {running[0].pid} on {socket.gethostname()}" in resume.stderr
        codes = [p.wait(300) for p in procs]
    finally:
        for p in procs:
            _stop(p)
    logs = [(tmp_path / name).read_text() for name in ("twin0.log", "twin1.log", "other.log")]
    assert sorted(codes[:2]) == [0, cli.EXIT_ERROR], logs
    winner = twins[codes.index(0)]
    loser_log = logs[codes.index(cli.EXIT_ERROR)]
    assert f"study {study_dir} is being run by PID {winner.pid} on {socket.gethostname()} since" in loser_log
    assert codes[2] == 0, logs[2][-3000:]
    uri = _uri(storage)
    _check_records(uri, study_dir, 2)
    _check_records(uri, storage / "synthetic" / "other", 2)
    info = json.loads((study_dir / "study.json").read_text())
    parents = _client(uri).search_runs([info["experiment_id"]], filter_string="tags.study = 'twin' and tags.`bmlr.role` = 'study'")
    assert len(parents) == 1 and parents[0].info.run_id == info["parent_run_id"]


# ---------------------------------------------------------------------------------------------
# items 3, 8: a resumed trial keeps its epochs; the records after a resume are current
def _wait_mid_trial(uri: str, study_dir: Path, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Until a trial's run has logged epoch 2 or 3 and is still running."""
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no trial reached epoch 2 in time"
        if (study_dir / "study.json").is_file():
            client = _client(uri)
            for run in _children(uri, study_dir):
                steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
                if run.info.status == "RUNNING" and steps and 2 <= max(steps) <= 3:
                    return
        time.sleep(0.2)


@pytest.mark.slow
def test_a_resumed_trial_keeps_its_epochs_and_a_finished_study_stays_finished(tiny, tmp_path, capsys):
    storage = tmp_path / "runs"
    study_dir = storage / "synthetic" / "resumed"
    uri = _uri(storage)
    log = tmp_path / "driver.log"
    driver = _driver(_argv(tiny, storage, "resumed", "--samples", "2", "--max-epochs", "5", "--grace-period", "5",
                           "--concurrent", "1"), log)
    try:
        _wait_mid_trial(uri, study_dir, driver, log)
        driver.send_signal(signal.SIGINT)  # Ctrl-C mid-trial
        assert driver.wait(120) == cli.EXIT_INTERRUPTED, log.read_text()[-3000:]
    finally:
        _stop(driver)
    cut = [r for r in StudyStore(study_dir).read_rows() if r["status"] == "interrupted" and r["epochs"] >= 1]
    assert cut, StudyStore(study_dir).read_rows()

    assert cli.main(_resume_argv(storage, "resumed")) == 0
    _check_records(uri, study_dir, 2)
    store = StudyStore(study_dir)
    for row in cut:  # the interrupted trial: every epoch, those before the Ctrl-C included
        assert [h["epoch"] for h in store.history(row["trial_id"])] == [1, 2, 3, 4, 5]
    client = _client(uri)
    info = json.loads(store.info_path.read_text())
    parent = client.get_run(info["parent_run_id"])
    assert parent.data.tags["trials.interrupted"] == "0" and parent.data.tags["trials.completed"] == "2"
    rows_before = store.trials_path.read_text()
    assert "best_val_acc" not in parent.data.metrics  # the parent never sorts among its trials
    capsys.readouterr()

    assert cli.main(_resume_argv(storage, "resumed")) == 0  # a finished study: nothing to resume
    assert f"study {study_dir} is finished (2 trials); nothing to resume" in capsys.readouterr().out
    after = client.get_run(info["parent_run_id"])
    assert (after.info.status, after.info.end_time) == (parent.info.status, parent.info.end_time)
    assert after.data.tags.get("resumed") == parent.data.tags.get("resumed")
    assert after.data.tags["best_score"] == parent.data.tags["best_score"] and "best_val_acc" not in after.data.metrics
    assert store.trials_path.read_text() == rows_before


# ---------------------------------------------------------------------------------------------
# the soak test: SIGKILL of the driver three times, resumed each time
def _own_processes(session: int) -> list[str]:
    """The processes still in the process group of a driver we started (its own session)."""
    out = subprocess.run(["ps", "-eo", "pgid=,args="], capture_output=True, text=True).stdout
    return [args[:60] for pgid, _, args in (line.strip().partition(" ") for line in out.splitlines())
            if pgid == str(session)]


def _epochs_logged(uri: str, study_dir: Path) -> int:
    """How many epochs the study's trials have logged to MLflow so far."""
    if not (study_dir / "study.json").is_file():
        return 0
    client = _client(uri)
    return sum(len(client.get_metric_history(r.info.run_id, "val_acc")) for r in _children(uri, study_dir))


@pytest.mark.slow
def test_soak_driver_killed_three_times(tiny, tmp_path):
    """A study of 8 trials whose driver is killed with SIGKILL (as `kill -9 <pid>`: the driver
    alone) at seeded random moments three times, resumed each time at once, then finished.

    A killed local driver takes its Ray cluster with it (gcs, raylet and the trial workers end
    with it); Ray's DashboardAgent and RuntimeEnvAgent may linger for a while. The resume does
    not need them gone (each resume starts its own local Ray); the test stops them at its end,
    by each killed driver's own process group."""
    storage = tmp_path / "runs"
    study_dir = storage / "synthetic" / "soak"
    uri = _uri(storage)
    rng = random.Random(int(os.environ.get("BMLR_SOAK_SEED", "12")))  # another seed: other kill moments
    # 8 trials, so that work remains for the third kill: one attempt logs 3 to 8 epochs before its
    # kill here, and a 6-trial study (about 14 epochs) could end before it on a faster machine
    argv = _argv(tiny, storage, "soak", "--samples", "8", "--max-epochs", "3", "--concurrent", "2")
    drivers, lingering, exits = [], [], []
    try:
        for attempt in range(4):
            log = tmp_path / f"driver{attempt}.log"
            driver = _driver(argv if attempt == 0 else _resume_argv(storage, "soak"), log)
            drivers.append(driver)
            if attempt == 3:
                assert driver.wait(600) == 0, log.read_text()[-3000:]
                break
            started, before = time.time(), _epochs_logged(uri, study_dir)
            while _epochs_logged(uri, study_dir) <= before and driver.poll() is None:
                assert time.time() - started < 240, log.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(rng.uniform(0.0, 1.0))  # trials training: kill mid-epoch, mid-report or mid-save
            if driver.poll() is None:
                driver.send_signal(signal.SIGKILL)
            exits.append((driver.wait(30), log))
            time.sleep(1.0)
            lingering.append(_own_processes(driver.pid))
    finally:
        for driver in drivers:
            _stop(driver)
    ended = [(code, log.read_text()[-2000:]) for code, log in exits if code != -signal.SIGKILL]
    assert not ended, ended  # each kill hit a running study (not one that had ended or failed)
    _check_records(uri, study_dir, 8)
    assert not (study_dir / LOCK_FILE).read_text()  # no holder recorded once the driver ended
    restored = [t.name for t in (study_dir / "ray").glob("trial_*")
                if json.loads((t / "result.json").read_text().splitlines()[0])["epoch"] > 1]
    print(f"processes of each killed driver 1 s after the kill: {lingering}; trials continued from a "
          f"saved epoch: {restored}")
