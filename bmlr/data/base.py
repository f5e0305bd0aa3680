"""Generic audio-visual clip data set, split files and the stratified validation split.

Layout read by the audio-visual loaders (CREMA-D style)::

    <root>/AudioWAV/<clip>.wav
    <root>/Frames/<clip>/<any name>.jpg     (sorted by file name = temporal order)
    <root>/train.csv, <root>/test.csv       (rows ``clip,LABEL``, no header)

Every data problem raises :class:`DataError` naming the file (and line, for split files).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:  # imported lazily at run time: cache.py and frames.py import DataError from here
    from bmlr.data.cache import SpectrogramStore

__all__ = [
    "DataError",
    "ClipRecord",
    "AudioVisualDataset",
    "stratified_split",
    "read_split_csv",
    "list_frames",
    "records_from_layout",
    "build_audio_visual_splits",
    "FRAME_EXTENSIONS",
]

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


class DataError(ValueError):
    """A data file is missing, unreadable or malformed (the message names the file)."""


@dataclass
class ClipRecord:
    """One clip: its id, integer label, wav file and frame files (in temporal order)."""

    clip_id: str
    label: int
    audio_path: str
    frame_paths: list[str] = field(default_factory=list)


class AudioVisualDataset(Dataset):
    """``dataset[i] -> ({"audio": FloatTensor [1,F,T], "visual": FloatTensor [T,3,H,W]}, label)``.

    Spectrograms come from a :class:`~bmlr.data.cache.SpectrogramStore` (precomputed once,
    memory-mapped; never recomputed per epoch). Frames are decoded on the fly: ``train=True``
    samples a random frame per segment and applies random-resized-crop + flip, evaluation takes
    segment centres and a plain resize (see :mod:`bmlr.data.frames`). Training randomness comes
    from torch's global generator, which ``DataLoader`` seeds per worker.
    """

    def __init__(self, records: Sequence[ClipRecord], spectrograms: "SpectrogramStore", frames: int,
                 image_size: int, train: bool):
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.records = list(records)
        self.spectrograms = spectrograms
        self.frames = int(frames)
        self.image_size = int(image_size)
        self.train = bool(train)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        from bmlr.data.frames import load_frames

        record = self.records[index]
        spec = self.spectrograms.load(record.clip_id)
        audio = torch.from_numpy(np.array(spec, dtype=np.float32)).unsqueeze(0)  # copy out of the mmap
        visual = load_frames(record.frame_paths, self.frames, self.image_size, self.train, rng=None)
        return {"audio": audio, "visual": visual}, int(record.label)


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices into ``(train_idx, val_idx)`` (both sorted).

    Each class gives ``round(fraction * n_class)`` samples to validation, but always keeps at
    least one for training. ``fraction = 0`` gives an empty validation split.
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = min(int(round(fraction * len(idx))), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    if not train_idx:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def read_split_csv(path: str | os.PathLike, class_names: Sequence[str]) -> list[tuple[str, int]]:
    """Read rows ``clip,LABEL`` (no header; UTF-8 BOM and blank lines tolerated).

    Returns ``[(clip_id, label_index), ...]`` in file order. Raises :class:`DataError` naming the
    file and line for a malformed row, an unknown label or a repeated clip, and naming the path for
    a missing file.
    """
    path = Path(path)
    index = {name: i for i, name in enumerate(class_names)}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"split file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from None
    rows: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise DataError(f"{path}, line {lineno}: expected 'clip,LABEL', got {line!r}")
        clip, label = parts
        if label not in index:
            raise DataError(f"{path}, line {lineno}: unknown label {label!r} for clip {clip!r}; "
                            f"expected one of {list(class_names)}")
        if clip in seen:
            raise DataError(f"{path}, line {lineno}: clip {clip!r} repeated (first on line {seen[clip]})")
        seen[clip] = lineno
        rows.append((clip, index[label]))
    return rows


def list_frames(folder: str | os.PathLike) -> list[str]:
    """Frame image files of one clip folder, sorted by file name (the temporal order)."""
    folder = Path(folder)
    try:
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(FRAME_EXTENSIONS))
    except FileNotFoundError:
        raise DataError(f"frame folder not found: {folder}") from None
    except NotADirectoryError:
        raise DataError(f"frame folder is not a directory: {folder}") from None
    return [str(folder / n) for n in names]


def records_from_layout(root: str | os.PathLike, rows: Sequence[tuple[str, int]], audio_dir: str = "AudioWAV",
                        frames_dir: str = "Frames", audio_ext: str = ".wav",
                        skip_bad: bool = False) -> tuple[list[ClipRecord], list[str]]:
    """ClipRecords for ``rows`` of a CREMA-D-style root; checks that the files exist.

    Returns ``(records, problems)``. A clip whose wav is missing or whose frame folder is
    missing or empty raises :class:`DataError`, or with ``skip_bad=True`` is left out and
    described in ``problems``.
    """
    root = Path(root)
    records: list[ClipRecord] = []
    problems: list[str] = []
    for clip, label in rows:
        wav = root / audio_dir / f"{clip}{audio_ext}"
        try:
            if not wav.is_file():
                raise DataError(f"audio file not found: {wav}")
            frames = list_frames(root / frames_dir / clip)
            if not frames:
                raise DataError(f"no frame images ({', '.join(FRAME_EXTENSIONS)}) in {root / frames_dir / clip}")
        except DataError as e:
            if not skip_bad:
                raise
            problems.append(str(e))
            continue
        records.append(ClipRecord(clip, label, str(wav), frames))
    return records, problems


def build_audio_visual_splits(cfg, root: str | os.PathLike, class_names: Sequence[str], params,
                              source: str, train_csv: str = "train.csv", test_csv: str = "test.csv",
                              audio_dir: str = "AudioWAV", frames_dir: str = "Frames"):
    """DataSplits of a CREMA-D-style root: read the split files, check the files, carve a seeded
    stratified validation split out of train (``cfg.val_fraction``, ``cfg.split_seed``), make sure
    every spectrogram is cached (``params``, under ``cache_root(cfg)`` in folder ``source``) and
    wrap the three splits in :class:`AudioVisualDataset`.

    With ``cfg.skip_bad`` clips with missing or unreadable audio / frame folders are left out
    (counted in ``info["skipped"]``); otherwise the first problem raises :class:`DataError`.
    Frame images themselves are decoded lazily, so a corrupt jpg raises when it is read.
    """
    from bmlr.data.audio import expected_shape
    from bmlr.data.cache import SpectrogramStore, cache_root
    from bmlr.data.registry import DataSplits, ModalitySpec

    root = Path(root)
    skip_bad = bool(getattr(cfg, "skip_bad", False))
    train_rows = read_split_csv(root / train_csv, class_names)
    test_rows = read_split_csv(root / test_csv, class_names)
    overlap = {c for c, _ in train_rows} & {c for c, _ in test_rows}
    if overlap:
        raise DataError(f"{root / test_csv}: {len(overlap)} clips are also in {root / train_csv}, "
                        f"e.g. {sorted(overlap)[:3]}")
    train_records, problems = records_from_layout(root, train_rows, audio_dir, frames_dir, skip_bad=skip_bad)
    test_records, test_problems = records_from_layout(root, test_rows, audio_dir, frames_dir, skip_bad=skip_bad)
    problems += test_problems

    store = SpectrogramStore(cache_root(cfg), params, dataset=source)
    workers = max(1, int(getattr(cfg, "num_workers", 0) or 0))
    computed = store.ensure(train_records + test_records, workers=workers, skip_bad=skip_bad)
    if store.failed:
        problems += list(store.failed.values())
        train_records = [r for r in train_records if r.clip_id not in store.failed]
        test_records = [r for r in test_records if r.clip_id not in store.failed]
    if not train_records or not test_records:
        raise DataError(f"{root}: no usable clips in {'train' if not train_records else 'test'} split")

    train_idx, val_idx = stratified_split([r.label for r in train_records], cfg.val_fraction, cfg.split_seed)
    val_records = [train_records[i] for i in val_idx]
    train_records = [train_records[i] for i in train_idx]
    if not val_records:
        raise DataError(f"{root}: the validation split is empty (val_fraction={cfg.val_fraction}, "
                        f"{len(train_records)} training clips)")

    frames, size = int(cfg.frames), int(cfg.image_size)
    splits = {
        "train": AudioVisualDataset(train_records, store, frames, size, train=True),
        "val": AudioVisualDataset(val_records, store, frames, size, train=False),
        "test": AudioVisualDataset(test_records, store, frames, size, train=False),
    }
    info = {"root": str(root), "train": len(train_records), "val": len(val_records),
            "test": len(test_records), "spectrograms_computed": computed, "skipped": len(problems)}
    if problems:
        import warnings
        warnings.warn(f"{root}: skipped {len(problems)} bad clips, e.g. {problems[0]}", stacklevel=2)
    return DataSplits(
        train=splits["train"], val=splits["val"], test=splits["test"],
        modalities={"audio": ModalitySpec("spectrogram", (1, *expected_shape(params))),
                    "visual": ModalitySpec("frames", (frames, 3, size, size))},
        num_classes=len(class_names), class_names=list(class_names), info=info,
    )
