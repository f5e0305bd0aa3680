"""CREMA-D (Cao et al. 2014): 7,442 clips of 91 actors, 6 emotions; audio + 1-fps frames.

Layout read (``data_root``; the layout of the OGM-GE code base and its successors)::

    <root>/
    ├── AudioWAV/1001_DFA_ANG_XX.wav          one wav per clip (16 kHz in the release)
    ├── Image-01-FPS/1001_DFA_ANG_XX/*.jpg    frames at 1 fps, file order = time order
    │                                         (``Frames/`` is accepted instead)
    ├── VideoFlash/1001_DFA_ANG_XX.flv        only needed to extract missing frame folders
    ├── train.csv                             rows ``clip,LABEL``, no header (6,698 rows in the common split)
    └── test.csv                              (744 rows)

Labels are ``NEU HAP SAD FEA DIS ANG`` (indices 0-5, the OGM-GE order). Validation is carved out
of train (stratified, ``val_fraction``, ``split_seed``). Spectrograms: 22,050 Hz, the clip tiled to
3 s, STFT n_fft 512, hop 353, ``log(|X| + 1e-7)``: 257 x 188.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bmlr.data.audio import SpectrogramParams
from bmlr.data.base import build_clip_splits, in_folders, read_split_csv, require_root, source_name
from bmlr.data.registry import DATASETS
from bmlr.data.types import DataError, DataSplits
from bmlr.data.video import VideoJob, find_videos

__all__ = ["CLASS_NAMES", "SPECTROGRAM_PARAMS", "FRAME_DIRS", "COMMON_SPLIT", "build_cremad", "video_jobs"]

CLASS_NAMES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
SPECTROGRAM_PARAMS = SpectrogramParams(sample_rate=22050, duration_s=3.0, n_fft=512, hop_length=353)
FRAME_DIRS = ("Image-01-FPS", "Frames")
AUDIO_DIR = "AudioWAV"
VIDEO_DIR = "VideoFlash"
COMMON_SPLIT = {"train": 6698, "test": 744}


def frames_dir(root: Path, create: bool = False) -> Path:
    for name in FRAME_DIRS:
        if (root / name).is_dir():
            return root / name
    if create:
        return root / FRAME_DIRS[0]
    raise DataError(f"CREMA-D: no frame folder in {root}; expected {root / FRAME_DIRS[0]}/<clip>/*.jpg "
                    f"(or {FRAME_DIRS[1]}/); extract it from {VIDEO_DIR}/ with "
                    f"`python -m bmlr.data.prepare --dataset cremad --root {root}`")


def video_jobs(cfg: Any) -> list[VideoJob]:
    """Frame extraction (1 fps) for every video in ``VideoFlash/`` whose frame folder is missing."""
    root = require_root(cfg, "CREMA-D")
    target = frames_dir(root, create=True)
    return [VideoJob(clip, str(video), frames_dir=str(target / clip))
            for clip, video in find_videos(root / VIDEO_DIR).items()]


@DATASETS.register("cremad")
def build_cremad(cfg: Any) -> DataSplits:
    root = require_root(cfg, "CREMA-D")
    if not (root / AUDIO_DIR).is_dir():
        raise DataError(f"CREMA-D: audio folder not found: {root / AUDIO_DIR} (expected {AUDIO_DIR}/<clip>.wav)")
    frames = frames_dir(root)
    train_rows = read_split_csv(root / "train.csv", CLASS_NAMES)
    test_rows = read_split_csv(root / "test.csv", CLASS_NAMES)
    splits = build_clip_splits(
        cfg, root=root, class_names=CLASS_NAMES, params=SPECTROGRAM_PARAMS, source=source_name("cremad", root),
        train_rows=train_rows, test_rows=test_rows,
        locate=in_folders(root / AUDIO_DIR, frames),
        split_names=(str(root / "train.csv"), "carved from train.csv", str(root / "test.csv")))
    splits.info = {"dataset": "cremad", **splits.info,
                   "common_split": (len(train_rows), len(test_rows)) == (COMMON_SPLIT["train"], COMMON_SPLIT["test"])}
    return splits
