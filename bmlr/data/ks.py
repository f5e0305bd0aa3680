"""Kinetics-Sounds: the 31 Kinetics-400 classes with sound (Arandjelovic & Zisserman 2017's 34
"Kinetics-Sounds" classes, less the three Kinetics-400 lacks: fingerpicking, patting, typing),
as used by OGM-GE and its successors.

Layout read (``data_root``), pinned here and in docs/data.md::

    <root>/
    ├── classes.txt            the 31 class names of CLASS_NAMES, one per line (any order)
    ├── train.csv              rows ``clip,class name``, no header (UTF-8, BOM tolerated)
    ├── test.csv               same format
    ├── audio/<clip>.wav       one wav per clip
    ├── frames/<clip>/*.jpg    frames at 1 fps, file order = time order
    └── videos/<clip>.mp4      only needed to extract missing audio / frames (any of .mp4 .mkv
                               .webm .avi .mov .flv)

``clip`` is any id without ``/`` or ``,`` (the usual ``<youtube id>_<start>_<end>``). Labels follow
the sorted CLASS_NAMES (index 0 = "blowing nose"). The class file must name exactly these 31
classes: a data set built on another class list is a different data set. Validation is carved out
of train (stratified, ``val_fraction``, ``split_seed``).

Spectrograms (10 s clips): 16,000 Hz, tiled / cropped to 10 s, STFT n_fft 512, hop 160,
``log(|X| + 1e-7)``: 257 x 1001 (1 MB per clip in the cache).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bmlr.data.audio import SpectrogramParams
from bmlr.data.base import (build_clip_splits, in_folders, read_data_text, read_split_csv, require_root,
                            source_name)
from bmlr.data.registry import DATASETS
from bmlr.data.types import DataError, DataSplits
from bmlr.data.video import VideoJob, extracted_folders, jobs_for_videos

__all__ = ["CLASS_NAMES", "SPECTROGRAM_PARAMS", "AUDIO_RATE", "build_ks", "read_class_file", "video_jobs"]

CLASS_NAMES = sorted([
    "blowing nose", "blowing out candles", "bowling", "chopping wood", "dribbling basketball", "laughing",
    "mowing lawn", "playing accordion", "playing bagpipes", "playing bass guitar", "playing clarinet",
    "playing drums", "playing guitar", "playing harmonica", "playing keyboard", "playing organ",
    "playing piano", "playing saxophone", "playing trombone", "playing trumpet", "playing violin",
    "playing xylophone", "ripping paper", "shoveling snow", "shuffling cards", "singing", "stomping grapes",
    "tap dancing", "tapping guitar", "tapping pen", "tickling",
])
assert len(CLASS_NAMES) == 31
AUDIO_RATE = 16000
SPECTROGRAM_PARAMS = SpectrogramParams(sample_rate=AUDIO_RATE, duration_s=10.0, n_fft=512, hop_length=160)
CLASS_FILE = "classes.txt"


def read_class_file(path: Path, expected: list[str]) -> list[str]:
    """The class names of ``path`` (one per line); they must be exactly ``expected``."""
    text = read_data_text(path, "class list file", f"expected the {len(expected)} class names, one per line")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    unknown = sorted(set(names) - set(expected))
    missing = sorted(set(expected) - set(names))
    if unknown or missing or len(names) != len(expected):
        raise DataError(f"{path}: expected exactly the {len(expected)} pinned classes (docs/data.md); "
                        f"unknown {unknown[:5]}, missing {missing[:5]}, {len(names)} lines")
    return list(expected)


def video_jobs(cfg: Any) -> list[VideoJob]:
    """Audio (16 kHz mono wav) and 1-fps frames for every video in ``videos/`` lacking either."""
    root = require_root(cfg, "Kinetics-Sounds")
    return jobs_for_videos(root, root / "videos", AUDIO_RATE)


@DATASETS.register("ks")
def build_ks(cfg: Any) -> DataSplits:
    root = require_root(cfg, "Kinetics-Sounds")
    classes = read_class_file(root / CLASS_FILE, CLASS_NAMES)
    audio, frames = extracted_folders(root, "ks", "Kinetics-Sounds", "clip", "videos/")
    train_rows = read_split_csv(root / "train.csv", classes)
    test_rows = read_split_csv(root / "test.csv", classes)
    splits = build_clip_splits(
        cfg, root=root, class_names=classes, params=SPECTROGRAM_PARAMS, source=source_name("ks", root),
        train_rows=train_rows, test_rows=test_rows,
        locate=in_folders(audio, frames),
        split_names=(str(root / "train.csv"), "carved from train.csv", str(root / "test.csv")))
    splits.info = {"dataset": "ks", **splits.info}
    return splits
