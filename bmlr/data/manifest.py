"""``dataset: manifest``: your own clips, any two or three modalities, from a manifest.

``data_root`` holds ``manifest.csv`` (a row per sample: id, label, optional split and group, a
file per modality) and ``modalities.yaml`` (each modality's kind and parameters); see
:mod:`bmlr.data.manifest_io` and docs/data.md. Kinds and what the model gets:

* ``audio`` (wav/flac/...): log spectrogram ``[1, F, T]`` with the parameters of modalities.yaml,
  cached like the built-in sets (:class:`~bmlr.data.cache.SpectrogramStore`) -> ``resnet_audio``;
* ``image`` (one image file): a one-frame clip ``[1, 3, S, S]`` -> ``resnet_visual``;
* ``frames`` (a folder of images): ``[T, 3, S, S]`` (``cfg.frames``) -> ``resnet_visual``;
* ``video`` (a video file): frames extracted once at ``fps`` (PyAV) into the cache, then as
  ``frames``; an ``audio`` modality may name a video file too (its track is extracted to a wav);
* ``features`` (``.npy``): a vector ``[D]`` -> ``mlp``, a sequence ``[T, D]`` -> ``transformer``;
  standardised per dimension by default with statistics of the training split (``scale:``,
  :mod:`bmlr.data.feature_scaling`; ``DataSplits.scaling``, saved in ``model.pt``).

Splits: :mod:`bmlr.data.manifest_split`. Every file is checked before training; problems raise
:class:`DataError` naming the row and column (or, with ``skip_bad``, drop the row).

``python -m bmlr.data.manifest_export --dataset avmnist --root DIR --out DIR`` writes a built-in
data set as a manifest (:mod:`bmlr.data.manifest_export`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bmlr.data.audio import SpectrogramParams, expected_shape
from bmlr.data.base import (check_class_coverage, list_frames, prepare_workers, require_root, skipped_summary,
                            source_name, warn_skipped)
from bmlr.data.cache import SpectrogramStore, cache_root
from bmlr.data.feature_scaling import FeatureScaling, train_scaling
from bmlr.data.frames import load_frames
from bmlr.data.manifest_io import (Manifest, ManifestRow, ModalityConfig, check_row_files, read_classes,
                                   read_manifest, row_error)
from bmlr.data.manifest_split import assign_splits
from bmlr.data.registry import DATASETS
from bmlr.data.types import ClipRecord, DataError, DataSplits, ModalitySpec
from bmlr.data.video import VIDEO_EXTENSIONS, VideoJob, extract_videos

__all__ = ["ManifestDataset", "SpectrogramReader", "FrameReader", "FeatureReader", "cache_key", "build_manifest"]


def cache_key(clip: str) -> str:
    """The row id as a cache file name, or a hash of it when it cannot be one."""
    if clip and "/" not in clip and "\\" not in clip and not clip.startswith(".") and len(clip) < 200:
        return clip
    return "id-" + hashlib.sha1(clip.encode()).hexdigest()[:20]


class SpectrogramReader:
    """An ``audio`` modality: the cached spectrogram, ``FloatTensor [1, F, T]``."""

    def __init__(self, name: str, store: SpectrogramStore):
        self.name, self.store = name, store
        self.spec = ModalitySpec("spectrogram", (1, *expected_shape(store.params)))

    def load(self, row: ManifestRow, train: bool) -> torch.Tensor:
        spec = self.store.load(cache_key(row.id))
        return torch.from_numpy(np.array(spec, dtype=np.float32)).unsqueeze(0)  # copy out of the mmap


class FrameReader:
    """An ``image`` or ``frames`` modality: ``FloatTensor [T, 3, S, S]`` (:func:`load_frames`;
    random-resized crop and flip in training unless ``augment: false``)."""

    def __init__(self, name: str, frames: int, image_size: int, augment: bool):
        self.name, self.frames, self.size, self.augment = name, int(frames), int(image_size), bool(augment)
        self.spec = ModalitySpec("frames", (self.frames, 3, self.size, self.size))

    def load(self, row: ManifestRow, train: bool) -> torch.Tensor:
        return load_frames(row.files[self.name], self.frames, self.size, train and self.augment, rng=None)


class FeatureReader:
    """A ``features`` modality: the ``.npy`` array (or the row of a ``matrix``, memory-mapped) as
    ``float32``, non-finite values as 0, then scaled per dimension (``scaling``, from the training
    split: :mod:`bmlr.data.feature_scaling`); kind ``vector`` for ``[D]``, ``sequence`` for ``[T, D]``."""

    def __init__(self, name: str, shape: tuple, scaling: FeatureScaling | None = None):
        self.name = name
        self.spec = ModalitySpec("vector" if len(shape) == 1 else "sequence", shape)
        self.scaling = scaling or FeatureScaling.identity(int(shape[-1]))
        self._matrices: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:  # loader workers open their own memory maps
        return {**self.__dict__, "_matrices": {}}

    def raw(self, row: ManifestRow) -> np.ndarray:
        """The row's array as stored (non-finite values as 0), ``float32``, before scaling."""
        files = row.files[self.name]
        if len(files) == 2:  # [matrix file, row index]
            if files[0] not in self._matrices:
                self._matrices[files[0]] = np.load(files[0], mmap_mode="r", allow_pickle=False)
            array = np.array(self._matrices[files[0]][int(files[1])])
        else:
            array = np.load(files[0], allow_pickle=False)
        if tuple(array.shape) != self.spec.shape:
            raise DataError(f"{files[0]} (id {row.id!r}) has shape {tuple(array.shape)}, expected {self.spec.shape}")
        return np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)

    def load(self, row: ManifestRow, train: bool) -> torch.Tensor:
        return torch.from_numpy(self.scaling.apply(self.raw(row)))


class ManifestDataset(Dataset):
    """``dataset[i] -> ({modality: tensor}, label)`` over manifest rows, one reader per modality."""

    def __init__(self, rows: Sequence[ManifestRow], labels: Sequence[int], readers: dict[str, Any], train: bool):
        self.rows, self._labels = list(rows), [int(y) for y in labels]
        self.readers, self.train = readers, bool(train)

    @property
    def labels(self) -> list[int]:
        return list(self._labels)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        return {name: r.load(row, self.train) for name, r in self.readers.items()}, self._labels[index]


def _checked_rows(cfg, manifest: Manifest) -> tuple[list[ManifestRow], list[tuple[str, str]], dict[str, tuple]]:
    """Rows whose files all exist (with the features' shapes); bad rows raise or, under
    ``skip_bad``, come back as problems."""
    shapes = {name: tuple(int(s) for s in m.params["shape"])
              for name, m in manifest.modalities.items() if m.kind == "features" and m.params["shape"]}
    good, problems = [], []
    for row in manifest.rows:
        try:
            check_row_files(manifest.root, row, manifest.modalities, shapes)
        except DataError as e:
            if not getattr(cfg, "skip_bad", False):
                raise
            problems.append((row.id, str(e)))
            continue
        good.append(row)
    return good, problems, shapes


def _spectrograms(cfg, manifest: Manifest, rows: list[ManifestRow], modality: ModalityConfig
                  ) -> tuple[SpectrogramStore, int, dict[str, str]]:
    """The modality's spectrograms, the missing ones computed now (each new row's images decoded
    whole on the way); ``(store, computed, failed row id -> problem)``."""
    p = modality.params
    try:
        params = SpectrogramParams(int(p["sample_rate"]), float(p["duration_s"]), int(p["n_fft"]),
                                   int(p["hop_length"]), bool(p["tile"]))
    except (TypeError, ValueError) as e:
        raise DataError(f"{manifest.root / 'modalities.yaml'}: modality {modality.name!r}: {e}") from None
    store = SpectrogramStore(cache_root(cfg), params, dataset=source_name(f"manifest-{modality.name}", manifest.root))
    images = [m for m, c in manifest.modalities.items() if c.kind in ("image", "frames", "video")]
    records = [ClipRecord(cache_key(r.id), 0, r.files[modality.name][0], [f for m in images for f in r.files[m]])
               for r in rows]
    by_key = {cache_key(r.id): r for r in rows}
    try:
        computed = store.ensure(records, workers=prepare_workers(cfg), skip_bad=bool(getattr(cfg, "skip_bad", False)),
                                progress=getattr(cfg, "progress", None), verify_frames=True)
    except DataError as e:
        bad = next((r for r in rows if r.files[modality.name][0] in str(e)), None)
        if bad is None:
            raise
        raise row_error(manifest.root, bad.line, bad.id, modality.name, str(e)) from None
    return store, computed, {by_key[k].id: v for k, v in store.failed.items()}


def _video_job(cfg, manifest: Manifest, row: ManifestRow, name: str) -> VideoJob | None:
    """The extraction a row's modality needs (a ``video``, or an ``audio`` that names a video), or None."""
    m, path = manifest.modalities[name], row.files[name][0]
    folder = cache_root(cfg) / "videos" / source_name(f"manifest-{name}", manifest.root)
    if m.kind == "audio" and Path(path).suffix.lower() in VIDEO_EXTENSIONS:
        rate = int(m.params["sample_rate"])
        return VideoJob(row.id, path, wav=str(folder / f"sr{rate}" / f"{cache_key(row.id)}.wav"), sample_rate=rate)
    if m.kind == "video":
        fps = float(m.params["fps"])
        return VideoJob(row.id, path, frames_dir=str(folder / f"fps{fps:g}" / cache_key(row.id)), fps=fps)
    return None


def _videos(cfg, manifest: Manifest, rows: list[ManifestRow]) -> tuple[list[ManifestRow], list[tuple[str, str]]]:
    """Extract what the videos hold (the missing outputs only, in ``prepare_workers`` processes)
    and point the rows at it; ``(rows left, problems)``."""
    by_id = {r.id: r for r in rows}
    problems: list[tuple[str, str]] = []
    for name in manifest.modalities:
        jobs = [job for r in rows if (job := _video_job(cfg, manifest, r, name)) is not None]
        if not jobs:
            continue
        try:
            _, failed = extract_videos(jobs, workers=prepare_workers(cfg), progress=getattr(cfg, "progress", None),
                                       skip_bad=bool(getattr(cfg, "skip_bad", False)))
        except DataError as e:
            bad = next((j for j in jobs if j.video in str(e)), None)
            if bad is None:
                raise
            raise row_error(manifest.root, by_id[bad.clip_id].line, bad.clip_id, name, str(e)) from None
        problems += list(failed.items())
        rows = [r for r in rows if r.id not in failed]
        for job in jobs:
            if job.clip_id not in failed:
                by_id[job.clip_id].files[name] = [job.wav] if job.wav else list_frames(job.frames_dir)
    return rows, problems


def _readers(cfg, manifest: Manifest, rows: list[ManifestRow], shapes: dict[str, tuple]
             ) -> tuple[dict[str, Any], list[ManifestRow], list[tuple[str, str]], dict]:
    readers: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    info: dict[str, Any] = {"spectrograms_computed": 0}
    for name, m in manifest.modalities.items():
        if m.kind == "audio":
            store, computed, failed = _spectrograms(cfg, manifest, rows, m)
            problems += list(failed.items())
            rows = [r for r in rows if r.id not in failed]
            readers[name] = SpectrogramReader(name, store)
            info["spectrograms_computed"] += computed
            info.setdefault("cache", str(store.directory))
        elif m.kind in ("image", "frames", "video"):
            frames = 1 if m.kind == "image" else int(m.params["frames"] or cfg.frames)
            readers[name] = FrameReader(name, frames, int(m.params["image_size"] or cfg.image_size),
                                        m.params["augment"])
        else:
            readers[name] = FeatureReader(name, shapes[name])
    return readers, rows, problems, info


def _scale_features(cfg, manifest: Manifest, readers: dict[str, Any], train_rows: list[ManifestRow]
                    ) -> tuple[dict[str, dict], dict]:
    """Give each ``features`` reader its scaling from the training rows (the cache's, or computed
    now); ``(modality -> {"kind", "center", "scale"}, info)``."""
    scaling: dict[str, dict] = {}
    info: dict[str, Any] = {"feature_scaling": {}, "scaling_computed": 0}
    for name, reader in readers.items():
        if not isinstance(reader, FeatureReader):
            continue
        kind = manifest.modalities[name].params["scale"]
        reader.scaling, computed = train_scaling(cfg, manifest.root, name, kind, reader.spec.shape, train_rows,
                                                 reader.raw)
        scaling[name] = reader.scaling.as_dict()
        info["feature_scaling"][name] = f"{kind} (train split)" if kind != "none" else "none"
        info["scaling_computed"] += int(computed)
    return scaling, info if scaling else {}


def _splits(cfg, manifest: Manifest, rows: list[ManifestRow], class_names: list[str]
            ) -> tuple[list[int], dict[str, list[int]], dict]:
    """``(labels, row indices of each split, split info)``; every class in train."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = [index[r.label] for r in rows]
    parts, info = assign_splits(
        manifest.root, rows, labels, has_split=manifest.has_split, has_group=manifest.has_group,
        val_fraction=float(cfg.val_fraction), test_fraction=float(manifest.options["test_fraction"]),
        seed=int(cfg.split_seed))
    check_class_coverage([labels[i] for i in parts["train"]], class_names,
                         f"{manifest.root / 'manifest.csv'} (train split)")
    return labels, parts, info


@DATASETS.register("manifest")
def build_manifest(cfg: Any) -> DataSplits:
    """DataSplits of the manifest at ``cfg.data_root`` (see the module docstring)."""
    root = require_root(cfg, "manifest")
    manifest = read_manifest(root)
    class_names = read_classes(root, manifest.rows)
    rows, problems, shapes = _checked_rows(cfg, manifest)
    if not rows:
        raise DataError(f"{root / 'manifest.csv'}: no usable rows ({len(problems)} skipped: {problems[0][1]})")
    _splits(cfg, manifest, rows, class_names)  # every check before the (slow) preprocessing
    rows, bad = _videos(cfg, manifest, rows)
    problems += bad
    readers, rows, bad, info = _readers(cfg, manifest, rows, shapes)
    problems += bad
    labels, parts, split_info = _splits(cfg, manifest, rows, class_names)
    scaling, scale_info = _scale_features(cfg, manifest, readers, [rows[i] for i in parts["train"]])
    splits = {s: ManifestDataset([rows[i] for i in idx], [labels[i] for i in idx], readers, train=s == "train")
              for s, idx in parts.items()}
    warn_skipped(str(root), problems)
    info = {"dataset": "manifest", "root": str(root), **{s: len(d) for s, d in splits.items()}, **split_info,
            "modalities": {n: m.kind for n, m in manifest.modalities.items()}, **info, **scale_info,
            **skipped_summary(problems)}
    return DataSplits(train=splits["train"], val=splits["val"], test=splits["test"],
                      modalities={name: r.spec for name, r in readers.items()},
                      num_classes=len(class_names), class_names=list(class_names), info=info, scaling=scaling)

