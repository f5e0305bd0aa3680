"""The data-set registry: a builder function per name, and the checks of what it returns.

A data set is one builder function registered by name::

    @DATASETS.register("synthetic")
    def build_synthetic(cfg) -> DataSplits: ...

    data = build_datasets(cfg)          # looks up cfg.dataset

``cfg`` needs the attributes ``dataset``, ``data_root``, ``cache_dir``, ``frames``,
``image_size``, ``val_fraction``, ``split_seed`` and ``skip_bad`` (``bmlr.config.Config``
has them; tests pass a ``types.SimpleNamespace``).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from bmlr.data.types import DataError, DataSplits
from bmlr.registry import Registry

__all__ = ["DATASETS", "build_datasets", "check_splits"]

DATASETS: Registry[Callable[[Any], DataSplits]] = Registry("dataset")


def build_datasets(cfg: Any) -> DataSplits:
    """Build the data set named by ``cfg.dataset`` (``KeyError`` lists the registered names) and
    check it (:func:`check_splits`)."""
    data = DATASETS.get(cfg.dataset)(cfg)
    check_splits(data, cfg.dataset)
    return data


def check_splits(data: DataSplits, name: str = "data set") -> None:
    """Shapes and class counts: every split non-empty, the first item of each split has the
    modalities and per-sample shapes ``data.modalities`` promises and a label in range
    (:class:`~bmlr.data.types.DataError` otherwise)."""
    if data.num_classes < 2 or len(data.class_names) != data.num_classes:
        raise DataError(f"{name}: {data.num_classes} classes with {len(data.class_names)} class names; "
                        "expected at least two classes, one name each")
    for split in ("train", "val", "test"):
        dataset = getattr(data, split)
        if len(dataset) == 0:
            raise DataError(f"{name}: the {split} split is empty")
        with torch.random.fork_rng(devices=[]):  # training augmentation must not move the global RNG
            inputs, label = dataset[0]
        if set(inputs) != set(data.modalities):
            raise DataError(f"{name}: {split} items have modalities {sorted(inputs)}, "
                            f"expected {sorted(data.modalities)}")
        for modality, spec in data.modalities.items():
            if tuple(inputs[modality].shape) != tuple(spec.shape):
                raise DataError(f"{name}: {split} {modality} input has shape {tuple(inputs[modality].shape)}, "
                                f"expected {tuple(spec.shape)} ({spec.kind})")
        if not 0 <= int(label) < data.num_classes:
            raise DataError(f"{name}: {split} label {label} outside 0..{data.num_classes - 1}")
