"""An interrupted first use of a new MLflow store: creating MLflow's SQLite schema takes
seconds, and a Ctrl-C, SIGTERM or kill -9 in that window must leave no database or a complete
one, never a half-migrated one (`bmlr.mlflow_store.ensure_store` builds it in a temporary
file and moves it into place). A half-migrated database made elsewhere (by MLflow itself, or
an older bmlr) is refused with one line naming the file and the fix (exit 2), not a traceback.

Real MLflow, real processes, no mocks. The interrupted creators are started first, all at once
(their imports take most of their time), and each is told when to start creating the store;
the signal lands at a point of the creation's progress (the size of the database being built),
so the whole window is covered however fast or loaded the machine is.
"""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bmlr import train as train_cli
from bmlr.mlflow_store import TrackingError, check_intact, client_for, get_or_create_experiment
from bmlr.tuning import cli

from process_helpers import stop_process

ROOT = Path(__file__).resolve().parents[1]

# a process that creates a store when told: "ready" once its imports are done, then one line
# on stdin starts it; "done <seconds>" at the end. argv: the URI, and "old" for the code path
# before the fix (MlflowClient straight on the final file, as MLflow or `mlflow ui` would)
CREATOR = r"""
import sys, time
from mlflow import MlflowClient
import mlflow.store.tracking.sqlalchemy_store
from bmlr.mlflow_store import get_or_create_experiment
print("ready", flush=True)
sys.stdin.readline()
t = time.perf_counter()
if sys.argv[2:] == ["old"]:
    MlflowClient(sys.argv[1]).search_experiments()
else:
    get_or_create_experiment(sys.argv[1], "e")
print(f"done {time.perf_counter() - t:.3f}", flush=True)
"""


def _env() -> dict:
    return dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _creator(uri: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CREATOR, uri, *extra], env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)


def _go(proc: subprocess.Popen, ready: bool = False) -> None:
    """Start the creation (once the process said "ready": read here unless ``ready``)."""
    assert ready or proc.stdout.readline().strip() == "ready"
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".mlflow.db.tmp-*"))


def _assert_usable(uri: str) -> None:
    """The store opens, an experiment is created or found, and a run is written and read back."""
    experiment_id = get_or_create_experiment(uri, "e")
    client = client_for(uri)
    run = client.create_run(experiment_id, run_name="after")
    client.log_metric(run.info.run_id, "m", 1.5)
    client.set_terminated(run.info.run_id)
    back = client.get_run(run.info.run_id)
    assert back.data.metrics == {"m": 1.5} and back.info.status == "FINISHED"
    assert back.info.experiment_id == get_or_create_experiment(uri, "e")
    default = client.get_experiment("0")  # the Default experiment's artifacts: beside the database too
    assert default.artifact_location == (Path(uri[len("sqlite:///"):]).parent / "mlartifacts" / "0").as_uri()


def _tmp_size(folder: Path) -> int:
    """The size of the store being built (its temporary file), -1 before it exists."""
    sizes = [-1]
    for path in folder.glob(".mlflow.db.tmp-*"):
        if not path.name.endswith("-journal"):
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:  # moved into place meanwhile
                pass
    return max(sizes)


def _wait_until(proc: subprocess.Popen, done) -> bool:
    """Poll ``done()`` until true (True) or the process ended (False)."""
    deadline = time.time() + 60
    while not done():
        if proc.poll() is not None:
            return False
        assert time.time() < deadline, "the creation made no progress in 60 s"
        time.sleep(0.005)
    return True


# each signal at points spread over the creation: its progress (the temporary database's size, as
# a fraction of a whole store's), and once the store is in place (its experiment being created)
KILLS = [(0.0, signal.SIGINT), (0.3, signal.SIGKILL), (0.6, signal.SIGTERM), (0.9, signal.SIGINT),
         (0.99, signal.SIGKILL), ("in place", signal.SIGTERM)]


def test_interrupted_first_use_leaves_no_store_or_a_whole_one(tmp_path):
    """A fresh store's creation interrupted all over its window by SIGINT, SIGTERM and SIGKILL:
    afterwards there is no database or a complete one, the store works (an experiment, a run
    written and read back) and a killed creator's temporary file is gone."""
    procs = [_creator(_uri(tmp_path / f"s{i}")) for i in range(len(KILLS))]
    whole, hits, seen_leftover = None, [], False
    try:
        for proc in procs:  # all imported (in parallel) before any is started
            assert proc.stdout.readline().strip() == "ready"
        for i, (point, sig) in enumerate(KILLS):
            proc, folder = procs[i], tmp_path / f"s{i}"
            start = time.perf_counter()
            _go(proc, ready=True)
            if point == "in place":
                hit = _wait_until(proc, (folder / "mlflow.db").exists)
            else:
                hit = _wait_until(proc, lambda: _tmp_size(folder) >= point * (whole or 0))
            proc.send_signal(sig)
            proc.wait(30)
            hits.append(f"{point} {sig.name} at {time.perf_counter() - start:.2f} s" + ("" if hit else " (too late)"))
            if sig == signal.SIGINT:  # Ctrl-C: the creator removes its temporary file itself
                assert _leftovers(folder) == [], hits[-1]
            seen_leftover |= bool(_leftovers(folder))
            assert not (folder / "mlflow.db").exists() or check_intact(_uri(folder)) is None  # never half-migrated
            get_or_create_experiment(_uri(folder), "e")
            whole = whole or (folder / "mlflow.db").stat().st_size  # a whole store's size, for the next points
            _assert_usable(_uri(folder))
            assert _leftovers(folder) == [], f"{point} {sig!r}: the next creator removes the killed one's file"
    finally:
        for proc in procs:
            stop_process(proc, timeout=5)
    print("interrupted:", "; ".join(hits))
    assert sum("too late" not in hit for hit in hits) >= len(KILLS) - 1, hits
    assert seen_leftover  # a killed creator left its temporary file (and nothing else)


def _complete_store(folder: Path) -> Path:
    """A complete store with experiment "e" (made once, copied)."""
    get_or_create_experiment(_uri(folder), "e")
    return folder / "mlflow.db"


def _variant(src: Path, folder: Path, *sql: str) -> str:
    folder.mkdir()
    shutil.copy(src, folder / "mlflow.db")
    with sqlite3.connect(folder / "mlflow.db") as conn:
        for statement in sql:
            conn.execute(statement)
    conn.close()
    return _uri(folder)


def test_incomplete_store_is_refused_with_the_file_and_the_fix(tmp_path):
    """The states an interrupted creation (or schema migration) leaves, made by hand from a
    complete store: refused before MLflow opens them, the message naming the file and the fix
    (delete it where it holds no runs; never where it holds runs). An older schema of a store
    that was used is MLflow's to upgrade, not refused; a missing store is not created."""
    src = _complete_store(tmp_path / "whole")
    client = client_for(_uri(tmp_path / "whole"))
    old = "39d1c3be5f05"  # a revision an interrupted creation can stop at
    no_experiments = ("DELETE FROM experiment_tags", "DELETE FROM experiments")
    cases = {
        "tmp_table": (_variant(src, tmp_path / "a", "CREATE TABLE _alembic_tmp_experiments (x INTEGER)",
                               *no_experiments), "table _alembic_tmp_experiments is left"),
        "no_version": (_variant(src, tmp_path / "b", "DROP TABLE alembic_version", *no_experiments),
                       "no alembic_version table"),
        "stopped": (_variant(src, tmp_path / "c", f"UPDATE alembic_version SET version_num = '{old}'",
                             *no_experiments), f"stopped at revision {old}"),
    }
    _leave_hot_journal(Path(cases["tmp_table"][0][len("sqlite:///"):]))
    for name, (uri, reason) in cases.items():
        path = uri[len("sqlite:///"):]
        with pytest.raises(TrackingError) as err:
            check_intact(uri)
        text = str(err.value)
        assert text.startswith(f"MLflow store {path} is incomplete (its creation was interrupted") and reason in text
        assert text.endswith("it holds no runs: delete it and run again"), name
        with pytest.raises(TrackingError, match="is incomplete"):
            get_or_create_experiment(uri, "e")  # every opener refuses it
    run = client.create_run(get_or_create_experiment(_uri(tmp_path / "whole"), "e"))
    with_runs = _variant(src, tmp_path / "d", "CREATE TABLE _alembic_tmp_runs (x INTEGER)")
    with pytest.raises(TrackingError, match=r"a schema migration was interrupted.*holds 1 run\(s\), so do not "
                                            r"delete it: restore it from a backup"):
        check_intact(with_runs)
    assert client.get_run(run.info.run_id)  # the original is untouched
    older = _variant(src, tmp_path / "e", f"UPDATE alembic_version SET version_num = '{old}'")
    assert check_intact(older) is None  # a used store at an older schema: not ours to refuse
    missing = tmp_path / "none" / "mlflow.db"
    assert check_intact(f"sqlite:///{missing}") is None and not missing.parent.exists()


def _leave_hot_journal(db: Path) -> None:
    """A writer killed inside a transaction that already wrote to the file: a hot journal, which a
    read-only connection cannot roll back (SQLITE_READONLY_ROLLBACK)."""
    writer = ("import os, sqlite3, sys\n"
              "conn = sqlite3.connect(sys.argv[1]); conn.execute('PRAGMA cache_size = 1'); conn.execute('BEGIN')\n"
              "conn.execute('CREATE TABLE spill (x TEXT)')\n"
              "conn.executemany('INSERT INTO spill VALUES (?)', [('x' * 200,)] * 5000)\n"
              "os._exit(0)")
    subprocess.run([sys.executable, "-c", writer, str(db)], check=True, timeout=60)
    assert db.with_name(db.name + "-journal").stat().st_size > 0
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT * FROM sqlite_master").fetchall()


def _half_migrated_by_mlflow(folder: Path) -> Path:
    """A store MLflow itself left half-migrated: its creation (straight on the final file, the
    code path before the fix) killed once the database holds some tables."""
    db = folder / "mlflow.db"
    for attempt in range(3):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        proc = _creator(_uri(folder), "old")
        try:
            _go(proc)
            deadline = time.time() + 60
            while not (db.is_file() and db.stat().st_size > 64 * 1024) and proc.poll() is None:
                assert time.time() < deadline
                time.sleep(0.01)
            proc.kill()
        finally:
            stop_process(proc, timeout=5)
        try:
            check_intact(_uri(folder))
        except TrackingError:
            return db
    pytest.fail("the old creation path did not leave a half-migrated store in 3 tries")


def test_half_migrated_store_exits_2_with_one_line_for_both_clis(tmp_path, capsys):
    """`tune.py` and `bmlr.train` on a store MLflow left half-migrated (a real one): exit 2 and
    one line naming the file and the fix, no traceback; nothing trained, nothing created."""
    storage = tmp_path / "runs"
    db = _half_migrated_by_mlflow(storage)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"search": {"beta": {"uniform": [0.1, 0.9]}},
                                     "fixed": {"model_width": 4, "epochs": 1}}))
    (tmp_path / "data").mkdir()
    argv = ["--data-root", str(tmp_path / "data"), "--search-space", str(space), "--storage", str(storage),
            "--samples", "1", "--max-epochs", "1", "--report", "none", "-v", "0"]
    assert cli.main(argv) == cli.EXIT_ERROR
    train_argv = ["--tracking-uri", _uri(storage), "--set", f"output_dir={tmp_path / 'train'}", "--no-progress"]
    assert train_cli.main(train_argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err, err
    for line in lines:
        assert line.startswith(f"error: MLflow store {db} is incomplete (its creation was interrupted"), line
        assert "it holds no runs: delete it" in line and line.endswith("and run again"), line
    assert not (storage / "synthetic").exists() and not (tmp_path / "train").exists()
    db.unlink()  # the fix the message gives works
    _assert_usable(_uri(storage))


@pytest.mark.slow
def test_study_runs_on_a_storage_whose_first_use_was_killed(tmp_path):
    """A real tiny study (`python tune.py`) on a storage whose store creation was SIGKILLed
    half-way (its temporary file left behind): the study creates the store and finishes."""
    from bmlr.data.synthetic import generate

    storage = tmp_path / "runs"
    proc = _creator(_uri(storage))
    try:
        _go(proc)
        deadline = time.time() + 60
        while not _leftovers(storage) and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.01)
        time.sleep(0.3)
        proc.kill()
    finally:
        stop_process(proc, timeout=5)
    assert not (storage / "mlflow.db").exists() and _leftovers(storage)
    data = generate(tmp_path / "data", seed=0, n_train_per_class=4, n_test_per_class=1, n_val_per_class=2,
                    image_size=32, n_frames=2)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"search": {"beta": {"uniform": [0.1, 0.9]}},
                                     "fixed": {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2,
                                               "batch_size": 16, "val_fraction": 0.3, "epochs": 1, "seeds": [0]}}))
    env = _env()
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([sys.executable, str(ROOT / "tune.py"), "--data-root", str(data), "--search-space",
                          str(space), "--storage", str(storage), "--set", f"cache_dir={tmp_path / 'cache'}",
                          "--num-cpus", "2", "-v", "0", "--samples", "1", "--max-epochs", "1", "--report", "none",
                          "--no-references", "--name", "after-kill"],
                         env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert _leftovers(storage) == []
    client = client_for(_uri(storage))
    experiment = client.get_experiment_by_name("bmlr-tune-synthetic")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.data.tags.get("study") for r in runs} >= {"after-kill"}  # parent + 1 trial
