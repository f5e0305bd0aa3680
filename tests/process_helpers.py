"""Helpers for tests that start real processes (tune.py drivers, bmlr.train)."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def stop_process(proc: subprocess.Popen, timeout: float = 40) -> None:
    """Stop a process we started (and its process group: it was started in its own session)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of our own process group only
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(10)


def pids_naming(marker: str) -> list[int]:
    """Processes (other than this one) whose command line names ``marker``: a test's own, unique
    Ray session folder, say, so that what a test started is found even after it left its group."""
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


def kill_naming(*markers: str) -> None:
    """SIGKILL to every process whose command line names one of ``markers``."""
    for marker in markers:
        for pid in pids_naming(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
