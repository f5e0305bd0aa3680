"""AV-MNIST: spoken digits (FSDD) paired by label with handwritten digit images (MNIST).

Layout read (``data_root``; ``../shared/data`` in this project's tests)::

    <root>/
    ├── fsdd/recordings/{digit}_{speaker}_{take}.wav    Free Spoken Digit Dataset, 8 kHz mono
    └── mnist/t10k-images-idx3-ubyte.gz                 MNIST idx files (gzipped or not); the
        mnist/t10k-labels-idx1-ubyte.gz                 train-*-ubyte pair is used too when present

Splits: FSDD's official split, takes 0-4 test (300 clips) and 5-49 train (2,700); validation is
carved out of train (stratified, ``val_fraction``, ``split_seed``). Pairing: the images of each
digit (all idx files pooled, in file order) are shuffled with ``numpy.random.default_rng([split_seed,
digit])``; the digit's test clips (sorted by name) take the first images, its train clips the next
ones. No image is used twice, so no image is shared across splits; too few images for a digit
raises :class:`DataError`.

Inputs: ``audio`` spectrogram (8,000 Hz, tiled to 1 s, STFT n_fft 256, hop 128,
``log(|X| + 1e-7)``: 129 x 63) and ``visual`` = the digit image as one frame (kind ``frames``,
T = 1, whatever ``cfg.frames`` says), grayscale replicated to 3 channels, resized to
``image_size`` (bilinear; 28 keeps the original pixels), ImageNet-normalised. No augmentation:
random crops cut digits and flips change them.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bmlr.data.audio import SpectrogramParams, expected_shape
from bmlr.data.base import (check_class_coverage, prepare_workers, require_root, skipped_summary, source_name,
                            stratified_split, warn_skipped)
from bmlr.data.cache import SpectrogramStore, cache_root
from bmlr.data.frames import IMAGENET_MEAN, IMAGENET_STD
from bmlr.data.registry import DATASETS
from bmlr.data.types import ClipRecord, DataError, DataSplits, ModalitySpec

__all__ = ["CLASS_NAMES", "SPECTROGRAM_PARAMS", "read_idx", "load_mnist", "list_fsdd", "pair_images",
           "AVMNISTDataset", "build_avmnist"]

CLASS_NAMES = [str(d) for d in range(10)]
SPECTROGRAM_PARAMS = SpectrogramParams(sample_rate=8000, duration_s=1.0, n_fft=256, hop_length=128)
TEST_TAKES = range(0, 5)  # FSDD's official split: takes 0-4 are test
FSDD_NAME = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")
MNIST_PREFIXES = ("train", "t10k")
_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def read_idx(path: Path, expect_dims: int) -> np.ndarray:
    """An idx array (``uint8``) from a ``.gz`` or plain idx file; ``expect_dims`` 3 for images, 1 for labels."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"MNIST file not found: {path}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read MNIST idx file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != expect_dims:
        raise DataError(f"{path}: not an idx file of unsigned bytes with {expect_dims} dimension(s) "
                        f"(expected magic 0x0000080{expect_dims})")
    header = 4 + 4 * expect_dims
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(expect_dims))
    if len(data) != header + int(np.prod(dims)):
        raise DataError(f"{path}: {len(data) - header} bytes of data for shape {dims}; the file is truncated "
                        "or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_file(folder: Path, prefix: str, kind: str) -> Path | None:
    for name in (f"{prefix}-{kind}.gz", f"{prefix}-{kind}"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """All MNIST images ``uint8 [N, H, W]`` and labels ``[N]`` of ``folder`` (train files first)."""
    if not folder.is_dir():
        raise DataError(f"MNIST folder not found: {folder} (expected t10k-images-idx3-ubyte.gz and "
                        "t10k-labels-idx1-ubyte.gz, and/or the train-* pair)")
    images, labels = [], []
    for prefix in MNIST_PREFIXES:
        img_path = _idx_file(folder, prefix, "images-idx3-ubyte")
        lab_path = _idx_file(folder, prefix, "labels-idx1-ubyte")
        if img_path is None and lab_path is None:
            continue
        if img_path is None or lab_path is None:
            have = img_path or lab_path
            raise DataError(f"{folder}: {have.name} has no matching "
                            f"{prefix}-{'labels-idx1' if lab_path is None else 'images-idx3'}-ubyte[.gz]")
        x, y = read_idx(img_path, 3), read_idx(lab_path, 1)
        if len(x) != len(y):
            raise DataError(f"{img_path} has {len(x)} images but {lab_path} has {len(y)} labels")
        if y.size and y.max() > 9:
            raise DataError(f"{lab_path}: label {int(y.max())} outside the digits 0-9")
        if images and x.shape[1:] != images[0].shape[1:]:
            raise DataError(f"{img_path}: images of {x.shape[1:]} pixels, expected {images[0].shape[1:]}")
        images.append(x)
        labels.append(y)
    if not images:
        raise DataError(f"no MNIST idx files in {folder}; expected t10k-images-idx3-ubyte.gz and "
                        "t10k-labels-idx1-ubyte.gz (and/or the train-* pair)")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def list_fsdd(folder: Path, skip_bad: bool = False) -> tuple[dict[str, list[tuple[str, int]]], list[tuple[str, str]]]:
    """``({"train": [(clip, digit)], "test": [...]}, problems)`` from the recordings folder."""
    if not folder.is_dir():
        raise DataError(f"FSDD recordings folder not found: {folder} (expected {{digit}}_{{speaker}}_{{take}}.wav)")
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    problems: list[tuple[str, str]] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        match = FSDD_NAME.match(path.name)
        if not match:
            problem = (f"{path}: not an FSDD recording name; expected {{digit}}_{{speaker}}_{{take}}.wav, "
                       "e.g. 3_jackson_12.wav")
            if not skip_bad:
                raise DataError(problem)
            problems.append((path.stem, problem))
            continue
        digit, take = int(match.group(1)), int(match.group(3))
        splits["test" if take in TEST_TAKES else "train"].append((path.stem, digit))
    return splits, problems


def pair_images(splits: dict[str, list[tuple[str, int]]], image_labels: np.ndarray, seed: int
                ) -> dict[str, list[int]]:
    """Image index for every clip of every split (order of ``splits``); never one image twice."""
    pools = {d: np.flatnonzero(image_labels == d) for d in range(10)}
    pools = {d: idx[np.random.default_rng([int(seed), d]).permutation(len(idx))] for d, idx in pools.items()}
    used = {d: 0 for d in range(10)}
    paired: dict[str, list[int]] = {}
    for split in ("test", "train"):  # test first: its images never depend on the train clips
        out = []
        for _, digit in splits[split]:
            if used[digit] >= len(pools[digit]):
                need = sum(1 for s in splits.values() for _, d in s if d == digit)
                raise DataError(f"AV-MNIST: {need} recordings of digit {digit} but only {len(pools[digit])} "
                                f"MNIST images of it; expected at least one image per recording")
            out.append(int(pools[digit][used[digit]]))
            used[digit] += 1
        paired[split] = out
    return paired


class AVMNISTDataset(Dataset):
    """``dataset[i] -> ({"audio": [1, F, T], "visual": [1, 3, S, S]}, label)``; spectrograms from the
    cache, images from memory."""

    def __init__(self, records: Sequence[ClipRecord], image_index: Sequence[int], images: np.ndarray,
                 spectrograms, image_size: int):
        if len(records) != len(image_index):
            raise ValueError("one image per record")
        self.records = list(records)
        self.image_index = [int(i) for i in image_index]
        self.images = images
        self.spectrograms = spectrograms
        self.image_size = int(image_size)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> torch.Tensor:
        """``FloatTensor [1, 3, S, S]``, ImageNet-normalised."""
        x = torch.from_numpy(np.array(self.images[self.image_index[index]], dtype=np.float32) / 255.0)
        x = x[None, None]  # [1, 1, H, W]
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = torch.nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                                align_corners=False)
        return (x.expand(1, 3, -1, -1) - _MEAN) / _STD

    def __getitem__(self, index: int):
        record = self.records[index]
        spec = self.spectrograms.load(record.clip_id)
        audio = torch.from_numpy(np.array(spec, dtype=np.float32)).unsqueeze(0)
        return {"audio": audio, "visual": self.image(index)}, int(record.label)


@DATASETS.register("avmnist")
def build_avmnist(cfg: Any) -> DataSplits:
    root = require_root(cfg, "AV-MNIST")
    skip_bad = bool(getattr(cfg, "skip_bad", False))
    recordings = root / "fsdd" / "recordings"
    rows, problems = list_fsdd(recordings, skip_bad=skip_bad)
    images, image_labels = load_mnist(root / "mnist")
    for split in ("train", "test"):
        if not rows[split]:
            raise DataError(f"AV-MNIST: no {split} recordings in {recordings} "
                            f"({'takes 0-4' if split == 'test' else 'takes 5 and above'})")
    paired = pair_images(rows, image_labels, int(cfg.split_seed))

    records: dict[str, list[ClipRecord]] = {}
    index: dict[str, list[int]] = {}
    for split in ("train", "test"):
        records[split], index[split] = [], []
        for (clip, digit), image in zip(rows[split], paired[split]):
            wav = recordings / f"{clip}.wav"
            if wav.stat().st_size == 0:
                problem = f"audio file {wav} is empty (0 bytes); expected a readable .wav file"
                if not skip_bad:
                    raise DataError(problem)
                problems.append((clip, problem))
                continue
            records[split].append(ClipRecord(clip, digit, str(wav)))
            index[split].append(image)

    store = SpectrogramStore(cache_root(cfg), SPECTROGRAM_PARAMS, dataset=source_name("avmnist-fsdd", recordings))
    computed = store.ensure(records["train"] + records["test"], workers=prepare_workers(cfg), skip_bad=skip_bad,
                            progress=getattr(cfg, "progress", None))
    if store.failed:
        problems += list(store.failed.items())
        for split in records:
            keep = [i for i, r in enumerate(records[split]) if r.clip_id not in store.failed]
            records[split] = [records[split][i] for i in keep]
            index[split] = [index[split][i] for i in keep]

    train_idx, val_idx = stratified_split([r.label for r in records["train"]], cfg.val_fraction, cfg.split_seed)
    parts = {
        "train": ([records["train"][i] for i in train_idx], [index["train"][i] for i in train_idx]),
        "val": ([records["train"][i] for i in val_idx], [index["train"][i] for i in val_idx]),
        "test": (records["test"], index["test"]),
    }
    if not parts["val"][0]:
        raise DataError(f"AV-MNIST: the validation split is empty (val_fraction={cfg.val_fraction})")
    check_class_coverage([r.label for r in parts["train"][0]], CLASS_NAMES, str(recordings))
    size = int(cfg.image_size)
    datasets = {s: AVMNISTDataset(recs, idx, images, store, size) for s, (recs, idx) in parts.items()}
    warn_skipped(str(root), problems)
    info = {"dataset": "avmnist", "root": str(root), **{s: len(d) for s, d in datasets.items()},
            "val_from": "train", "mnist_images": int(len(images)), "pairing_seed": int(cfg.split_seed),
            "spectrograms_computed": computed, "cache": str(store.directory), **skipped_summary(problems)}
    return DataSplits(
        train=datasets["train"], val=datasets["val"], test=datasets["test"],
        modalities={"audio": ModalitySpec("spectrogram", (1, *expected_shape(SPECTROGRAM_PARAMS))),
                    "visual": ModalitySpec("frames", (1, 3, size, size))},
        num_classes=10, class_names=list(CLASS_NAMES), info=info)
