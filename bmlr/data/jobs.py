"""Preprocessing jobs run once each, in worker processes, with a progress bar.

Both kinds of preprocessing (frames and audio out of videos, spectrograms into the cache) are a
list of independent jobs that each either succeed or fail with a :class:`DataError` whose text
names the file. :func:`run_jobs` runs them and collects the failures; a job function returns
``None`` or the problem's text, so a failure crosses the process boundary as a string.
"""
from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence, TypeVar

from bmlr.data.types import DataError

__all__ = ["run_jobs"]

J = TypeVar("J")


def run_jobs(jobs: Sequence[J], work: Callable[[J], str | None], name: Callable[[J], str], *,
             workers: int = 1, skip_bad: bool = False, progress: bool = False, desc: str = "",
             unit: str = "clip") -> tuple[int, dict[str, str]]:
    """Run ``work(job)`` for every job; return ``(number done, {name(job): problem})``.

    ``workers > 1`` runs that many processes (the work is CPU-bound and holds the GIL), started
    by :func:`pool_context`; ``work`` and the jobs must then be picklable (a module-level
    function or a ``functools.partial`` of one). Without ``skip_bad`` the first problem raises
    :class:`DataError` after the pool is shut down; outputs already written are kept, so the
    next run resumes. ``progress`` shows a tqdm bar labelled ``desc``.
    """
    failed: dict[str, str] = {}
    done = 0
    bar = None
    if progress:
        from tqdm import tqdm  # imported only when a bar is shown
        bar = tqdm(total=len(jobs), desc=desc, unit=unit)

    def settle(job: J, problem: str | None) -> None:
        nonlocal done
        if problem is None:
            done += 1
        elif not skip_bad:
            raise DataError(problem)
        else:
            failed[name(job)] = problem
        if bar is not None:
            bar.update(1)

    try:
        workers = min(max(1, int(workers or 1)), len(jobs))
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers, mp_context=pool_context()) as pool:
                futures = {pool.submit(work, job): job for job in jobs}
                try:
                    for future in as_completed(futures):
                        settle(futures[future], future.result())
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        else:
            for job in jobs:
                settle(job, work(job))
    finally:
        if bar is not None:
            bar.close()
    return done, failed


def pool_context():
    """How worker processes start: from a fork server, a fresh process that has imported the
    preprocessing modules once and forks each worker from there (quick, and no other thread of
    ours holds a lock at the fork). Forking the calling process itself would
    copy only the calling thread, so a lock another thread held (Ray's gRPC threads in a study's
    driver, the AWS SDK's threads once ``--storage s3://`` was checked, a test runner's) would
    stay locked in the child, which could hang. Platforms without a fork server: the default."""
    if "forkserver" not in mp.get_all_start_methods():
        return None
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["bmlr.data.video", "bmlr.data.cache"])
    return context
