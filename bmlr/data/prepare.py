"""Preprocess a data set once: ``python -m bmlr.data.prepare --dataset X --root DIR``.

1. Video data sets (cremad, ks, ave): extract the missing frame folders (1 fps) and, for ks and
   ave, the missing wav files from the videos, with PyAV (:mod:`bmlr.data.video`).
2. Compute every missing spectrogram with librosa into the cache (``--cache-dir``, else
   ``$BMLR_CACHE``, else ``~/.cache/bmlr``), in a folder keyed by the preprocessing parameters,
   decoding each new clip's frames on the way; in ``--workers`` processes, with a progress bar.
3. Build the data set as training will (split files, validation carved out of train, shapes and
   class counts checked) and print the split sizes.

Every output is written atomically, so an interrupted run leaves nothing half written and the
next run resumes; a second run over a complete cache does no work. Problems raise an error that
names the file and exits with status 2; ``--skip-bad`` skips bad clips instead and reports how
many and which. Training (``bmlr.train``) reads the same cache and never recomputes it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types
from typing import Any, Callable

from bmlr.config import ConfigError, from_dict
from bmlr.data import ave, cremad, ks
from bmlr.data.registry import build_datasets
from bmlr.data.types import DataError
from bmlr.data.video import VideoJob, extract_videos

__all__ = ["prepare", "main", "VIDEO_JOBS"]

#: data sets whose preprocessing starts from videos: name -> its ``video_jobs(cfg)``
VIDEO_JOBS: dict[str, Callable[[Any], list[VideoJob]]] = {
    "cremad": cremad.video_jobs, "ks": ks.video_jobs, "ave": ave.video_jobs}


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def prepare(dataset: str, root: str | None, cache_dir: str | None = None, workers: int | None = None,
            skip_bad: bool = False, progress: bool = True, out=None) -> dict[str, Any]:
    """Run the three steps above; return a summary (also printed to ``out``, default stdout)."""
    out = out or sys.stdout
    cfg = from_dict({"dataset": dataset, "data_root": root, "cache_dir": cache_dir, "skip_bad": skip_bad},
                    source="bmlr.data.prepare")
    # as num_workers: -1 (or None) from the CPUs, 0 none (this process does the work), N processes
    workers = available_cores() if workers is None or int(workers) < 0 else max(1, int(workers))
    ns = types.SimpleNamespace(**cfg.to_dict(), prepare_workers=workers, progress=progress)
    summary: dict[str, Any] = {"dataset": dataset, "root": root, "workers": workers}
    start = time.time()
    print(f"prepare {dataset}: root {root}, {workers} worker process(es)", file=out, flush=True)
    if dataset in VIDEO_JOBS:
        jobs = VIDEO_JOBS[dataset](ns)
        extracted, failed = extract_videos(jobs, workers=workers, skip_bad=skip_bad, progress=progress)
        summary.update(videos=len(jobs), videos_extracted=extracted, videos_failed=len(failed))
        line = f"  videos: {len(jobs)} found, {extracted} extracted now, {len(jobs) - extracted - len(failed)} already done"
        if failed:
            line += f", {len(failed)} unreadable (skipped): {', '.join(sorted(failed)[:5])}"
        print(line, file=out, flush=True)
    data = build_datasets(ns)
    info = dict(data.info)
    summary.update(info=info, seconds=time.time() - start)
    if "spectrograms_computed" in info:
        print(f"  spectrograms: {info['spectrograms_computed']} computed now, cache {info.get('cache')}",
              file=out, flush=True)
    shapes = ", ".join(f"{m} {spec.kind} {tuple(spec.shape)}" for m, spec in data.modalities.items())
    print(f"  splits: train {len(data.train)} / val {len(data.val)} / test {len(data.test)}; "
          f"{data.num_classes} classes; {shapes}", file=out, flush=True)
    if info.get("skipped"):
        print(f"  skipped {info['skipped']} bad clips, first: {', '.join(info.get('skipped_clips', []))}",
              file=out, flush=True)
    print(f"  done in {summary['seconds']:.1f} s", file=out, flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bmlr-prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="cremad, ks, ave, avmnist, mosi, mosei or synthetic")
    parser.add_argument("--root", help="the data set's folder (docs/data.md shows each layout)")
    parser.add_argument("--cache-dir", help="cache root (default: $BMLR_CACHE, else ~/.cache/bmlr)")
    parser.add_argument("--workers", type=int, default=-1,
                        help="worker processes, as num_workers counts them: -1 one per available core, 0 none "
                        "(this process does the work), N processes")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip and count bad clips instead of stopping at the first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.workers < -1:
        parser.error("--workers must be -1 (one per core), 0 (none) or more")
    try:
        prepare(args.dataset, args.root, args.cache_dir, args.workers, args.skip_bad,
                progress=not args.no_progress)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
