"""A study on a two-node Ray cluster started on this machine, as on a real cluster:
`ray start --head` and a second `ray start --address` with its own resources (and its own
node IP, 127.0.0.2, so the two nodes are told apart in Ray's results), then `tune.py
--address`. The trials must have run on both nodes.

Everything started here runs in its own process groups and is killed by those ids (and by the
process ids that name this test's own Ray session folder), even when the test fails.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from bmlr.tuning import cli

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_FIXED = {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2, "batch_size": 16,
              "val_fraction": 0.3, "epochs": 2, "seeds": [0]}
SPACE = {"search": {"beta": {"uniform": [0.1, 0.9]}, "lr": {"loguniform": [1.0e-3, 1.0e-2]}}, "fixed": TINY_FIXED}
WORKER_IP = "127.0.0.2"  # loopback, but a different address from the head's: Ray reports it per trial


def _env() -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _kill_group(proc: subprocess.Popen, grace: float = 5) -> None:
    """SIGTERM, then SIGKILL, to the process group of a process we started with its own session."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader
    except (ProcessLookupError, PermissionError):
        pass


def _pids_naming(marker: str) -> list[int]:
    """Processes whose command line names our own, unique Ray session folder."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _ray_nodes(address: str) -> list[dict]:
    """Alive nodes of the cluster (a short-lived driver of our own)."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps([{'id': n['NodeID'], 'ip': n['NodeManagerAddress'], 'resources': n['Resources']} "
            "for n in ray.nodes() if n['Alive']])); ray.shutdown()" % address)
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def two_node_cluster():
    """A head (1 CPU, resource `head_node`) and a worker node (1 CPU, resource `worker_node`,
    node IP 127.0.0.2) on this machine; yields the address."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="bmlr-2n-", dir="/tmp")  # short: Ray's socket paths have a limit
    common = ["--block", "--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(100 * 1024 ** 2),
              "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--port", str(port), "--include-dashboard", "false",
             "--temp-dir", temp_dir, "--resources", json.dumps({"head_node": 1}), *common],
            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.time() + 90
        while not _port_open(port):
            assert procs[0].poll() is None, f"ray start --head exited with {procs[0].returncode}"
            assert time.time() < deadline, "ray start --head did not come up in 90 s"
            time.sleep(0.5)
        address = f"127.0.0.1:{port}"
        procs.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--address", address, "--node-ip-address", WORKER_IP,
             "--resources", json.dumps({"worker_node": 1}), *common],
            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.time() + 90
        while True:
            assert procs[1].poll() is None, f"ray start --address exited with {procs[1].returncode}"
            nodes = _ray_nodes(address)
            if len(nodes) == 2:
                break
            assert time.time() < deadline, f"the second node did not join in 90 s: {nodes}"
            time.sleep(1)
        yield {"address": address, "nodes": nodes}
    finally:
        for proc in reversed(procs):
            _kill_group(proc)
        for pid in _pids_naming(temp_dir):  # anything of our session that left the process groups
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_study_runs_trials_on_both_nodes_of_a_two_node_cluster(two_node_cluster, tmp_path):
    import ray

    from bmlr.data.synthetic import generate

    data = generate(tmp_path / "data", seed=0, n_train_per_class=6,
        n_test_per_class=1, n_val_per_class=1, image_size=32, n_frames=2)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    storage = tmp_path / "runs"
    # 2 trials at once, 1 CPU each, on nodes of 1 CPU each: one trial per node, whatever the order
    rc = cli.main(["--data-root", str(data), "--search-space", str(space), "--storage", str(storage),
                   "--set", f"cache_dir={tmp_path / 'cache'}", "--samples", "2", "--max-epochs", "2",
                   "--grace-period", "2", "--concurrent", "2", "--name", "two-nodes", "-v", "0",
                   "--address", two_node_cluster["address"]])
    assert rc == 0
    assert not ray.is_initialized()  # the driver disconnected from the cluster

    study_dir = storage / "synthetic" / "two-nodes"
    results = sorted((study_dir / "ray").glob("trial_*/result.json"))
    assert len(results) == 2
    ips_per_trial = {}
    for path in results:
        reports = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert [r["epoch"] for r in reports] == [1, 2]
        ips_per_trial[path.parent.name] = {r["node_ip"] for r in reports}
    nodes = {n["ip"]: n for n in two_node_cluster["nodes"]}
    assert len(nodes) == 2 and WORKER_IP in nodes, nodes
    used = set().union(*ips_per_trial.values())
    assert used == set(nodes), f"trials ran on {ips_per_trial}; cluster nodes {sorted(nodes)}"
    assert (study_dir / "best.yaml").is_file()


def test_cluster_launcher_config_is_valid_for_ray_up():
    """cluster/aws-gpu.yaml passes the Ray cluster launcher's own schema (what `ray up` checks
    first) and keeps the shared storage and the MLflow server on the head consistent."""
    import copy

    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    raw = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(raw)))
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # no trial on the head
    assert any(t["max_workers"] > 0 for n, t in raw["available_node_types"].items() if n != raw["head_node_type"])
    setup = " ".join(raw["setup_commands"])
    assert "/shared" in setup and "BMLR_CACHE=/shared/cache" in setup
    start = " ".join(raw["head_start_ray_commands"])
    assert "ray start --head --port=6379" in start
    assert "mlflow server --host 127.0.0.1 --port 5000" in start and "sqlite:////shared/mlflow/mlflow.db" in start
    assert "$RAY_HEAD_IP:6379" in " ".join(raw["worker_start_ray_commands"])
