"""Generic audio-visual clip data set, split files and the stratified validation split.

Layout read by the audio-visual loaders (CREMA-D style)::

    <root>/AudioWAV/<clip>.wav
    <root>/Frames/<clip>/<any name>.jpg     (sorted by file name = temporal order)
    <root>/train.csv, <root>/test.csv       (rows ``clip,LABEL``, no header)

Every data problem raises :class:`DataError` naming the file (and line, for split files).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bmlr.data.audio import SpectrogramParams, expected_shape
from bmlr.data.cache import SpectrogramStore, cache_root
from bmlr.data.frames import load_frames
from bmlr.data.types import ClipRecord, DataError, DataSplits, ModalitySpec

__all__ = [
    "AudioVisualDataset",
    "stratified_split",
    "read_data_text",
    "read_split_csv",
    "list_frames",
    "records_from_rows",
    "in_folders",
    "check_disjoint",
    "cached_records",
    "carve_validation",
    "build_clip_splits",
    "build_audio_visual_splits",
    "check_class_coverage",
    "skipped_summary",
    "warn_skipped",
    "prepare_workers",
    "require_root",
    "source_name",
    "FRAME_EXTENSIONS",
]

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")

Rows = Sequence[tuple[str, int]]  # (clip id, label index) in file order
Locate = Callable[[str], tuple[Path, Path]]  # clip id -> (wav file, frame folder)


class AudioVisualDataset(Dataset):
    """``dataset[i] -> ({"audio": FloatTensor [1,F,T], "visual": FloatTensor [T,3,H,W]}, label)``.

    Spectrograms come from a :class:`~bmlr.data.cache.SpectrogramStore` (precomputed once,
    memory-mapped; never recomputed per epoch). Frames are decoded on the fly: ``train=True``
    samples a random frame per segment and applies random-resized-crop + flip, evaluation takes
    segment centres and a plain resize (see :mod:`bmlr.data.frames`). Training randomness comes
    from torch's global generator, which ``DataLoader`` seeds per worker.
    """

    def __init__(self, records: Sequence[ClipRecord], spectrograms: SpectrogramStore, frames: int,
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


def read_data_text(path: Path, what: str, expected: str = "") -> str:
    """The text of a data set's list file (UTF-8, a BOM tolerated); :class:`DataError`
    ``"<what> not found: <path> (<expected>)"`` or ``"cannot read <what> <path>: ..."``."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}" + (f" ({expected})" if expected else "")) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from None


def read_split_csv(path: str | os.PathLike, class_names: Sequence[str]) -> list[tuple[str, int]]:
    """Read rows ``clip,LABEL`` (no header; UTF-8 BOM and blank lines tolerated).

    Returns ``[(clip_id, label_index), ...]`` in file order. Raises :class:`DataError` naming the
    file and line for a malformed row, an unknown label or a repeated clip, and naming the path for
    a missing file.
    """
    path = Path(path)
    index = {name: i for i, name in enumerate(class_names)}
    text = read_data_text(path, "split file")
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


def _check_audio_file(wav: Path) -> None:
    if not wav.is_file():
        raise DataError(f"audio file not found: {wav} (expected a .wav file for this clip)")
    if wav.stat().st_size == 0:
        raise DataError(f"audio file {wav} is empty (0 bytes); expected a readable .wav file")


def _check_frame_folder(folder: Path) -> list[str]:
    frames = list_frames(folder)
    if not frames:
        raise DataError(f"no frame images ({', '.join(FRAME_EXTENSIONS)}) in {folder}")
    for frame in frames:
        if os.path.getsize(frame) == 0:
            raise DataError(f"frame image {frame} is empty (0 bytes); expected a readable JPEG/PNG image")
    return frames


def records_from_rows(rows: Rows, locate: Locate,
                      skip_bad: bool = False) -> tuple[list[ClipRecord], list[tuple[str, str]]]:
    """ClipRecords for ``(clip, label)`` rows; ``locate(clip) -> (wav path, frame folder)``.

    Checks that the wav exists and is not empty, and that the frame folder holds at least one
    non-empty image (files are decoded later, when the spectrograms are computed). Returns
    ``(records, problems)`` with problems as ``(clip, message)``; without ``skip_bad`` the first
    problem raises :class:`DataError`.
    """
    records: list[ClipRecord] = []
    problems: list[tuple[str, str]] = []
    for clip, label in rows:
        wav, folder = locate(clip)
        try:
            _check_audio_file(Path(wav))
            frames = _check_frame_folder(Path(folder))
        except DataError as e:
            if not skip_bad:
                raise
            problems.append((clip, str(e)))
            continue
        records.append(ClipRecord(clip, label, str(wav), frames))
    return records, problems


def skipped_summary(problems: Sequence[tuple[str, str]], first: int = 5) -> dict[str, Any]:
    """``{"skipped": count, "skipped_clips": first few clip ids}`` for ``DataSplits.info``."""
    return {"skipped": len(problems), "skipped_clips": [clip for clip, _ in problems[:first]]}


def warn_skipped(where: str, problems: Sequence[tuple[str, str]], first: int = 5) -> None:
    """One warning with the count, the first few clip ids and the first problem."""
    if not problems:
        return
    names = ", ".join(clip for clip, _ in problems[:first]) + (", ..." if len(problems) > first else "")
    warnings.warn(f"{where}: skipped {len(problems)} bad clips ({names}); first problem: {problems[0][1]}",
                  stacklevel=3)


def check_class_coverage(labels: Sequence[int], class_names: Sequence[str], where: str) -> None:
    """Every class needs at least one training example (else the class list or split is wrong)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    if len(counts) > len(class_names):
        raise DataError(f"{where}: labels up to {len(counts) - 1} for {len(class_names)} classes")
    empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(f"{where}: {len(empty)} of {len(class_names)} classes have no training clips: "
                        f"{empty[:10]}; expected every class of the class list in the training split")


def require_root(cfg, name: str) -> Path:
    """``cfg.data_root`` as an existing folder (:class:`DataError` naming it otherwise)."""
    value = getattr(cfg, "data_root", None)
    if not value:
        raise DataError(f"{name}: data_root is not set; expected the folder described in docs/data.md "
                        f"(--set data_root=DIR for training, --root DIR for bmlr.data.prepare)")
    root = Path(os.path.expanduser(str(value)))
    if not root.is_dir():
        raise DataError(f"{name} data root not found: {root} (expected a folder laid out as in docs/data.md)")
    return root


def source_name(dataset: str, root: str | os.PathLike) -> str:
    """Cache folder name of the data set at ``root`` (two copies never share cached arrays)."""
    return f"{dataset}-" + hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:10]


def prepare_workers(cfg) -> int:
    """Processes for preprocessing: ``cfg.prepare_workers`` (set by ``bmlr.data.prepare``), else
    ``cfg.num_workers``, at least 1."""
    workers = getattr(cfg, "prepare_workers", None) or getattr(cfg, "num_workers", 0) or 1
    return max(1, int(workers))


def in_folders(audio: Path, frames: Path) -> Locate:
    """``locate`` of a layout ``<audio>/<clip>.wav``, ``<frames>/<clip>/``."""
    return lambda clip: (audio / f"{clip}.wav", frames / clip)


def check_disjoint(root: Path, named: dict[str, Rows]) -> None:
    """No clip listed in two splits (:class:`DataError` naming the clip and both splits)."""
    seen: dict[str, str] = {}
    for split, rows in named.items():
        for clip, _ in rows:
            if clip in seen:
                raise DataError(f"{root}: clip {clip!r} is listed in both the {seen[clip]} and the {split} "
                                f"split; expected disjoint splits")
            seen[clip] = split


def cached_records(cfg, store: SpectrogramStore, named: dict[str, Rows], locate: Locate,
                   ) -> tuple[dict[str, list[ClipRecord]], list[tuple[str, str]], int]:
    """Each split's checked records, with their spectrograms in ``store`` (the missing ones
    computed now, each new clip's frames decoded whole); returns ``(records by split, problems
    as (clip, message), number computed)``. Bad clips are left out under ``cfg.skip_bad``."""
    skip_bad = bool(getattr(cfg, "skip_bad", False))
    records: dict[str, list[ClipRecord]] = {}
    problems: list[tuple[str, str]] = []
    for split, rows in named.items():
        records[split], bad = records_from_rows(rows, locate, skip_bad=skip_bad)
        problems += bad
    everything = [r for split in named for r in records[split]]
    computed = store.ensure(everything, workers=prepare_workers(cfg), skip_bad=skip_bad,
                            progress=getattr(cfg, "progress", None), verify_frames=True)
    if store.failed:
        problems += list(store.failed.items())
        records = {split: [r for r in rs if r.clip_id not in store.failed] for split, rs in records.items()}
    return records, problems, computed


def carve_validation(cfg, root: Path, train: list[ClipRecord]) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """``(train, val)``: a seeded stratified share ``cfg.val_fraction`` of ``train`` (``cfg.split_seed``)."""
    train_idx, val_idx = stratified_split([r.label for r in train], cfg.val_fraction, cfg.split_seed)
    if len(val_idx) == 0:
        raise DataError(f"{root}: the validation split is empty (val_fraction={cfg.val_fraction}, "
                        f"{len(train_idx)} training clips)")
    return [train[i] for i in train_idx], [train[i] for i in val_idx]


def build_clip_splits(cfg, *, root: str | os.PathLike, class_names: Sequence[str], params: SpectrogramParams,
                      source: str, train_rows: Rows, test_rows: Rows, locate: Locate, val_rows: Rows | None = None,
                      split_names: Sequence[str] = ("train", "val", "test")) -> DataSplits:
    """DataSplits of an audio-visual data set from its split rows.

    Checks every listed clip's files (:func:`records_from_rows`), computes the missing
    spectrograms once into the cache (``params``, under ``cache_root(cfg)`` in folder ``source``)
    while fully decoding each new clip's frames, carves a seeded stratified validation split out of
    train when ``val_rows`` is None (``cfg.val_fraction``, ``cfg.split_seed``) and wraps the splits
    in :class:`AudioVisualDataset`. ``split_names`` name the split files in error messages.

    With ``cfg.skip_bad`` bad clips are left out, counted in ``info["skipped"]`` and the first few
    named in ``info["skipped_clips"]`` and a warning; otherwise the first problem raises
    :class:`DataError`. Frames of clips already in the cache are not decoded again, so an image
    corrupted after preprocessing raises (naming the file) when that item is read.
    """
    root = Path(root)
    named = {"train": train_rows, "val": val_rows, "test": test_rows}
    if val_rows is None:
        del named["val"]
    check_disjoint(root, named)
    store = SpectrogramStore(cache_root(cfg), params, dataset=source)
    records, problems, computed = cached_records(cfg, store, named, locate)
    for split, name in zip(("train", "val", "test"), split_names):
        if split in records and not records[split]:
            raise DataError(f"{root}: no usable clips in the {split} split ({name})")
    if val_rows is None:
        records["train"], records["val"] = carve_validation(cfg, root, records["train"])
    check_class_coverage([r.label for r in records["train"]], class_names, f"{root / split_names[0]}")

    frames, size = int(cfg.frames), int(cfg.image_size)
    splits = {split: AudioVisualDataset(records[split], store, frames, size, train=split == "train")
              for split in ("train", "val", "test")}
    info = {"root": str(root), "train": len(records["train"]), "val": len(records["val"]),
            "test": len(records["test"]), "val_from": "train" if val_rows is None else "split file",
            "spectrograms_computed": computed, "cache": str(store.directory), **skipped_summary(problems)}
    warn_skipped(str(root), problems)
    return DataSplits(
        train=splits["train"], val=splits["val"], test=splits["test"],
        modalities={"audio": ModalitySpec("spectrogram", (1, *expected_shape(params))),
                    "visual": ModalitySpec("frames", (frames, 3, size, size))},
        num_classes=len(class_names), class_names=list(class_names), info=info,
    )


def build_audio_visual_splits(cfg, root: str | os.PathLike, class_names: Sequence[str], params: SpectrogramParams,
                              source: str, train_csv: str = "train.csv", test_csv: str = "test.csv",
                              audio_dir: str = "AudioWAV", frames_dir: str = "Frames",
                              val_csv: str | None = None) -> DataSplits:
    """DataSplits of a CREMA-D-style root (``train_csv`` / ``test_csv`` with rows ``clip,LABEL``,
    ``<audio_dir>/<clip>.wav``, ``<frames_dir>/<clip>/``); validation read from ``val_csv`` where
    given, else carved out of train. See :func:`build_clip_splits`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root not found: {root}")
    train_rows = read_split_csv(root / train_csv, class_names)
    test_rows = read_split_csv(root / test_csv, class_names)
    val_rows = read_split_csv(root / val_csv, class_names) if val_csv else None
    return build_clip_splits(cfg, root=root, class_names=class_names, params=params, source=source,
                             train_rows=train_rows, test_rows=test_rows, val_rows=val_rows,
                             locate=in_folders(root / audio_dir, root / frames_dir),
                             split_names=(train_csv, val_csv or "carved from " + train_csv, test_csv))
