"""What a study does when the machine fails it rather than the user: a full disk, a terminal
that hangs up, an interrupt that leaves no results. Each turns into what the first Ctrl-C
already gives: whole records, every run ended, and one line saying how to continue.

* :func:`stops_on_full_disk`: a full disk (the study folder, Ray's experiment, the MLflow
  store; here or in a callback Ray runs) stops the study with one :class:`StudyError` line,
  the study's runs ended FAILED where the store still takes it.
* :func:`terminal_may_go` and :func:`output_gone`: a closed terminal (SIGHUP, an SSH session
  gone) must not stop the records from being written.
* :func:`resume_line`: the command that continues a study, its paths quoted.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shlex
from pathlib import Path
from typing import Callable, Iterator

from bmlr.fileio import write_failure
from bmlr.tuning import tracking
from bmlr.tuning.plan import Plan, StudyError
from bmlr.tuning.ray_backend import RayStartError

__all__ = ["NO_SPACE", "NEARLY_FULL", "terminal_may_go", "output_gone", "resume_line", "no_space_left",
           "stops_on_full_disk"]


def terminal_may_go(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log``, saying nothing once its terminal is gone (a closed terminal or SSH session: a
    hang-up, after which writing to it fails), so the records are still written."""
    def say(line: str) -> None:
        with contextlib.suppress(OSError):
            log(line)

    return say


def output_gone(err: OSError) -> bool:
    """Whether ``err`` is the study's output gone: a closed pipe (EPIPE) or a closed terminal
    (writing to a terminal that hung up fails with EIO, even writing nothing)."""
    if err.filename is not None or err.errno not in (errno.EIO, errno.EPIPE):
        return False
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError as gone:
            if gone.errno in (errno.EIO, errno.EPIPE):
                return True
    return err.errno == errno.EPIPE


def resume_line(plan: Plan) -> str:
    """The command that continues the study."""
    s = plan.settings
    return f"bmlr-tune --dataset {s.dataset} --storage {shlex.quote(str(s.storage))} --name {s.name} --resume"


NO_SPACE = ("no space left on device", "database or disk is full", "disk quota exceeded")


def no_space_left(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from or while handling) is a full disk:
    ``OSError`` ENOSPC / EDQUOT, SQLite's "database or disk is full", or an error whose text
    quotes one (Ray Tune passes a callback's error on as the text of its traceback)."""
    for cause in _chain(err):
        if isinstance(cause, OSError) and write_failure(cause) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(cause).lower() for text in NO_SPACE):
            return True
    return False


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the errors it was raised from or while handling."""
    chain: list[BaseException] = []
    cause: BaseException | None = err
    while cause is not None and all(cause is not seen for seen in chain):
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


NEARLY_FULL = 1 << 20  # bytes free under which a study's records cannot be written whole


def _nearly_full(plan: Plan) -> bool:
    """Whether the file system of the study folder (or of a SQLite MLflow store) has under
    :data:`NEARLY_FULL` bytes free."""
    places = [plan.study_dir]
    if plan.tracking_uri.startswith("sqlite:///"):
        places.append(Path(plan.tracking_uri.removeprefix("sqlite:///")).parent)
    for place in places:
        with contextlib.suppress(OSError):
            stat = os.statvfs(place)
            if stat.f_bavail * stat.f_frsize < NEARLY_FULL:
                return True
    return False


@contextlib.contextmanager
def stops_on_full_disk(plan: Plan) -> Iterator[None]:
    """A full disk (the study folder, Ray's experiment, the MLflow store; here or in a callback
    Ray runs) stops the study with one line: :class:`StudyError` naming the study folder and
    how to continue, the study's runs ended FAILED where the store still takes it. The files
    stay whole (every record is written atomically)."""
    try:
        yield
    except Exception as err:
        # Ray may fail on what a full disk left behind (an empty error.pkl: EOFError) instead
        nearly_full = not isinstance(err, (StudyError, RayStartError)) and _nearly_full(plan)
        if not (no_space_left(err) or nearly_full):
            raise
        where = f"study {plan.study_dir}"
        named = [e.filename for e in _chain(err) if isinstance(e, OSError) and e.filename]
        if named:
            where += f" ({named[0]})"
        elif any("database or disk is full" in str(e) for e in _chain(err)):
            where += f" (MLflow store {plan.tracking_uri})"
        ended = "its MLflow runs ended FAILED"
        if plan.parent_run_id is not None:
            try:
                tracking.end_study_runs(plan.tracking_uri, plan.experiment_id, plan.parent_run_id, "FAILED")
            except Exception as again:  # the store is full too: a resume ends them
                ended = f"its MLflow runs could not be ended ({type(again).__name__}; the store is full)"
        todo = (f"continue with: {resume_line(plan)}" if plan.store.exists()
                else "run the study again")
        raise StudyError(f"no space left on device writing {where}; {ended}; free space and {todo}") from None

