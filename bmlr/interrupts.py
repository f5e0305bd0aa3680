"""Interrupts and stderr while a job talks to its MLflow store: a Ctrl-C held until a store
call returns (:func:`interrupts_held`), and a line on stderr that never fails
(:func:`stderr_line`). Shared by production tracking and its clean-up of abandoned runs."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

__all__ = ["interrupts_held", "stderr_line"]


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Within the block, a first Ctrl-C is held and handed to the Ctrl-C handler in place once
    the block ends; a second one is handed on at once (a store that hangs can still be left).
    Why: KeyboardInterrupt raised inside an MLflow call can stop a SQLite transaction halfway
    and leave the database locked, so the calls that end the runs KILLED would fail. Off the
    main thread, or where Ctrl-C has no Python handler, it does nothing."""
    handler = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(handler):
        yield
        return
    held: list[int] = []

    def hold(signum, frame) -> None:
        if held:
            handler(signum, frame)
        held.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
    if held:
        handler(signal.SIGINT, None)


def stderr_line(line: str) -> None:
    """One line on stderr; nothing where stderr is gone (a closed terminal: SIGHUP), so that what
    follows (ending the runs) still happens."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)
