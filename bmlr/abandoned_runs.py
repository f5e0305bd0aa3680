"""Production runs left RUNNING by a process killed outright (kill -9, the OOM killer, a power
loss), found and ended KILLED on the store's next use: see :mod:`bmlr.production_tracking`."""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from bmlr.interrupts import interrupts_held, stderr_line
from bmlr.mlflow_store import client_for

__all__ = ["PID_TAG", "HOST_TAG", "BOOT_TAG", "PIDNS_TAG", "START_TAG", "MACHINE_TAG", "ENDED_BY_TAG",
           "process_tags", "process_gone", "end_abandoned_runs"]

PID_TAG, HOST_TAG, BOOT_TAG = "bmlr.pid", "bmlr.host", "bmlr.boot_id"
PIDNS_TAG, START_TAG, MACHINE_TAG = "bmlr.pid_ns", "bmlr.pid_start", "bmlr.machine_id"
ENDED_BY_TAG = "bmlr.ended_by"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of process ``pid`` from Linux's /proc;
    None where there is no such process or no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime 22
    return fields[0], fields[19]


def _here() -> dict[str, str]:
    """This machine's installation and boot and this process's PID namespace, where Linux tells them."""
    out = {}
    with contextlib.suppress(OSError):
        out[MACHINE_TAG] = Path("/etc/machine-id").read_text().strip()
    with contextlib.suppress(OSError):
        out[BOOT_TAG] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with contextlib.suppress(OSError):
        out[PIDNS_TAG] = os.readlink("/proc/self/ns/pid")
    return out


def process_tags() -> dict[str, str]:
    """This process as tags on the job's run: pid, host, and (Linux) boot, PID namespace, start time."""
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), **_here()}
    stat = _proc_stat(os.getpid())
    if stat:
        tags[START_TAG] = stat[1]
    return tags


def process_gone(tags: dict[str, str]) -> str | None:
    """Why the process named by a run's :func:`process_tags` is demonstrably gone, or None where
    it may still run or cannot be seen from here (another host, another PID namespace, no tags)."""
    pid, host = tags.get(PID_TAG, ""), tags.get(HOST_TAG)
    if not pid.isdigit() or host != socket.gethostname():
        return None
    here = _here()
    if tags.get(MACHINE_TAG) != here.get(MACHINE_TAG):
        return None  # another machine with the same host name, or one that cannot be told apart
    if tags.get(BOOT_TAG) and here.get(BOOT_TAG) and tags[BOOT_TAG] != here[BOOT_TAG]:
        return f"its host {host} restarted since its process {pid} started"
    if tags.get(PIDNS_TAG) != here.get(PIDNS_TAG):
        return None  # a container with the same host name: its processes are not visible here
    stat = _proc_stat(int(pid))
    if stat is None:  # not in /proc (or no /proc, or hidden there): ask the kernel
        alive = _exists(int(pid))
    else:  # a zombie is gone; a later start time: the pid was reused
        alive = stat[0] != "Z" and (not tags.get(START_TAG) or stat[1] == tags[START_TAG])
    return None if alive else f"its process {pid} on {host} was gone"


def _exists(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end it there: cannot tell
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it exists
        return True
    return True


def end_abandoned_runs(uri: str) -> list[str]:
    """End as KILLED the production runs of the store ``uri`` left RUNNING by a process of this
    host that is gone (:func:`process_gone`), their RUNNING seed runs too, each tagged
    `bmlr.ended_by`; prints one line naming them. Returns their run ids. Never fails the caller:
    a store that refuses is reported in one warning line."""
    ended: dict[str, str] = {}  # run id -> why and where
    try:
        with interrupts_held():
            client = client_for(uri)
            ids = [e.experiment_id for e in client.search_experiments()]
            query = (f"tags.run_kind = 'production' and attributes.status = 'RUNNING' "
                     f"and tags.`{HOST_TAG}` = '{socket.gethostname()}'")
            for i in range(0, len(ids), 100):
                for run in client.search_runs(ids[i:i + 100], filter_string=query, max_results=1000):
                    why = process_gone(run.data.tags)
                    if why:
                        _end_killed(client, run, f"ended as KILLED on next use: {why}")
                        ended[run.info.run_id] = f"{why}; folder {run.data.tags.get('run_dir', '?')}"
    except Exception as err:  # the store refused: the new run goes on
        stderr_line(f"warning: could not look for runs left RUNNING at {uri} ({type(err).__name__}: {err})")
    if ended:
        print(f"MLflow: ended as KILLED {len(ended)} production run(s) left RUNNING by a process that is gone: "
              + "; ".join(f"{run_id} ({why})" for run_id, why in ended.items()), flush=True)
    return list(ended)


def _end_killed(client, run, why: str) -> None:
    """``run`` and its RUNNING seed runs KILLED, tagged with ``why``."""
    seeds = client.search_runs([run.info.experiment_id], max_results=1000, filter_string=(
        f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and attributes.status = 'RUNNING'"))
    for r in [*seeds, run]:
        client.set_tag(r.info.run_id, ENDED_BY_TAG, why)
        client.set_terminated(r.info.run_id, "KILLED")
