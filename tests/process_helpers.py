"""Helpers for tests that start real processes (tune.py drivers, bmlr.train)."""
from __future__ import annotations

import os
import signal
import subprocess


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
