"""Production training (`python -m bmlr.train`) under faults: a disk that fills up, a closed
terminal (SIGHUP), a process killed outright (kill -9). Real processes, a real MLflow SQLite
store (one for the module, an experiment per test), tiny synthetic data."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bmlr.fileio import TMP_MARK
from bmlr.production_tracking import process_gone, process_tags
from bmlr.train import sigterm_as_ctrl_c
from process_helpers import stop_process

ROOT = Path(__file__).resolve().parents[1]
TINY = {"image_size": 32, "frames": 2, "model_width": 4, "model_depth": 1, "batch_size": 16, "val_fraction": 0.3}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("faults")
    data = generate(base / "data", seed=0, n_train_per_class=12, n_test_per_class=2, n_val_per_class=2,
                    image_size=32, n_frames=2)
    return {"data": data, "cache": base / "cache", "uri": f"sqlite:///{base / 'store' / 'mlflow.db'}"}


def _env() -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _args(setup: dict, experiment: str, out: Path, **settings) -> list[str]:
    values = {**TINY, "data_root": setup["data"], "cache_dir": setup["cache"], "output_dir": out, **settings}
    return [sys.executable, "-m", "bmlr.train", "--no-progress", "--tracking-uri", setup["uri"],
            "--experiment", experiment] + [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=_env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_epoch(proc: subprocess.Popen, epoch: int) -> None:
    for line in proc.stdout:
        if f"epoch {epoch:3d}/" in line:
            return
    raise AssertionError(f"exited {proc.wait()} before epoch {epoch}: {proc.stderr.read()[-2000:]}")


def _runs(setup: dict, experiment: str, kind: str) -> list:
    client = MlflowClient(setup["uri"])
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.run_kind = '{kind}'")


# --------------------------------------------------------------------------------------------
def test_a_full_disk_stops_with_one_error_line_and_leaves_no_half_file(setup, tmp_path):
    import torch

    out = tmp_path / "small"
    out.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(out)], capture_output=True, text=True)
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        # a checkpoint of ~680 kB: seed 0 fits in 1 MiB, seed 1 does not
        proc = subprocess.run(_args(setup, "disk", out, model_width=8, epochs=1, seeds="[0, 1]", name="r"),
                              env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        run_dir = out / "r"
        assert "no space left on device" in error and f"{run_dir}/seed1/model.pt" in error
        assert f"output_dir {out}" in error and "keeps seeds [0] of [0, 1]" in error
        assert not [p for p in out.rglob("*") if TMP_MARK in p.name]  # no temporary file left
        models = sorted(run_dir.rglob("model.pt"))
        assert models == [run_dir / "seed0" / "model.pt"]
        for model in models:  # whole, loadable checkpoints only
            assert torch.load(model, weights_only=True)["seed"] == 0
        results = json.loads((run_dir / "results.json").read_text())
        assert [r["seed"] for r in results["seeds"]] == [0] and results["complete"] is False
    finally:
        if subprocess.run(["umount", str(out)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(out)], capture_output=True)
    [job] = _runs(setup, "disk", "production")
    seeds = {r.data.tags["seed"]: r.info.status for r in _runs(setup, "disk", "production_seed")}
    assert job.info.status == "FAILED" and seeds == {"0": "FINISHED", "1": "FAILED"}


def test_a_hang_up_ends_the_run_killed_like_sigterm(setup, tmp_path):
    proc = _start(_args(setup, "hup", tmp_path / "runs", epochs=1000, seeds="[0]"), tmp_path)
    try:
        _wait_for_epoch(proc, 2)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=120)
    finally:
        stop_process(proc)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted:" in err and "Traceback" not in err
    [job], [seed] = _runs(setup, "hup", "production"), _runs(setup, "hup", "production_seed")
    assert job.info.status == "KILLED" and seed.info.status == "KILLED"


def test_a_run_left_running_by_kill_9_is_ended_killed_on_the_next_use_of_the_store(setup, tmp_path):
    proc = _start(_args(setup, "kill9", tmp_path / "runs", epochs=1000, seeds="[0, 1]"), tmp_path)
    try:
        _wait_for_epoch(proc, 2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        stop_process(proc)
    [dead] = _runs(setup, "kill9", "production")
    assert dead.info.status == "RUNNING" and dead.data.tags["bmlr.pid"] == str(proc.pid)
    # left alone: a run of another host, and one whose process (this one) still runs
    client = MlflowClient(setup["uri"])
    others = [client.create_run(dead.info.experiment_id, tags={"run_kind": "production", **tags}).info.run_id
              for tags in ({**process_tags(), "bmlr.host": "elsewhere", "bmlr.pid": str(proc.pid)}, process_tags())]

    again = subprocess.run(_args(setup, "kill9", tmp_path / "runs", epochs=1, seeds="[0]"), env=_env(),
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    [line] = [line for line in again.stdout.splitlines() if "left RUNNING" in line]
    assert dead.info.run_id in line and f"process {proc.pid}" in line and "KILLED" in line
    ended = [client.get_run(dead.info.run_id)] + client.search_runs(
        [dead.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{dead.info.run_id}'")
    assert len(ended) == 2  # the job and its seed 0
    for run in ended:
        assert run.info.status == "KILLED" and f"process {proc.pid}" in run.data.tags["bmlr.ended_by"]
    assert [client.get_run(r).info.status for r in others] == ["RUNNING", "RUNNING"]
    for run_id in others:
        client.set_terminated(run_id, "FINISHED")
    statuses = sorted(r.info.status for r in _runs(setup, "kill9", "production"))
    assert statuses == ["FINISHED", "FINISHED", "FINISHED", "KILLED"]


# --------------------------------------------------------------------------------------------
def test_a_process_is_gone_only_when_this_host_can_tell():
    mine = process_tags()
    assert process_gone(mine) is None  # running
    assert "was gone" in process_gone({**mine, "bmlr.pid": str(2 ** 22 + 1)})  # above Linux's pid_max
    assert process_gone({**mine, "bmlr.host": "elsewhere", "bmlr.pid": str(2 ** 22 + 1)}) is None
    assert process_gone({"bmlr.pid": mine["bmlr.pid"]}) is None  # no host: cannot tell
    if "bmlr.machine_id" in mine:  # another machine with the same host name
        assert process_gone({**mine, "bmlr.machine_id": "another", "bmlr.pid": str(2 ** 22 + 1)}) is None
    if "bmlr.pid_start" in mine:  # Linux: the pid reused by a later process
        assert "was gone" in process_gone({**mine, "bmlr.pid_start": "1"})
    if "bmlr.pid_ns" in mine:  # another container with the same host name
        assert process_gone({**mine, "bmlr.pid_ns": "pid:[1]", "bmlr.pid": str(2 ** 22 + 1)}) is None
    if "bmlr.boot_id" in mine:
        assert "restarted" in process_gone({**mine, "bmlr.boot_id": "another boot"})


def test_sighup_is_routed_to_ctrl_c_unless_ignored():
    outer_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    outer_hup = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        with pytest.raises(KeyboardInterrupt):
            with sigterm_as_ctrl_c():
                os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
        with sigterm_as_ctrl_c():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, outer_int)
        signal.signal(signal.SIGHUP, outer_hup)


def test_a_full_disk_under_the_data_cache_is_one_line_for_training_and_tuning(setup, tmp_path, capsys):
    """NumPy's short write on a full disk carries no errno ("N requested and M written"): still
    one line naming the cache, exit 2, nothing else created."""
    from bmlr import train as train_cli
    from bmlr.tuning import cli

    cache = tmp_path / "cache"
    cache.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(cache)], capture_output=True,
                           text=True)
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mount.stderr.strip()}")
    try:
        sets = [a for k, v in {**TINY, "cache_dir": cache}.items() for a in ("--set", f"{k}={v}")]
        assert train_cli.main(["--no-mlflow", "--no-progress", "--set", f"output_dir={tmp_path / 'out'}",
                               "--set", f"data_root={setup['data']}", *sets]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [f"error: no space left on device writing the data cache {cache}; free space "
                                    f"and run again"], err
        assert cli.main(["--samples", "1", "--storage", str(tmp_path / "runs"), "--data-root", str(setup["data"]),
                         *sets]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no space left on device writing the data cache" in err, err
        assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
    finally:
        if subprocess.run(["umount", str(cache)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(cache)], capture_output=True)


def test_an_interrupt_python_cannot_raise_is_not_printed_as_a_traceback(monkeypatch):
    """A Ctrl-C that lands in a garbage-collector callback or a finalizer ("Exception ignored
    in ...") is not passed on to the hook that prints it while a command runs; any other such
    exception still is, and the hook is restored after."""
    import types

    def unraisable(exc: BaseException):
        return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None, err_msg=None,
                                     object=None)

    printed = []
    monkeypatch.setattr(sys, "unraisablehook", printed.append)
    with sigterm_as_ctrl_c():
        sys.unraisablehook(unraisable(KeyboardInterrupt()))
        sys.unraisablehook(unraisable(ValueError("kept")))
    assert [type(u.exc_value) for u in printed] == [ValueError]
    assert sys.unraisablehook == printed.append
