"""Issue 26, items 1, 3 and 5: study names that would leave their storage, a cluster address that
does not answer, and bad inputs, each refused before anything is created (exit 2, one line).

No trial trains here: every command fails in its checks, in-process (Ray is never started) or in
a subprocess where the check is about the process (a binary file, a closed port).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from bmlr import train as train_cli
from bmlr.tuning import cli
from bmlr.tuning.ray_backend import CONNECT_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
os.environ.pop("MLFLOW_TRACKING_URI", None)  # the default store in --storage
SPACE = {"search": {"beta": {"uniform": [0.1, 0.9]}},
         "fixed": {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2, "epochs": 1}}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def _refused(capsys, argv: list[str]) -> str:
    """Run the command line in-process: exit 2, Ray never started, one `error:` line."""
    import ray

    assert cli.main(argv) == cli.EXIT_ERROR
    assert not ray.is_initialized()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def victim(tmp_path) -> Path:
    """A folder outside any storage that a study must never touch."""
    folder = tmp_path / "escaped"
    folder.mkdir()
    (folder / "trials.csv").write_text("precious,table\n1,2\n")
    (folder / "notes.txt").write_text("keep me\n")
    return folder


def test_a_study_name_cannot_leave_its_storage(tmp_path, victim, capsys):
    storage = tmp_path / "runs" / "st"
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    before = _snapshot(victim)
    common = ["--samples", "1", "--max-epochs", "1", "--storage", str(storage), "--search-space", str(space)]
    for name in ("../../../escaped", str(victim), ".", "..", "a/b", ""):
        err = _refused(capsys, [*common, "--name", name])
        assert "--name" in err and repr(name) in err and "plain folder name" in err
    for command in (["--strategy", "staged"], ["surface", "--search-space", str(space)],
                    ["compare", "--methods", "baseline", "bmlr", "--search-space", str(space)]):
        first = command[:1] if command[0] in ("surface", "compare") else []
        rest = command[len(first):]
        err = _refused(capsys, [*first, "--storage", str(storage), "--name", "../../../escaped", *rest])
        assert "'../../../escaped'" in err
    err = _refused(capsys, ["--storage", str(storage), "--name", "../../escaped", "--resume"])  # a resume too
    assert "'../../escaped'" in err and "plain folder name" in err
    assert _snapshot(victim) == before
    assert not storage.exists()  # nothing created


def test_a_link_out_of_the_storage_and_a_folder_not_a_studys_are_refused(tmp_path, victim, capsys):
    storage = tmp_path / "runs"
    (storage / "synthetic").mkdir(parents=True)
    (storage / "synthetic" / "link").symlink_to(victim)
    mine = storage / "synthetic" / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    before, mine_before = _snapshot(victim), _snapshot(mine)
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    common = ["--samples", "1", "--storage", str(storage), "--search-space", str(space)]
    err = _refused(capsys, [*common, "--name", "link"])
    assert str(victim) in err and "outside" in err
    err = _refused(capsys, [*common, "--name", "mine"])
    assert str(mine) in err and "not a bmlr-tune study" in err and "notes.txt" in err
    err = _refused(capsys, ["compare", "--methods", "baseline", "bmlr", *common, "--name", "mine"])
    assert str(mine) in err and "not a comparison" in err
    assert _snapshot(victim) == before and _snapshot(mine) == mine_before  # not even a lock file left
    assert sorted(p.name for p in storage.iterdir()) == ["synthetic"]  # no MLflow store either


@pytest.mark.parametrize("extra, said", [
    (["--seed", "-1"], "--seed must be from 0"),
    (["--num-cpus", "0"], "--num-cpus must be >= 1"),
    (["--cpus-per-trial", str((os.cpu_count() or 1) + 1)], "no trial could ever start"),
    (["--set", "seeds=[-3]"], "'seeds'"),
])
def test_bad_inputs_fail_before_anything_is_created(tmp_path, capsys, extra, said):
    storage = tmp_path / "runs"
    err = _refused(capsys, ["--samples", "1", "--storage", str(storage), *extra])
    assert said in err
    assert not storage.exists()


def test_a_comparison_checks_its_seeds_before_anything_is_created(tmp_path, capsys):
    for extra in (["--seed", "-1"], ["--seeds", "0", "-2"]):
        err = _refused(capsys, ["compare", "--methods", "baseline", "bmlr", "--samples", "1", "--storage",
                                str(tmp_path / "runs"), *extra])
        assert "--seed and --seeds must be from 0" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA can train on it")
def test_a_cuda_device_without_cuda_is_refused_before_anything_is_created(tmp_path, capsys):
    storage = tmp_path / "runs"
    err = _refused(capsys, ["--samples", "1", "--storage", str(storage), "--set", "device=cuda"])
    assert "'cuda'" in err and "no GPU" in err
    err = _refused(capsys, ["--samples", "1", "--storage", str(storage), "--gpus-per-trial", "1"])
    assert "1 GPUs" in err and "0 GPUs" in err
    assert not storage.exists()
    assert train_cli.main(["--set", "device=cuda", "--set", f"output_dir={tmp_path / 'out'}", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "'device'" in err and "CUDA is not available" in err and not (tmp_path / "out").exists()


def test_a_configuration_that_is_not_text_is_named(tmp_path, capsys):
    binary = tmp_path / "model.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    assert train_cli.main(["--config", str(binary), "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert str(binary) in err and "not a text file" in err
    err = _refused(capsys, ["--search-space", str(binary), "--storage", str(tmp_path / "runs")])
    assert str(binary) in err and "not a text file" in err
    assert not (tmp_path / "runs").exists()


def test_a_data_error_leaves_no_mlflow_store(tmp_path, capsys):
    empty = tmp_path / "no-data"
    empty.mkdir()
    storage = tmp_path / "runs"
    err = _refused(capsys, ["--samples", "1", "--storage", str(storage), "--data-root", str(empty),
                            "--set", f"cache_dir={tmp_path / 'cache'}"])
    assert str(empty) in err
    assert not (storage / "mlflow.db").exists() and not list(storage.rglob("study.json"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_an_address_that_does_not_answer_fails_within_its_timeout_creating_nothing(tmp_path):
    assert CONNECT_TIMEOUT_S <= 30  # the default: one clear error within 30 s
    port = _closed_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "tune.py"), "--samples", "1", "--storage", str(tmp_path / "runs"),
                           "--address", f"127.0.0.1:{port}", "--connect-timeout", "3"],
                          env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    assert proc.returncode == cli.EXIT_ERROR, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "tried for 3 s" in lines[0], proc.stderr
    assert took < 30, took
    assert not (tmp_path / "runs").exists()


def test_the_cluster_example_uploads_only_the_job_and_turns_on_ray_tokens():
    raw = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    sources = set(raw["file_mounts"].values())
    assert "." not in sources and "./" not in sources  # never the whole folder (.venv, .env, keys, data)
    assert {"./bmlr", "./search_spaces", "./tune.py"} <= sources
    assert all(Path(s.removeprefix("./")).exists() or s.startswith("~") for s in sources)  # each one is real
    assert "~/.ray/auth_token" in raw["file_mounts"]
    for commands in (raw["head_start_ray_commands"], raw["worker_start_ray_commands"]):
        assert all("RAY_AUTH_MODE=token ray start" in c for c in commands if "ray start" in c)
    assert any("RAY_AUTH_MODE=token" in c for c in raw["setup_commands"])  # the driver on the head too
