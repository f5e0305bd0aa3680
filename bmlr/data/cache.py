"""On-disk cache of preprocessed inputs, keyed by a hash of the preprocessing parameters.

Layout under the cache root (``cfg.cache_dir``, else ``$BMLR_CACHE``, else ``~/.cache/bmlr``)::

    spectrograms/<dataset>/<params_key>/params.json      the parameters that made the arrays
    spectrograms/<dataset>/<params_key>/<clip_id>.npy    float32 [F, T], one per clip
    synthetic/v1-seed<seed>/                            the generated synthetic data set

Writes are atomic (:func:`bmlr.fileio.atomic_path`: a temporary file in the same folder, then
``os.replace``), so a killed run
never leaves a truncated array: the next ``ensure`` computes exactly the missing clips and a
run whose cache is complete computes nothing. Arrays are read with ``np.load(mmap_mode="r")``
and never recomputed per epoch. Changing any parameter changes ``params_key`` and so the folder.
The cache does not watch the source wav files: after editing them, delete the folder.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from bmlr.data.audio import SpectrogramParams, compute_spectrogram, expected_shape
from bmlr.data.frames import decode_image
from bmlr.data.jobs import run_jobs
from bmlr.data.types import ClipRecord, DataError
from bmlr.fileio import TMP_MARK, atomic_path, atomic_write_text

__all__ = ["cache_root", "params_key", "atomic_save_npy", "SpectrogramStore", "LiveSpectrograms"]

STALE_TMP_S = 600.0  # temp files older than this are leftovers of a killed run


def cache_root(cfg: Any = None) -> Path:
    """``cfg.cache_dir`` if set, else ``$BMLR_CACHE``, else ``~/.cache/bmlr``."""
    configured = getattr(cfg, "cache_dir", None) if cfg is not None else None
    root = configured or os.environ.get("BMLR_CACHE") or os.path.join("~", ".cache", "bmlr")
    return Path(os.path.expanduser(str(root)))


def params_key(obj: Any, length: int = 12) -> str:
    """Short sha1 hex of the canonical JSON (sorted keys) of a dataclass or mapping."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:length]


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to a temporary file beside ``path``, then ``os.replace`` it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array))


def _check_clip_id(clip_id: str) -> str:
    if not clip_id or clip_id in (".", "..") or "/" in clip_id or "\\" in clip_id or clip_id.startswith("."):
        raise DataError(f"clip id {clip_id!r} cannot be used as a cache file name")
    return clip_id


class SpectrogramStore:
    """One ``.npy`` spectrogram per clip under ``<cache_dir>/spectrograms/<dataset>/<params_key>/``.

    ``cache_dir`` is the cache root; ``dataset`` names the source of the clips (two sources with
    the same clip ids must use different names).
    """

    def __init__(self, cache_dir: str | os.PathLike, params: SpectrogramParams, dataset: str = "default"):
        if not dataset or "/" in dataset or "\\" in dataset or dataset in (".", ".."):
            raise ValueError(f"bad dataset name for the cache: {dataset!r}")
        self.params = params
        self.dataset = dataset
        self.key = params_key(params)
        self.directory = Path(cache_dir) / "spectrograms" / dataset / self.key
        self.shape = expected_shape(params)
        self.failed: dict[str, str] = {}  # clip id -> problem, from ensure(skip_bad=True)

    def path(self, clip_id: str) -> Path:
        return self.directory / f"{_check_clip_id(clip_id)}.npy"

    def has(self, clip_id: str) -> bool:
        return self.path(clip_id).is_file()

    def _write_params(self) -> None:
        meta = self.directory / "params.json"
        if not meta.is_file():
            atomic_write_text(meta, json.dumps({"dataset": self.dataset, "key": self.key,
                                                "params": dataclasses.asdict(self.params),
                                                "shape": list(self.shape)}, indent=2) + "\n")

    def _remove_stale_tmp(self) -> None:
        now = time.time()
        for entry in os.scandir(self.directory):
            if TMP_MARK in entry.name:
                try:
                    if now - entry.stat().st_mtime > STALE_TMP_S:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    continue  # another process finished or removed it meanwhile: nothing left to clean

    def compute(self, record: ClipRecord) -> np.ndarray:
        """Compute (not cache) one clip's spectrogram."""
        return compute_spectrogram(record.audio_path, self.params)

    def compute_and_save(self, record: ClipRecord, verify_frames: bool = False) -> None:
        """Compute, check and atomically save one clip (:class:`DataError` naming the file).

        Frames are fully decoded first (``verify_frames``), so a clip whose array is in the cache
        has been checked whole."""
        if verify_frames:
            for frame in record.frame_paths:
                decode_image(frame)
        spec = self.compute(record)
        if tuple(spec.shape) != tuple(self.shape):
            raise DataError(f"spectrogram of {record.audio_path} has shape {tuple(spec.shape)}, "
                            f"expected {tuple(self.shape)}")
        atomic_save_npy(self.path(record.clip_id), spec)

    def ensure(self, records: Iterable[ClipRecord], workers: int = 1, skip_bad: bool = False,
               progress: bool | None = None, verify_frames: bool = False) -> int:
        """Compute and save the spectrograms that are missing; return how many were computed.

        Existing arrays are not touched, so an interrupted run resumes where it stopped and a
        complete cache costs nothing. ``workers > 1`` computes in that many processes (forked:
        librosa holds the GIL for much of the work). ``verify_frames`` also decodes every frame
        image of each clip it computes. With ``skip_bad=True`` a bad clip is recorded in
        ``self.failed`` (clip id -> problem) instead of raising :class:`DataError`. ``progress``
        shows a bar (default: when 500 or more clips are missing).
        """
        records = list(records)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write_params()
        self._remove_stale_tmp()
        missing = [r for r in records if not self.has(r.clip_id)]
        if not missing:
            return 0
        if min(int(workers or 1), len(missing)) > 1:
            _warm_up_librosa(self.params)  # once here, not once per forked worker
        done, failed = run_jobs(missing, functools.partial(_work_in_process, self, verify_frames=verify_frames),
                                lambda r: r.clip_id, workers=workers, skip_bad=skip_bad,
                                progress=len(missing) >= 500 if progress is None else progress,
                                desc=f"spectrograms {self.dataset}")
        self.failed.update(failed)
        return done

    def load(self, clip_id: str) -> np.ndarray:
        """The cached ``float32 [F, T]`` array, memory-mapped read-only (never computed here)."""
        path = self.path(clip_id)
        try:
            array = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise DataError(f"spectrogram of clip {clip_id!r} is not in the cache ({path}); "
                            "build the data set (SpectrogramStore.ensure) first") from None
        except (ValueError, OSError) as e:
            raise DataError(f"corrupt cached spectrogram {path}: {e}; delete it and rebuild") from None
        if tuple(array.shape) != tuple(self.shape):
            raise DataError(f"cached spectrogram {path} has shape {tuple(array.shape)}, "
                            f"expected {tuple(self.shape)}; delete it and rebuild")
        return array


def _warm_up_librosa(params: SpectrogramParams) -> None:
    """Import librosa's lazily loaded modules and run one tiny STFT (about 2 s the first time)."""
    import librosa

    librosa.load  # noqa: B018  (lazy attribute import)
    librosa.stft(np.zeros(2 * params.n_fft, dtype=np.float32), n_fft=params.n_fft, hop_length=params.hop_length)


def _work_in_process(store: SpectrogramStore, record: ClipRecord, verify_frames: bool) -> str | None:
    """One clip of :meth:`SpectrogramStore.ensure`; a :class:`DataError` comes back as its text."""
    try:
        store.compute_and_save(record, verify_frames)
    except DataError as e:
        return str(e)
    return None


class LiveSpectrograms:
    """Computes every spectrogram when it is read (no cache): the slow path, for benchmarks and
    for checking that the cache holds exactly what the computation gives. Same ``load`` as
    :class:`SpectrogramStore`; needs the records to find each clip's wav."""

    def __init__(self, records: Iterable[ClipRecord], params: SpectrogramParams):
        self.params = params
        self.shape = expected_shape(params)
        self.paths = {r.clip_id: r.audio_path for r in records}

    def load(self, clip_id: str) -> np.ndarray:
        return compute_spectrogram(self.paths[clip_id], self.params)
