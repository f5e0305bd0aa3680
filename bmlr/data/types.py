"""What the data modules hand each other: the error every data problem raises and the records
the loaders build.

This module is the leaf of ``bmlr.data``: it imports nothing from ``bmlr``, so every other data
module (audio, frames, the cache, the split builders, the registry) can import it and data flows
one way: files -> records -> cached arrays -> data sets -> :class:`DataSplits`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

__all__ = ["DataError", "ClipRecord", "INPUT_KINDS", "ModalitySpec", "DataSplits"]


class DataError(ValueError):
    """A data file is missing, unreadable or malformed (the message names the file)."""


@dataclass
class ClipRecord:
    """One clip: its id, integer label, wav file and frame files (in temporal order)."""

    clip_id: str
    label: int
    audio_path: str
    frame_paths: list[str] = field(default_factory=list)


#: input kinds and the per-sample shape each one has (the batch adds a leading B)
INPUT_KINDS = {
    "spectrogram": "(1, F, T): log-magnitude STFT",
    "frames": "(T_frames, 3, H, W): ImageNet-normalised RGB frames",
    "sequence": "(L, D): feature sequence",
    "vector": "(D,): feature vector",
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
    """Train / validation / test splits of one data set; each split yields ``(inputs: dict, label: int)``.
    ``scaling``: modality -> ``{"kind", "center", "scale"}`` (lists) of the features a data set
    scales when it loads them (a manifest's ``features``; empty for the rest), for inference."""

    train: Dataset
    val: Dataset
    test: Dataset
    modalities: dict[str, ModalitySpec]
    num_classes: int
    class_names: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    scaling: dict[str, dict] = field(default_factory=dict)
