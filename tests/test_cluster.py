"""A study on a two-node Ray cluster started on this machine, as on a real cluster:
`ray start --head` and a second `ray start --address` with its own resources (and its own
node IP, 127.0.0.2, so the two nodes are told apart in Ray's results), then `tune.py
--address`. The trials must have run on both nodes.

Everything started here runs in its own process groups and is killed by those ids (and by the
process ids that name this test's own Ray session folder), even when the test fails.
"""
from __future__ import annotations

import contextlib
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
from unittest import mock

import pytest
import yaml

from bmlr.tuning import cli
from process_helpers import kill_naming

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


def _ray_nodes(address: str) -> list[dict]:
    """Alive nodes of the cluster (a short-lived driver of our own)."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps([{'id': n['NodeID'], 'ip': n['NodeManagerAddress'], 'resources': n['Resources']} "
            "for n in ray.nodes() if n['Alive']])); ray.shutdown()" % address)
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def two_node_cluster(head_env: dict | None = None, worker_env: dict | None = None, worker_dir: Path | None = None):
    """A head (1 CPU, resource `head_node`) and a worker node (1 CPU, resource `worker_node`,
    node IP 127.0.0.2) on this machine; yields the address and the nodes. ``head_env`` and
    ``worker_env`` are added to each node's environment (its trials inherit it); ``worker_dir``:
    the worker node's own working directory, and with it its own Ray temporary folder (as on
    another machine)."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="bmlr-2n-", dir="/tmp")  # short: Ray's socket paths have a limit
    temp_dirs = [temp_dir] + ([tempfile.mkdtemp(prefix="bmlr-2w-", dir="/tmp")] if worker_dir else [])
    common = ["--block", "--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(100 * 1024 ** 2),
              "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--port", str(port), "--include-dashboard", "false",
             "--temp-dir", temp_dir, "--resources", json.dumps({"head_node": 1}), *common],
            env={**_env(), **(head_env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
        deadline = time.time() + 90
        while not _port_open(port):
            assert procs[0].poll() is None, f"ray start --head exited with {procs[0].returncode}"
            assert time.time() < deadline, "ray start --head did not come up in 90 s"
            time.sleep(0.5)
        address = f"127.0.0.1:{port}"
        procs.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--address", address, "--node-ip-address", WORKER_IP,
             "--resources", json.dumps({"worker_node": 1}), *common,
             *(["--temp-dir", temp_dirs[-1]] if worker_dir else [])],
            env={**_env(), **(worker_env or {})}, cwd=worker_dir, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.time() + 90
        while True:
            assert procs[1].poll() is None, f"ray start --address exited with {procs[1].returncode}"
            nodes = _ray_nodes(address)
            if len(nodes) == 2:
                break
            assert time.time() < deadline, f"the second node did not join in 90 s: {nodes}"
            time.sleep(1)
        yield {"address": address, "nodes": nodes, "temp_dirs": temp_dirs}
    finally:
        for proc in reversed(procs):
            _kill_group(proc)
        kill_naming(*temp_dirs)  # anything of our sessions that left the process groups
        for folder in temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def s3_shut_down_after_the_module():
    """The tests below use S3 in this process (the driver runs in it); pyarrow's S3 client is shut
    down after them, so that the later tests' forked processes (preprocessing pools, data-loader
    workers) copy none of the AWS SDK's threads' locks."""
    yield
    from bmlr.tuning import remote

    remote.close()
    threads = [(Path("/proc/self/task") / t / "comm").read_text().strip() for t in os.listdir("/proc/self/task")]
    assert not [t for t in threads if t.startswith("Aws")], threads


@pytest.fixture
def s3_server(tmp_path):
    """moto's standalone S3 server on a loopback port, with a bucket `studies`; yields the
    environment a client needs (endpoint, dummy credentials, no instance metadata)."""
    if shutil.which("moto_server", path=str(BIN)) is None:
        if os.environ.get("CI"):
            pytest.fail("moto[server] is not installed (the test extra installs it)")
        pytest.skip("moto[server] is not installed: pip install 'moto[server]'")
    import pyarrow.fs as pafs

    port = _free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 30
        while not _port_open(port):
            assert proc.poll() is None and time.time() < deadline, "moto_server did not come up in 30 s"
            time.sleep(0.2)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}
        fs = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing",
                               region="us-east-1", allow_bucket_creation=True)
        fs.create_dir("studies")
        yield {"env": env, "fs": fs}
    finally:
        _kill_group(proc)


def _bucket_files(fs, prefix: str) -> dict[str, int]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {i.path[len(prefix) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}


def _local_files(root: Path, allowed: list[Path]) -> list[str]:
    """Files under ``root`` outside the ``allowed`` folders and files."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not any(path == a or a in path.parents for a in allowed):
            found.append(str(path.relative_to(root)))
    return sorted(found)


@pytest.mark.slow
def test_study_on_object_storage_runs_on_both_nodes_and_resumes_from_the_bucket(s3_server, tmp_path, monkeypatch):
    """`--storage s3://...` on a two-node cluster whose nodes share no study folder: every
    node (and the driver) has its own cache and working directory, the worker node its own
    Ray temporary folder. The trials run on both nodes; the study's records, Ray's experiment
    and MLflow's artifacts are in the bucket; nothing of the study is written to the local disk
    outside the caches and Ray's temporary folders; `--resume` from a fresh folder (another
    cache) finds the study in the bucket alone; `bmlr-train` trains the best.yaml read back from
    the bucket."""
    import ray

    from bmlr import train
    from bmlr.data.synthetic import generate

    data = generate(tmp_path / "data", seed=0, n_train_per_class=6,
                    n_test_per_class=1, n_val_per_class=1, image_size=32, n_frames=2)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    folders = {name: tmp_path / name for name in ("head", "worker", "driver", "fresh", "data-cache")}
    for folder in folders.values():
        (folder / "home").mkdir(parents=True)
        (folder / "tmp").mkdir()
    node_env = {name: {**s3_server["env"], "HOME": str(folders[name] / "home"), "TMPDIR": str(folders[name] / "tmp"),
                       "BMLR_CACHE": str(folders[name] / "cache")} for name in folders}
    fs, storage = s3_server["fs"], "s3://studies/runs"
    with two_node_cluster(node_env["head"], node_env["worker"], folders["worker"] / "home") as cluster:
        for key, value in node_env["driver"].items():
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(folders["driver"] / "home")
        # 2 trials at once, 1 CPU each, on nodes of 1 CPU each: one trial per node, whatever the order
        rc = cli.main(["--data-root", str(data), "--search-space", str(space), "--storage", storage,
                       "--set", f"cache_dir={folders['data-cache']}", "--samples", "2", "--max-epochs", "2",
                       "--grace-period", "2", "--concurrent", "2", "--name", "two-nodes", "-v", "0",
                       "--report", "none", "--address", cluster["address"]])
        assert rc == 0
        assert not ray.is_initialized()  # the driver disconnected from the cluster
        nodes = {n["ip"]: n for n in cluster["nodes"]}

    files = _bucket_files(fs, "studies/runs/synthetic/two-nodes")
    for record in ("study.json", "trials.csv", "best.yaml", "search_space.yaml", "optuna.journal"):
        assert record in files, sorted(files)
    assert not any(name.startswith(("state/", ".driver")) or "/study/" in name for name in files), sorted(files)
    results = sorted(name for name in files if name.startswith("ray/trial_") and name.endswith("/result.json"))
    assert len(results) == 2
    assert len([name for name in files if name.startswith("trials/") and name.endswith("/history.json")]) == 2
    ips_per_trial = {}
    for name in results:
        with fs.open_input_stream(f"studies/runs/synthetic/two-nodes/{name}") as f:
            reports = [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
        assert [r["epoch"] for r in reports] == [1, 2]
        ips_per_trial[name] = {r["node_ip"] for r in reports}
    assert len(nodes) == 2 and WORKER_IP in nodes, nodes
    used = set().union(*ips_per_trial.values())
    assert used == set(nodes), f"trials ran on {ips_per_trial}; cluster nodes {sorted(nodes)}"
    # the trials wrote in their node's temporary folder (removed after) and the bucket; the driver pulled both
    working = folders["driver"] / "cache" / "storage" / "s3" / "studies" / "runs" / "synthetic" / "two-nodes"
    assert len(list(working.glob("trials/*/history.json"))) == 2
    assert [p for name in ("head", "worker") for p in (folders[name] / "tmp").rglob("*") if p.is_file()] == []
    assert "mlflow.db" in _bucket_files(fs, "studies/runs")
    assert any(name.endswith("/artifacts/best.yaml") for name in _bucket_files(fs, "studies/runs/mlartifacts"))
    # nothing of the study outside the caches (the data's, each node's working copy) and Ray's folders
    caches = [folders[name] / "cache" for name in folders] + [folders["data-cache"]]
    allowed = [data, space, *caches, *(folders[name] / "home" / ".cache" for name in folders)]
    assert _local_files(tmp_path, allowed) == []

    # --resume from a fresh machine: another cache, another folder; only the bucket knows the study
    # (the first driver's copy, MLflow store included, is gone as it would be on another machine)
    shutil.rmtree(folders["driver"] / "cache")
    for key, value in node_env["fresh"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(folders["fresh"] / "home")
    # its own process, as on another machine (this one keeps the first store's connection open)
    resumed = subprocess.run([sys.executable, str(ROOT / "tune.py"), "--resume", "--storage", storage, "--dataset",
                              "synthetic", "-v", "0"], env={**_env(), **node_env["fresh"]},
                             cwd=folders["fresh"] / "home", capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "is finished (2 trials); nothing to resume" in resumed.stdout
    assert not (folders["driver"] / "cache").exists()  # the first machine's store was not looked for
    copy = folders["fresh"] / "cache" / "storage" / "s3" / "studies" / "runs" / "synthetic" / "two-nodes"
    assert (copy / "study.json").is_file() and (copy / "trials.csv").is_file()
    best = folders["fresh"] / "best.yaml"
    with fs.open_input_stream("studies/runs/synthetic/two-nodes/best.yaml") as f:
        best.write_bytes(f.read())
    parent = json.loads((copy / "study.json").read_text())["parent_run_id"]
    exported = folders["fresh"] / "exported.yaml"  # `export` reads the MLflow store the bucket keeps
    assert cli.main(["export", "--run-id", parent, "--storage", storage, "-o", str(exported)]) == 0
    assert yaml.safe_load(exported.read_text())["lr"] == yaml.safe_load(best.read_text())["lr"]
    assert train.main(["--config", str(best), "--no-mlflow", "--no-progress", "--set", "epochs=1",
                       "--set", f"output_dir={folders['fresh'] / 'runs'}"]) == 0
    assert list((folders["fresh"] / "runs").rglob("*.yaml"))


def test_object_storage_that_cannot_be_used_stops_the_study_before_anything(s3_server, tmp_path, monkeypatch, capsys):
    """An unreachable endpoint, no credentials, a bucket that does not exist, a command that
    cannot use object storage: one error line naming the URI, exit 2, nothing written (no
    working copy, nothing in the bucket)."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    monkeypatch.setenv("BMLR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    run = ["--search-space", str(space), "--samples", "1", "--name", "never", "-v", "0"]
    cases = [({}, "s3://nothing-here/runs", "bucket 'nothing-here' not found"),
             ({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}, "s3://studies/runs", "cannot reach it"),
             ({"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
               "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")},
              "s3://studies/runs", "no AWS credentials found")]
    for env, storage, said in cases:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.delenv(key, raising=False) if value is None else m.setenv(key, value)
            assert cli.main([*run, "--storage", storage]) == 2
        err = capsys.readouterr().err
        assert f"error: --storage {storage}: " in err and said in err, err
    assert cli.main([*run[:4], "--name", "../escape", "--storage", "s3://studies/runs"]) == 2
    assert "'../escape': expected a plain folder name" in capsys.readouterr().err
    assert cli.main(["compare", "--methods", "baseline", "bmlr", "--storage", "s3://studies/runs"]) == 2
    assert "`bmlr-tune compare` needs a folder" in capsys.readouterr().err
    assert _bucket_files(s3_server["fs"], "studies") == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


def test_lease_on_object_storage_keeps_a_second_driver_out_until_it_is_released_or_stale(s3_server, monkeypatch):
    """The one-driver rule without flock: a fresh lease names its holder to a second driver; a
    released one, or one whose heartbeat stopped (a killed driver), lets the next driver in."""
    from bmlr.tuning import remote
    from bmlr.tuning.store import StudyBusy

    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    mirror = remote.Mirror("s3://studies/runs", "synthetic/leased")
    first = remote.Lease(mirror).acquire(StudyBusy)
    assert _bucket_files(s3_server["fs"], "studies/runs/synthetic/leased") == {".driver.lease": mock.ANY}
    with pytest.raises(StudyBusy, match=f"being run by PID {os.getpid()} on {socket.gethostname()}"):
        remote.Lease(mirror).acquire(StudyBusy)
    first.release()
    assert _bucket_files(s3_server["fs"], "studies/runs/synthetic/leased") == {}
    second = remote.Lease(mirror).acquire(StudyBusy)
    second._stop.set()  # a killed driver: no more heartbeats
    second._thread.join()
    with s3_server["fs"].open_output_stream(second.path) as f:
        f.write(json.dumps({**second.holder, "heartbeat": time.time() - 5 * remote.HEARTBEAT_S}).encode())
    remote.Lease(mirror).acquire(StudyBusy).release()


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
