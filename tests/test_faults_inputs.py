"""Issue 12, the edges: inputs and environments a study or a training run must refuse early
and clearly (exit 2, the file/key/value named, nothing written where it should not be),
signals (SIGTERM like Ctrl-C), resource requests the cluster cannot meet, and a local study
that listens on loopback only.

Real Ray, real MLflow (a sqlite store), tiny generated data. The `slow` tests start Ray or
train in a subprocess; every process they start is stopped by its process id afterwards.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bmlr import train as train_cli
from bmlr.config import from_dict
from bmlr.tuning import cli

from process_helpers import stop_process

ROOT = Path(__file__).resolve().parents[1]
os.environ.pop("MLFLOW_TRACKING_URI", None)  # the default store in --storage
TINY_FIXED = {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2, "batch_size": 16,
              "val_fraction": 0.3, "epochs": 3, "seeds": [0, 1]}
SPACE = {"search": {"beta": {"uniform": [0.1, 0.9]}, "lr": {"loguniform": [1.0e-3, 1.0e-2]}}, "fixed": TINY_FIXED}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny synthetic data set (6 classes, 12 train / 2 test clips each) and a cache folder."""
    from bmlr.data.synthetic import generate

    base = tmp_path_factory.mktemp("faults_inputs")
    data = generate(base / "data", seed=0, n_train_per_class=12,
        n_test_per_class=2, n_val_per_class=2, image_size=32, n_frames=2)
    return {"base": base, "data": data, "cache": base / "cache"}


def _env(**extra: str) -> dict:
    return dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def _space(path: Path, doc: dict = SPACE) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _study_args(tiny, storage: Path, space: Path, *extra: str) -> list[str]:
    return ["--data-root", str(tiny["data"]), "--search-space", str(space), "--storage", str(storage),
            "--set", f"cache_dir={tiny['cache']}", "--num-cpus", "2", "-v", "0", *extra]


def _train_settings(tiny, **extra) -> dict:
    return {"data_root": str(tiny["data"]), "cache_dir": str(tiny["cache"]), "image_size": 32, "frames": 2,
            "model_width": 4, "model_depth": 1, "batch_size": 16, "lr": 1e-3, "val_fraction": 0.25, **extra}


def _preflight(capsys, argv: list[str]) -> str:
    import ray

    assert cli.main(argv) == cli.EXIT_ERROR
    assert not ray.is_initialized()
    return capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# item 10: quiet acceptance
def test_empty_configuration_file_is_an_error_naming_it(tmp_path, capsys):
    for text in ("", "# only a comment\n"):
        empty = tmp_path / "empty.yaml"
        empty.write_text(text)
        # a data root that does not exist: were the file accepted, the run would stop there at once
        assert train_cli.main(["--config", str(empty), "--set", f"output_dir={tmp_path / 'runs'}",
                               "--set", f"data_root={tmp_path / 'nowhere'}"]) == 2
        err = capsys.readouterr().err
        assert str(empty) in err and "empty" in err
    assert not (tmp_path / "runs").exists()  # no run started


def test_run_name_cannot_leave_output_dir(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "runs"
    for name in ("../../../x", "sub/x", ".."):
        assert train_cli.main(["--set", f"output_dir={out}", "--set", f"name={name}",
                               "--set", f"data_root={tmp_path / 'nowhere'}"]) == 2
        err = capsys.readouterr().err
        assert "'name'" in err and repr(name) in err
    assert not any(tmp_path.rglob("x")) and not out.exists() and not (tmp_path / "a" / "b").exists()


def test_run_folder_is_created_only_after_the_data_checks(tmp_path, capsys):
    empty = tmp_path / "empty-data"
    empty.mkdir()
    out = tmp_path / "runs"
    for root in (empty, tmp_path / "nowhere"):
        assert train_cli.main(["--set", f"data_root={root}", "--set", f"cache_dir={tmp_path / 'cache'}",
                               "--set", f"output_dir={out}", "--no-progress"]) == 2
        assert str(root) in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())  # no orphan run folder


def test_corrupt_wav_names_the_file_and_a_reason(tmp_path):
    from bmlr.data import DataError
    from bmlr.data.audio import SpectrogramParams, load_waveform

    bad = tmp_path / "clip.wav"
    bad.write_bytes(b"RIFF this is not audio" * 20)
    with pytest.raises(DataError) as info:
        load_waveform(bad, SpectrogramParams(sample_rate=16000, duration_s=1.0, n_fft=512, hop_length=160))
    message = str(info.value)
    assert str(bad) in message
    reason = message.split(str(bad), 1)[1].strip(" :")
    assert reason and not reason.endswith(":") and "Error: " not in message.rstrip() + " "


def test_options_a_joint_study_or_a_resume_would_ignore_are_errors(tiny, tmp_path, capsys):
    space = _space(tmp_path / "s.yaml")
    argv = _study_args(tiny, tmp_path / "runs", space)
    argv[argv.index("--data-root") + 1] = str(tmp_path / "nowhere")  # were the options accepted: no study
    err = _preflight(capsys, argv + ["--stage2-samples", "3"])
    assert "--stage2-samples 3" in err and "--strategy staged" in err
    err = _preflight(capsys, argv + ["--stage1-alpha", "-1"])  # an invalid value is not ignored either
    assert "--stage1-alpha -1" in err
    err = _preflight(capsys, ["--storage", str(tmp_path / "runs"), "--name", "x", "--resume",
                              "--search-space", str(space)])
    assert "--search-space" in err and "--resume" in err
    err = _preflight(capsys, ["--storage", str(tmp_path / "runs"), "--name", "x", "--resume", "--strategy",
                              "staged", "--stage2-samples", "2"])
    assert "--stage2-samples 2" in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# item 9: clear errors instead of tracebacks
def test_storage_that_is_a_file_is_an_error(tiny, tmp_path, capsys):
    space = _space(tmp_path / "s.yaml")
    a_file = tmp_path / "storage.txt"
    a_file.write_text("not a folder\n")
    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    for storage in (a_file, a_file / "sub"):
        err = _preflight(capsys, _study_args(tiny, storage, space, "--tracking-uri", uri))
        assert f"{a_file} is a file" in err and "--storage" in err
    err = _preflight(capsys, ["surface", "--storage", str(a_file), "--name", "s", "--resume"])
    assert f"{a_file} is a file" in err
    assert a_file.read_text() == "not a folder\n"


def test_train_output_dir_that_cannot_be_created_is_an_error(tiny, tmp_path, capsys):
    a_file = tmp_path / "output.txt"
    a_file.write_text("")
    cfg = tmp_path / "run.yaml"
    from_dict(_train_settings(tiny, epochs=1, seeds=[0], output_dir=str(a_file / "runs"))).to_yaml(cfg)
    assert train_cli.main(["--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "output_dir" in err and str(a_file / "runs") in err
    if os.geteuid() != 0:  # root ignores folder permissions
        ro = tmp_path / "read-only"
        ro.mkdir(mode=0o555)
        from_dict(_train_settings(tiny, epochs=1, seeds=[0], output_dir=str(ro))).to_yaml(cfg)
        assert train_cli.main(["--config", str(cfg), "--no-progress"]) == 2
        assert str(ro) in capsys.readouterr().err


def test_export_to_an_existing_folder_is_an_error_and_leaves_nothing(tmp_path, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("export-check"))
    for key, value in {"dataset": "synthetic", "method": "bmlr", "epochs": "2", "seeds": "[0]"}.items():
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    folder = tmp_path / "out"
    folder.mkdir()
    assert cli.main(["export", "--run-id", run.info.run_id, "-o", str(folder), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "folder" in err
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob(".*tmp*"))
    # the same run exports to a file in it
    assert cli.main(["export", "--run-id", run.info.run_id, "-o", str(folder / "best.yaml"),
                     "--tracking-uri", uri]) == 0
    assert [p.name for p in folder.iterdir()] == ["best.yaml"]


# ---------------------------------------------------------------------------------------------
# item 6: bmlr.train on Ctrl-C and SIGTERM
def test_train_results_are_marked_complete(tiny, tmp_path):
    cfg = from_dict(_train_settings(tiny, epochs=1, seeds=[0], output_dir=str(tmp_path / "runs"), name="done"))
    train_cli.train(cfg, progress=False)
    results = json.loads((tmp_path / "runs" / "done" / "results.json").read_text())
    assert results["complete"] is True and [r["seed"] for r in results["seeds"]] == [0]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_training_exits_130_and_marks_results_incomplete(tiny, tmp_path, sig):
    cfg = tmp_path / "run.yaml"
    from_dict(_train_settings(tiny, epochs=2, seeds=[0, 1, 2, 3, 4, 5, 6, 7], output_dir=str(tmp_path / "runs"),
                              name="cut")).to_yaml(cfg)
    results_path = tmp_path / "runs" / "cut" / "results.json"
    log = tmp_path / "train.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bmlr.train", "--config", str(cfg), "--no-progress"],
                                env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (results_path.is_file() and json.loads(results_path.read_text())["seeds"]):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no seed finished in time"
            time.sleep(0.2)
        proc.send_signal(sig)
        assert proc.wait(60) == 130, log.read_text()[-3000:]
    finally:
        stop_process(proc)
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("interrupted:") and str(results_path) in last
    results = json.loads(results_path.read_text())
    assert results["complete"] is False and 1 <= len(results["seeds"]) < 8
    assert results["seeds_planned"] == [0, 1, 2, 3, 4, 5, 6, 7]


# ---------------------------------------------------------------------------------------------
# item 5: a resource request the cluster cannot meet (issue 26: found before anything is created)
def test_unsatisfiable_resources_fail_before_trials(tiny, tmp_path):
    space = _space(tmp_path / "s.yaml")
    for extra, asked, exists in ((["--gpus-per-trial", "1"], "1 GPUs", "0 GPUs"),
                                 (["--cpus-per-trial", "3"], "3 CPUs", "2 CPUs")):
        argv = _study_args(tiny, tmp_path / "runs", space, "--samples", "2", "--max-epochs", "1", *extra)
        # CUDA hidden: the local Ray instance has no GPU even on a GPU machine
        proc = subprocess.run([sys.executable, str(ROOT / "tune.py"), *argv], env=_env(CUDA_VISIBLE_DEVICES=""),
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == cli.EXIT_ERROR, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert asked in proc.stderr and exists in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line
        trials = list((tmp_path / "runs").glob("synthetic/*/ray/*/trial_*"))
        assert not trials  # no trial was created
        # nothing at all: no study folder, no MLflow store, no parent run (a corrected rerun may use the name)
        assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# items 6 and 7: a study stopped by SIGTERM, and what it listens on while it runs
def _listening_sockets() -> dict[str, tuple[str, int]]:
    """{socket inode: (address, port)} of every listening TCP socket of this host (/proc/net)."""
    found = {}
    for name, v6 in (("tcp", False), ("tcp6", True)):
        path = Path("/proc/net") / name
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A":  # LISTEN
                continue
            ip_hex, port_hex = f[1].split(":")
            raw = bytes.fromhex(ip_hex)
            if v6:
                raw = b"".join(struct.pack("<I", *struct.unpack(">I", raw[i:i + 4])) for i in range(0, 16, 4))
                address = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                address = socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(ip_hex, 16)))
            found[f[9]] = (address, int(port_hex, 16))
    return found


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:  # the process ended meanwhile
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    todo, tree = [root], []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _listeners_of(root: int) -> list[tuple[int, str, str, int]]:
    """(pid, name, address, port) of every listening socket of `root` and its descendants."""
    sockets = _listening_sockets()
    found = []
    for pid in _process_tree(root):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:  # ended meanwhile
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = target[len("socket:["):-1] if target.startswith("socket:[") else None
            if inode in sockets:
                found.append((pid, name, *sockets[inode]))
    return found


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1") or address.startswith("::ffff:127.")


@pytest.fixture(scope="module")
def sigterm_study(tiny, tmp_path_factory):
    """A study driver (`tune.py`) stopped with SIGTERM once a trial has finished; what its
    processes listened on while the trials ran."""
    if not Path("/proc/net/tcp").is_file():
        pytest.skip("needs Linux /proc")
    from mlflow import MlflowClient

    base = tmp_path_factory.mktemp("sigterm")
    storage = base / "runs"
    space = _space(base / "s.yaml")
    # grace period = max epochs: ASHA stops nothing, so the study cannot end before the signal
    argv = _study_args(tiny, storage, space, "--samples", "4", "--max-epochs", "3", "--grace-period", "3",
                       "--concurrent", "1", "--name", "term")
    study_dir = storage / "synthetic" / "term"
    log = base / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen([sys.executable, str(ROOT / "tune.py"), *argv], env=_env(), stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    listeners: list = []
    try:
        deadline = time.time() + 240
        finished = []
        while not finished:
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no trial finished in time"
            time.sleep(0.5)
            if (study_dir / "ray").is_dir():
                listeners = listeners or [s for s in _listeners_of(driver.pid)]
            if (study_dir / "study.json").is_file():
                info = json.loads((study_dir / "study.json").read_text())
                client = MlflowClient(tracking_uri=info["tracking_uri"])
                children = client.search_runs(
                    [info["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")
                finished = [r for r in children if r.info.status == "FINISHED"]
        listeners = _listeners_of(driver.pid) or listeners  # trials are running now
        driver.send_signal(signal.SIGTERM)
        code = driver.wait(120)
    finally:
        stop_process(driver)
    parent = MlflowClient(tracking_uri=info["tracking_uri"]).get_run(info["parent_run_id"])
    return {"code": code, "log": log.read_text(), "parent": parent, "listeners": listeners}


@pytest.mark.slow
def test_sigterm_stops_a_study_like_ctrl_c(sigterm_study):
    log = sigterm_study["log"]
    assert sigterm_study["code"] == cli.EXIT_INTERRUPTED, log[-3000:]
    assert sigterm_study["parent"].info.status == "KILLED"
    assert "--name term --resume" in log, log[-3000:]


@pytest.mark.slow
def test_local_study_listens_on_loopback_only(sigterm_study):
    listeners = sigterm_study["listeners"]
    names = {name for _, name, _, _ in listeners}
    assert "gcs_server" in names and "raylet" in names, listeners  # the check saw Ray's processes
    exposed = [s for s in listeners if not _loopback(s[2])]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_cluster_config_keeps_dashboard_and_mlflow_on_loopback():
    raw = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    start = " ".join(raw["head_start_ray_commands"])
    assert "0.0.0.0" not in start
    assert "--dashboard-host=127.0.0.1" in start and "mlflow server --host 127.0.0.1 --port 5000" in start
    text = (ROOT / "cluster" / "aws-gpu.yaml").read_text() + (ROOT / "README.md").read_text()
    assert "ssh -L 5000:localhost:5000" in text and "ray dashboard cluster/aws-gpu.yaml" in text
