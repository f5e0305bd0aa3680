"""Data sets: registry, audio-visual clip loading, spectrogram cache and the synthetic default.

Importing this package registers every data set in ``DATASETS``. The modules depend on each
other one way: ``types`` (errors and records) <- ``audio``, ``frames``, ``jobs`` <- ``cache``,
``video`` <- ``base`` (split builders) <- ``registry`` <- the data sets <- ``prepare``.
"""
from __future__ import annotations

from . import ave, avmnist, cremad, ks, mosi, synthetic  # noqa: F401  (registration on import)
from . import manifest  # noqa: F401  (registration on import: dataset 'manifest')
from .audio import SpectrogramParams, compute_spectrogram, expected_shape
from .base import AudioVisualDataset, read_split_csv, stratified_split
from .cache import SpectrogramStore, cache_root, params_key
from .frames import load_frames, sample_frame_indices
from .registry import DATASETS, build_datasets, check_splits
from .types import ClipRecord, DataError, DataSplits, ModalitySpec

__all__ = [
    "DATASETS",
    "DataSplits",
    "ModalitySpec",
    "build_datasets",
    "check_splits",
    "DataError",
    "ClipRecord",
    "AudioVisualDataset",
    "read_split_csv",
    "stratified_split",
    "SpectrogramParams",
    "compute_spectrogram",
    "expected_shape",
    "SpectrogramStore",
    "cache_root",
    "params_key",
    "load_frames",
    "sample_frame_indices",
]
