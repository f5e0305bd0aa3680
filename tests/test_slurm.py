"""cluster/slurm.sbatch: a study on a Ray cluster inside one SLURM job.

Without SLURM (the test runs only there; `.ci/run` installs Debian's slurm-wlm): the script itself, on one node (the head, no workers), with the job's variables
set here and `srun`/`scontrol` replaced by two tiny stand-ins first on PATH (`srun` drops its
options and runs the command on this machine, `scontrol show hostnames` prints the node list).
Ray and the study are real. The job must end with rc 0, the study's best.yaml, and none of the
Ray processes it started left running.

With SLURM (Debian's slurm-wlm installed, run as root): a one-machine SLURM cluster of this
test's own (munged, slurmctld, slurmd; configuration, key, state and logs in a temporary folder)
and the same job submitted with `sbatch --wait`: the real `srun` and `scontrol`. Skipped with the
reason where SLURM is not installed.

Everything started here runs in its own process group and is killed by that id (and by the
process ids that name this test's own folders), even when the test fails.
"""
from __future__ import annotations

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

from process_helpers import kill_naming, pids_naming

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "slurm.sbatch"
BIN = Path(sys.executable).parent
TINY_FIXED = {"model_width": 4, "model_depth": 1, "image_size": 32, "frames": 2, "batch_size": 16,
              "val_fraction": 0.3, "epochs": 2, "seeds": [0]}
SPACE = {"search": {"beta": {"uniform": [0.1, 0.9]}, "lr": {"loguniform": [1.0e-3, 1.0e-2]}}, "fixed": TINY_FIXED}
SHIMS = {
    "scontrol": '[ "$1 $2" = "show hostnames" ] || { echo "scontrol stand-in: only show hostnames" >&2; exit 2; }\n'
                'echo "$3" | tr , "\\n"\n',
    "srun": 'while [ $# -gt 0 ]; do\n  case $1 in -w|-x|-N|-n|-c) shift 2 ;; -*) shift ;; *) break ;; esac\n'
            'done\nexec "$@"\n',
}
TINY_STUDY = ["--samples", "1", "--max-epochs", "1", "--grace-period", "1", "--name", "slurm", "-v", "0",
              "--report", "none", "--no-references"]


def _tiny_study_args(base: Path) -> list[str]:
    from bmlr.data.synthetic import generate

    data = generate(base / "data", seed=0, n_train_per_class=6,
        n_test_per_class=1, n_val_per_class=1, image_size=32, n_frames=2)
    space = base / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return ["--data-root", str(data), "--search-space", str(space), "--storage", str(base / "runs"),
            "--set", f"cache_dir={base / 'cache'}", *TINY_STUDY]


def _env(ray_temp_dir: str, *path_first: Path) -> dict:
    """The job's environment: this one without SLURM's variables, a Ray address or MLflow's URI,
    `path_first` and this Python's scripts first on PATH, Ray's token authentication as the
    script sets it (RAY_AUTH_MODE unset), a free port and a short Ray session folder of our own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")
           and k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "MLFLOW_TRACKING_URI")}
    env.update(PATH=os.pathsep.join([*map(str, path_first), str(BIN), env.get("PATH", "")]),
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", BMLR_RAY_PORT=str(port), BMLR_RAY_TEMP_DIR=ray_temp_dir,
               BMLR_RAY_ARGS=f"--object-store-memory={100 * 1024 ** 2}")
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _kill(proc: subprocess.Popen, *markers: str) -> None:
    """SIGKILL to the process group we started and to anything naming one of our folders."""
    kill_naming(*markers)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(10)


@pytest.mark.slow
def test_the_sbatch_script_runs_a_study_on_a_one_node_ray_cluster_without_slurm(tmp_path):
    if _slurm_missing() is None:  # CI installs slurm-wlm: one test of the script is enough there
        pytest.skip("SLURM is installed: the job test below runs the script with the real srun and scontrol")
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, body in SHIMS.items():
        (shims / name).write_text("#!/bin/sh\n" + body)
        (shims / name).chmod(0o755)
    temp_dir = tempfile.mkdtemp(prefix="bmlr-sl-", dir="/tmp")  # short: Ray's socket paths have a limit
    env = _env(temp_dir, shims)  # what sbatch sets for a one-node job of 1 CPU
    env.update(SLURM_JOB_NODELIST="localhost", SLURM_JOB_NUM_NODES="1", SLURM_JOB_ID="1", SLURM_CPUS_PER_TASK="1")
    proc = subprocess.Popen(["bash", str(SCRIPT), *_tiny_study_args(tmp_path)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-4000:]
        assert "1 Ray node(s) up" in out and "'CPU': 1.0" in out, out[-4000:]  # the job's CPUs, not the machine's
        assert (tmp_path / "runs" / "synthetic" / "slurm" / "best.yaml").is_file(), out[-4000:]
        deadline = time.monotonic() + 10  # Ray's last workers exit once they see their raylet gone
        while (_group_alive(proc.pid) or pids_naming(temp_dir)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _group_alive(proc.pid), "processes of the job are still running"
        assert pids_naming(temp_dir) == [], "processes of the job's Ray session are still running"
    finally:
        _kill(proc, temp_dir, str(tmp_path))
        shutil.rmtree(temp_dir, ignore_errors=True)


# --- a one-machine SLURM cluster ---------------------------------------------------------------
SLURM_CONF = """ClusterName=bmlrtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=4
KillWait=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
# MinJobAge: small, so that `sbatch --wait` keeps polling every 2 s (a 7 s job: 8 s, against 10 s
# with the default); KillWait: a cancelled step's time between SIGTERM and SIGKILL


def _slurm_missing() -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [c for c in ("sbatch", "sinfo", "slurmctld", "slurmd", "munged") if not shutil.which(c, path=path)]
    if missing:
        return (f"SLURM is not installed here (no {', '.join(missing)}; Debian: apt-get install slurm-wlm): "
                "the one-machine SLURM cluster cannot start")
    if os.geteuid() != 0:
        return "the one-machine SLURM cluster runs slurmd, which must run as root"
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def one_machine_slurm():
    """munged, slurmctld and slurmd on this machine, every file in a temporary folder (its own
    munge key, ports, state and logs): one node of this machine's CPUs in partition `debug`.
    Yields the environment that reaches it (SLURM_CONF)."""
    reason = _slurm_missing()
    if reason:
        pytest.skip(reason)
    sbin = os.pathsep.join(["/usr/sbin", "/sbin", os.environ.get("PATH", "")])
    d = Path(tempfile.mkdtemp(prefix="bmlr-slurm-", dir="/tmp"))  # short: the munge socket's path
    d.chmod(0o755)
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    key = d / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = _free_ports(2)
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, d=d, ctld_port=ctld_port, slurmd_port=slurmd_port,
                                      cpus=os.cpu_count() or 1))
    env = dict(os.environ, SLURM_CONF=str(conf), PATH=sbin)
    daemons = [
        ["munged", "--foreground", "--force", f"--socket={d}/munge.sock", f"--key-file={key}",
         f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"],
        ["slurmctld", "-D", "-f", str(conf)],
        ["slurmd", "-D", "-f", str(conf), "-N", host],
    ]
    procs: list[subprocess.Popen] = []
    try:
        for cmd in daemons:
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
            if cmd[0] == "munged":
                deadline = time.monotonic() + 10
                while not (d / "munge.sock").exists():
                    assert procs[0].poll() is None and time.monotonic() < deadline, "munged did not start"
                    time.sleep(0.1)
        deadline = time.monotonic() + 30
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            logs = "".join(p.read_text()[-1500:] for p in (d / "slurmctld.log", d / "slurmd.log") if p.exists())
            assert all(p.poll() is None for p in procs), f"a SLURM daemon exited: {logs}"
            assert time.monotonic() < deadline, f"the SLURM node is not idle in 30 s ({state!r}): {logs}"
            time.sleep(0.2)
        yield {"SLURM_CONF": str(conf), "dir": d}
    finally:
        if procs:  # a job a failed test left: the batch script names the spool folder, the study tmp_path
            subprocess.run(["scancel", "--user=root"], env=env, capture_output=True, timeout=30)
        kill_naming(str(d))
        for proc in reversed(procs):
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_the_sbatch_script_runs_a_study_as_a_slurm_job(one_machine_slurm, tmp_path):
    """`sbatch --wait cluster/slurm.sbatch ARGS` on a one-machine SLURM cluster: the real srun and
    scontrol, one node, no GPU (the script asks for GPUs: --gpus-per-task=0 on the command line)."""
    temp_dir = tempfile.mkdtemp(prefix="bmlr-sj-", dir="/tmp")
    env = dict(_env(temp_dir), SLURM_CONF=one_machine_slurm["SLURM_CONF"])
    log = tmp_path / "job.out"
    cmd = ["sbatch", "--wait", "--nodes=1", "--cpus-per-task=1", "--gpus-per-task=0", f"--output={log}",
           str(SCRIPT), *_tiny_study_args(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
        job = log.read_text() if log.exists() else ""
        assert proc.returncode == 0, out + job[-4000:]
        assert "1 Ray node(s) up" in job and "'CPU': 1.0" in job, job[-4000:]
        assert (tmp_path / "runs" / "synthetic" / "slurm" / "best.yaml").is_file(), job[-4000:]
        deadline = time.monotonic() + 10
        while pids_naming(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pids_naming(temp_dir) == [], "processes of the job's Ray session are still running"
    finally:
        _kill(proc, temp_dir, str(tmp_path))
        shutil.rmtree(temp_dir, ignore_errors=True)
