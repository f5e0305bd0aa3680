"""AVE, the Audio-Visual Event data set (Tian et al. 2018): 4,143 10-second YouTube videos of
28 event categories; the official split is 3,339 / 402 / 402 train / val / test.

Layout read (``data_root``: the unpacked ``AVE_Dataset`` folder)::

    <root>/
    ├── trainSet.txt           official annotation files: rows ``Category&VideoID&Quality&Start&End``
    ├── valSet.txt             e.g. ``Church bell&RUhOCu3LNXM&good&0&10`` (a header row starting
    ├── testSet.txt            ``Category&`` is skipped; UTF-8, BOM tolerated)
    ├── AVE/<VideoID>.mp4      the videos (only needed to extract missing audio / frames)
    ├── audio/<VideoID>.wav    written by ``python -m bmlr.data.prepare --dataset ave``
    └── frames/<VideoID>/*.jpg frames at 1 fps (10 per video), written by prepare

Labels follow CLASS_NAMES, the category order of the AVE release. The task is clip
classification (the whole 10 s; Start/End, the event's segment, are checked but not used).

Spectrograms: 16,000 Hz, tiled / cropped to 10 s, STFT n_fft 512, hop 160, ``log(|X| + 1e-7)``:
257 x 1001.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from bmlr.data.audio import SpectrogramParams
from bmlr.data.base import build_clip_splits, in_folders, read_data_text, require_root, source_name
from bmlr.data.registry import DATASETS
from bmlr.data.types import DataError, DataSplits
from bmlr.data.video import VideoJob, extracted_folders, jobs_for_videos

__all__ = ["CLASS_NAMES", "SPECTROGRAM_PARAMS", "SPLIT_FILES", "OFFICIAL_SIZES", "AUDIO_RATE", "read_annotations",
           "build_ave", "video_jobs"]

CLASS_NAMES = [
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane", "Race car, auto racing",
    "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute", "Ukulele", "Frying (food)", "Truck",
    "Shofar", "Motorcycle", "Acoustic guitar", "Train horn", "Clock", "Banjo", "Goat", "Baby cry, infant cry",
    "Bus", "Chainsaw", "Cat", "Horse", "Toilet flush", "Rodents, rats, mice", "Accordion", "Mandolin",
]
assert len(CLASS_NAMES) == 28
AUDIO_RATE = 16000
SPECTROGRAM_PARAMS = SpectrogramParams(sample_rate=AUDIO_RATE, duration_s=10.0, n_fft=512, hop_length=160)
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
OFFICIAL_SIZES = {"train": 3339, "val": 402, "test": 402}


def read_annotations(path: Path, class_names: Sequence[str]) -> list[tuple[str, int]]:
    """``[(video id, label index)]`` of one AVE annotation file (:class:`DataError` naming the file
    and line for a malformed row, an unknown category or a repeated video)."""
    index = {name: i for i, name in enumerate(class_names)}
    text = read_data_text(path, "AVE annotation file", "expected rows 'Category&VideoID&Quality&Start&End'")
    rows: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or (not rows and line.lower().startswith("category&")):
            continue
        parts = [p.strip() for p in line.split("&")]
        if len(parts) != 5 or not parts[0] or not parts[1]:
            raise DataError(f"{path}, line {lineno}: expected 'Category&VideoID&Quality&Start&End', got {line!r}")
        category, video, _quality, start, end = parts
        if category not in index:
            raise DataError(f"{path}, line {lineno}: unknown category {category!r} for video {video!r}; "
                            f"expected one of the 28 AVE categories {list(class_names)}")
        try:
            t0, t1 = int(start), int(end)
        except ValueError:
            raise DataError(f"{path}, line {lineno}: Start and End must be whole seconds, got "
                            f"{start!r} and {end!r}") from None
        if not 0 <= t0 < t1:
            raise DataError(f"{path}, line {lineno}: expected 0 <= Start < End, got {t0} and {t1}")
        if video in seen:
            raise DataError(f"{path}, line {lineno}: video {video!r} repeated (first on line {seen[video]})")
        seen[video] = lineno
        rows.append((video, index[category]))
    return rows


def video_jobs(cfg: Any) -> list[VideoJob]:
    """Audio (16 kHz mono wav) and 1-fps frames for every video in ``AVE/`` lacking either."""
    root = require_root(cfg, "AVE")
    return jobs_for_videos(root, root / "AVE", AUDIO_RATE)


@DATASETS.register("ave")
def build_ave(cfg: Any) -> DataSplits:
    root = require_root(cfg, "AVE")
    rows = {split: read_annotations(root / name, CLASS_NAMES) for split, name in SPLIT_FILES.items()}
    audio, frames = extracted_folders(root, "ave", "AVE", "VideoID", "AVE/*.mp4")
    splits = build_clip_splits(
        cfg, root=root, class_names=CLASS_NAMES, params=SPECTROGRAM_PARAMS, source=source_name("ave", root),
        train_rows=rows["train"], val_rows=rows["val"], test_rows=rows["test"],
        locate=in_folders(audio, frames),
        split_names=tuple(str(root / SPLIT_FILES[s]) for s in ("train", "val", "test")))
    splits.info = {"dataset": "ave", **splits.info,
                   "official_split": {s: len(r) for s, r in rows.items()} == OFFICIAL_SIZES}
    return splits
