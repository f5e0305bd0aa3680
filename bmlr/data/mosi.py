"""CMU-MOSI and CMU-MOSEI from the MMSA feature pickles (``aligned_50.pkl``).

Layout read (``data_root``: the pickle itself, or a folder holding ``aligned_50.pkl`` or
``Processed/aligned_50.pkl``, as MMSA's ``MOSI/`` and ``MOSEI/`` folders do)::

    aligned_50.pkl = {"train": {...}, "valid": {...}, "test": {...}}
    each split:  "text"   float [N, 50, D_t]   (BERT features, D_t = 768)
                 "audio"  float [N, 50, D_a]   (MOSI 5, MOSEI 74)
                 "vision" float [N, 50, D_v]   (MOSI 20, MOSEI 35)
                 "regression_labels" float [N] sentiment in [-3, 3]
                 (other keys, e.g. "id", "raw_text", are ignored)

Splits: MMSA's train / valid / test (MOSI 1,284 / 229 / 686, MOSEI 16,326 / 1,871 / 4,659).
Labels: seven classes ``round(clip(score, -3, 3)) + 3`` (class 0 = -3, 6 = +3), the task of the
paper's 36-44 % accuracies. Non-finite feature values (MOSI's audio has ``-inf``) become 0.
Modalities ``text``, ``audio``, ``vision``, kind ``sequence`` with per-sample shape ``(50, D)``.

A pickle can run code when loaded: only load files from a source you trust (the MMSA release).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bmlr.data.base import check_class_coverage
from bmlr.data.registry import DATASETS
from bmlr.data.types import DataError, DataSplits, ModalitySpec

__all__ = ["CLASS_NAMES", "MODALITIES", "SPLITS", "OFFICIAL_SIZES", "find_pickle", "load_pickle",
           "seven_class", "SequenceDataset", "build_mosi", "build_mosei"]

CLASS_NAMES = ["-3", "-2", "-1", "0", "+1", "+2", "+3"]
MODALITIES = ("text", "audio", "vision")
LABEL_KEY = "regression_labels"
SPLITS = {"train": "train", "val": "valid", "test": "test"}  # ours -> the pickle's
PICKLE_NAME = "aligned_50.pkl"
OFFICIAL_SIZES = {"mosi": {"train": 1284, "val": 229, "test": 686},
                  "mosei": {"train": 16326, "val": 1871, "test": 4659}}


def seven_class(scores: np.ndarray) -> np.ndarray:
    """Sentiment scores -> class indices 0..6: ``round(clip(score, -3, 3)) + 3`` (half to even)."""
    return (np.round(np.clip(np.asarray(scores, dtype=np.float64), -3.0, 3.0)) + 3).astype(np.int64)


def find_pickle(data_root: Any, name: str) -> Path:
    if not data_root:
        raise DataError(f"{name}: data_root is not set; expected the MMSA {PICKLE_NAME} (or its folder)")
    path = Path(os.path.expanduser(str(data_root)))
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(f"{name} data root not found: {path} (expected {PICKLE_NAME} or a folder holding it)")
    for candidate in (path / PICKLE_NAME, path / "Processed" / PICKLE_NAME):
        if candidate.is_file():
            return candidate
    raise DataError(f"{name}: no {PICKLE_NAME} in {path} or {path / 'Processed'}; expected MMSA's feature "
                    "pickle (see docs/data.md)")


def load_pickle(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Read and check the pickle; return ``{our split: {modality or "labels": array}}``."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError) as e:
        raise DataError(f"cannot read pickle {path}: {type(e).__name__}: {e}") from None
    expected = (f"a dict with splits {list(SPLITS.values())}, each with keys "
                f"{list(MODALITIES) + [LABEL_KEY]} (the MMSA {PICKLE_NAME} format)")
    if not isinstance(data, dict):
        raise DataError(f"{path}: got a {type(data).__name__}; expected {expected}")
    out: dict[str, dict[str, np.ndarray]] = {}
    dims: dict[str, tuple] = {}
    for ours, theirs in SPLITS.items():
        split = data.get(theirs)
        if not isinstance(split, dict):
            raise DataError(f"{path}: missing split {theirs!r}; expected {expected}")
        missing = [k for k in (*MODALITIES, LABEL_KEY) if k not in split]
        if missing:
            raise DataError(f"{path}: split {theirs!r} lacks key(s) {missing}; expected {expected}")
        labels = np.asarray(split[LABEL_KEY], dtype=np.float64).reshape(-1)
        n = len(labels)
        if n == 0:
            raise DataError(f"{path}: split {theirs!r} has no samples")
        if not np.all(np.isfinite(labels)):
            raise DataError(f"{path}: split {theirs!r} has non-finite {LABEL_KEY}")
        arrays: dict[str, np.ndarray] = {}
        for m in MODALITIES:
            try:
                x = np.asarray(split[m], dtype=np.float32)
            except (TypeError, ValueError) as e:
                raise DataError(f"{path}: {theirs}[{m!r}] is not a numeric array ({e})") from None
            if x.ndim != 3 or x.shape[0] != n:
                raise DataError(f"{path}: {theirs}[{m!r}] has shape {x.shape}; expected (N={n}, L, D) with "
                                f"one row per label")
            if m in dims and x.shape[1:] != dims[m]:
                raise DataError(f"{path}: {theirs}[{m!r}] has per-sample shape {x.shape[1:]}, but "
                                f"{dims[m]} in the train split")
            dims.setdefault(m, x.shape[1:])
            arrays[m] = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)  # MOSI audio has -inf
        arrays["labels"] = seven_class(labels)
        arrays["scores"] = labels
        out[ours] = arrays
    return out


class SequenceDataset(Dataset):
    """``dataset[i] -> ({"text": [L, D_t], "audio": [L, D_a], "vision": [L, D_v]}, label)``."""

    def __init__(self, arrays: dict[str, np.ndarray], labels: np.ndarray):
        self.arrays = {m: torch.from_numpy(np.ascontiguousarray(x)) for m, x in arrays.items()}
        self._labels = np.asarray(labels, dtype=np.int64)

    @property
    def labels(self) -> list[int]:
        return self._labels.tolist()

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int):
        return {m: x[index] for m, x in self.arrays.items()}, int(self._labels[index])


def _build(cfg: Any, name: str) -> DataSplits:
    path = find_pickle(getattr(cfg, "data_root", None), name.upper())
    data = load_pickle(path)
    check_class_coverage(data["train"]["labels"], CLASS_NAMES, f"{path} (train split)")
    splits = {s: SequenceDataset({m: data[s][m] for m in MODALITIES}, data[s]["labels"]) for s in SPLITS}
    sizes = {s: len(d) for s, d in splits.items()}
    info = {"dataset": name, "root": str(path), **sizes, "val_from": "valid split",
            "official_split": sizes == OFFICIAL_SIZES[name],
            "train_class_counts": np.bincount(data["train"]["labels"], minlength=7).tolist()}
    return DataSplits(
        train=splits["train"], val=splits["val"], test=splits["test"],
        modalities={m: ModalitySpec("sequence", data["train"][m].shape[1:]) for m in MODALITIES},
        num_classes=len(CLASS_NAMES), class_names=list(CLASS_NAMES), info=info)


@DATASETS.register("mosi")
def build_mosi(cfg: Any) -> DataSplits:
    return _build(cfg, "mosi")


@DATASETS.register("mosei")
def build_mosei(cfg: Any) -> DataSplits:
    return _build(cfg, "mosei")
