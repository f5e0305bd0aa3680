"""Production trainings of a comparison: `bmlr.train` for each row, in this process (one at
a time) or as `python -m bmlr.train` processes (`--jobs` at a time), each into its own log.

A process pool stops what it started when the driver is interrupted: Ctrl-C, and SIGTERM
(a `kill` of the driver), which is turned into the same KeyboardInterrupt while it runs.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

from bmlr.config import Config, ConfigError
from bmlr.data import DataError
from bmlr.train import train
from bmlr.tuning.compare.identity import load_results
from bmlr.tuning.search_space import project_root

__all__ = ["Job", "run_jobs", "sigterm_as_interrupt"]

ERROR_CHARS = 300  # the part of an error message a row keeps
POLL_S = 0.5
STOP_WAIT_S = 30  # how long a terminated training may take to exit before it is killed


@dataclass
class Job:
    """One production training: row `label` trains `cfg` (written to `config_path` for a
    process), its output going to `log_path`."""

    label: str
    cfg: Config
    config_path: Path
    log_path: Path

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.output_dir) / self.cfg.name

    def started(self, log: Callable[[str], None]) -> None:
        cfg = self.cfg
        log(f"[{self.label}] training {cfg.method} ({cfg.epochs} epochs, seeds {cfg.seeds}) -> {self.run_dir} "
            f"(log {self.log_path})")


Done = Callable[[Job, "str | None"], None]  # called as each job ends: (job, None) or (job, error)


def run_jobs(jobs: list[Job], at_once: int, log: Callable[[str], None], done: Done) -> None:
    """Train every job, `at_once` at a time (1: in this process); `done` hears each outcome."""
    if at_once == 1:
        for job in jobs:
            done(job, _train_here(job, log))
        return
    _train_in_processes(jobs, at_once, log, done)


def _train_here(job: Job, log: Callable[[str], None]) -> str | None:
    """`bmlr.train.train` in this process, its output into the job's log; the error or None."""
    job.started(log)
    started = time.time()
    with job.log_path.open("w") as out, contextlib.redirect_stdout(out):
        try:
            train(job.cfg, progress=False)
            error = None
        except (ConfigError, DataError, ValueError, RuntimeError, FloatingPointError, OSError) as err:
            error = f"{type(err).__name__}: {err}"  # the row fails, the other rows still train
            print(error)
    if error is None and load_results(job.run_dir):
        log(f"[{job.label}] done in {time.time() - started:.0f}s")
        return None
    error = (error or "no results.json")[:ERROR_CHARS]
    log(f"[{job.label}] production training failed: {error}")
    return error


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    out: TextIO
    started: float


def _start(job: Job, env: dict[str, str], log: Callable[[str], None]) -> _Running:
    out = job.log_path.open("w")
    job.started(log)
    proc = subprocess.Popen([sys.executable, "-m", "bmlr.train", "--config", str(job.config_path), "--no-progress",
                             "--no-mlflow"],
                            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(project_root()))
    return _Running(job, proc, out, time.time())


def _finished(run: _Running, log: Callable[[str], None]) -> str | None:
    """The outcome of an ended process: None, or the last line of its log as the error."""
    run.out.close()
    job = run.job
    if run.proc.returncode == 0 and load_results(job.run_dir):
        log(f"[{job.label}] done in {time.time() - run.started:.0f}s")
        return None
    tail = job.log_path.read_text(errors="replace")
    error = (tail.strip().splitlines() or ["no output"])[-1][:ERROR_CHARS]
    log(f"[{job.label}] production training failed (exit {run.proc.returncode}): {error}")
    return error


def _stop(run: _Running) -> None:
    """Terminate a training still running (the driver was interrupted), then kill it if needed."""
    if run.proc.poll() is None:
        run.proc.terminate()
        try:
            run.proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            run.proc.kill()
    run.out.close()


def _train_in_processes(jobs: list[Job], at_once: int, log: Callable[[str], None], done: Done) -> None:
    queue = list(jobs)
    running: list[_Running] = []
    env = dict(os.environ, PYTHONPATH=str(project_root()) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        with sigterm_as_interrupt():
            while queue or running:
                while queue and len(running) < at_once:
                    running.append(_start(queue.pop(0), env, log))
                time.sleep(POLL_S)
                for run in [r for r in running if r.proc.poll() is not None]:
                    running.remove(run)
                    done(run.job, _finished(run, log))
    finally:
        for run in running:  # interrupted: stop what we started
            _stop(run)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside: SIGTERM raises KeyboardInterrupt (like Ctrl-C) instead of ending the
    driver with its trainings left running. Only the main thread can handle signals; in
    another thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
