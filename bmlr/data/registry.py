"""The data-set registry and the object every data-set builder returns.

A data set is one builder function registered by name::

    @DATASETS.register("synthetic")
    def build_synthetic(cfg) -> DataSplits: ...

    data = build_datasets(cfg)          # looks up cfg.dataset

``cfg`` needs the attributes ``dataset``, ``data_root``, ``cache_dir``, ``frames``,
``image_size``, ``val_fraction``, ``split_seed`` and ``skip_bad`` (``bmlr.config.Config``
has them; tests pass a ``types.SimpleNamespace``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch.utils.data import Dataset

from bmlr.registry import Registry

__all__ = ["DATASETS", "DataSplits", "ModalitySpec", "INPUT_KINDS", "build_datasets", "check_splits"]

#: input kinds and the per-sample shape each one has (the batch adds a leading B)
INPUT_KINDS = {
    "spectrogram": "(1, F, T): log-magnitude STFT",
    "frames": "(T_frames, 3, H, W): ImageNet-normalised RGB frames",
    "sequence": "(L, D): feature sequence",
}


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality's input looks like: its kind (picks the encoder) and per-sample shape."""

    kind: str
    shape: tuple

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"unknown input kind {self.kind!r}; expected one of {sorted(INPUT_KINDS)}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))


@dataclass
class DataSplits:
    """Train / validation / test splits of one data set; each split yields ``(inputs: dict, label: int)``."""

    train: Dataset
    val: Dataset
    test: Dataset
    modalities: dict[str, ModalitySpec]
    num_classes: int
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)


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
    (:class:`~bmlr.data.base.DataError` otherwise)."""
    from bmlr.data.base import DataError

    if data.num_classes < 2 or len(data.class_names) != data.num_classes:
        raise DataError(f"{name}: {data.num_classes} classes with {len(data.class_names)} class names; "
                        "expected at least two classes, one name each")
    import torch

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
