"""Per-dimension scaling of ``features`` modalities, from the training split only.

A feature's dimensions may run on any scale (counts up to 10^4 beside unit-variance
embeddings); an MLP or Transformer branch fed such values learns slowly or not at all. So a
``features`` modality is scaled by default, ``scale:`` in modalities.yaml choosing how:

* ``standard`` (default): ``(x - mean) / std`` (population std, ``ddof=0``, as scikit-learn's
  ``StandardScaler``);
* ``robust``: ``(x - median) / IQR`` (75th minus 25th percentile); a dimension whose IQR is 0
  but whose values vary falls back to its std;
* ``none``: the values as stored.

A dimension with no spread at all gets scale 1 (it becomes 0 after centring: never a division
by zero). A sequence ``[T, D]`` has one statistic per dimension ``D``, over every time step.
Non-finite values count as 0, as the reader hands them to the model.

The statistics are a deterministic function of the training rows (their order included) and
their files, computed in float64 and kept as JSON with the data cache::

    <cache root>/feature_scaling/<manifest-modality-hash>/<key>.json

``key`` hashes the scaling kind, the per-sample shape and the training rows' ids, files, sizes
and modification times: another scale, split or file gives another key (a statistic is never
reused for data it was not computed from), and production training and every tuning trial of
the same data read the same file.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bmlr.data.base import source_name
from bmlr.data.cache import cache_root, params_key
from bmlr.data.types import DataError
from bmlr.fileio import read_json, write_json

__all__ = ["SCALES", "FeatureScaling", "compute_scaling", "scaling_key", "train_scaling"]

SCALES = ("none", "standard", "robust")
VERSION = 1  # of the statistics' definition: a change gives new cache keys
CHUNK_ROWS = 1024  # training rows read at a time for the standard statistics


@dataclass(frozen=True)
class FeatureScaling:
    """One modality's scaling: ``kind`` and per-dimension ``center`` and ``scale`` (float64
    ``[D]``); applied as ``(x - center) / scale`` over the last axis."""

    kind: str
    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def identity(cls, dim: int) -> "FeatureScaling":
        return cls("none", np.zeros(dim), np.ones(dim))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``float32`` scaled copy of ``array`` (``[D]`` or ``[T, D]``); ``none``: the array itself."""
        if self.kind == "none":
            return array
        center, scale = self.center.astype(np.float32), self.scale.astype(np.float32)
        return ((array - center) / scale).astype(np.float32)

    def as_dict(self) -> dict[str, Any]:
        """``{"kind", "center", "scale"}`` with lists (JSON, ``model.pt``)."""
        return {"kind": self.kind, "center": [float(v) for v in self.center],
                "scale": [float(v) for v in self.scale]}

    @classmethod
    def from_dict(cls, doc: dict) -> "FeatureScaling":
        return cls(str(doc["kind"]), np.asarray(doc["center"], dtype=np.float64),
                   np.asarray(doc["scale"], dtype=np.float64))


def _spread(values: np.ndarray) -> np.ndarray:
    """Spreads with 0 (or non-finite) replaced by 1."""
    return np.where(np.isfinite(values) & (values > 0), values, 1.0)


def _standard(chunks) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std over the rows of every ``[n, D]`` chunk (Chan et al.'s pairwise
    combination of per-chunk means and squared deviations, float64)."""
    count, mean, m2 = 0, None, None
    for chunk in chunks:
        x = np.asarray(chunk, dtype=np.float64)
        n, mu = x.shape[0], x.mean(axis=0)
        sq = ((x - mu) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = n, mu, sq
            continue
        delta, total = mu - mean, count + n
        mean = mean + delta * (n / total)
        m2 = m2 + sq + delta ** 2 * (count * n / total)
        count = total
    if mean is None:
        raise DataError("no training rows to compute the feature scaling from")
    return mean, np.sqrt(m2 / count)


def _robust(chunks) -> tuple[np.ndarray, np.ndarray]:
    """Median and IQR over all rows (the IQR's zeros replaced by the std where that is not 0)."""
    parts = [np.asarray(c, dtype=np.float64) for c in chunks]
    if not parts:
        raise DataError("no training rows to compute the feature scaling from")
    x = np.concatenate(parts, axis=0)
    q25, median, q75 = np.percentile(x, [25.0, 50.0, 75.0], axis=0)
    iqr = q75 - q25
    return median, np.where(iqr > 0, iqr, x.std(axis=0))


def compute_scaling(kind: str, chunks) -> FeatureScaling:
    """The :class:`FeatureScaling` of ``kind`` over an iterable of ``[n, D]`` arrays (the
    training values, time steps of sequences as rows)."""
    if kind not in SCALES or kind == "none":
        raise ValueError(f"scale {kind!r}: expected one of {[s for s in SCALES if s != 'none']}")
    center, spread = (_standard if kind == "standard" else _robust)(chunks)
    return FeatureScaling(kind, center, _spread(spread))


def _file_stamp(path: str, seen: dict[str, str]) -> str:
    if path not in seen:
        try:
            st = os.stat(path)
            seen[path] = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            seen[path] = "?"
    return seen[path]


def scaling_key(kind: str, shape: tuple, rows: Sequence[Any], name: str) -> str:
    """Cache key of a modality's statistics: the scaling kind, the per-sample shape and the
    training rows (ids, files, sizes, modification times, in order)."""
    digest, seen = hashlib.sha1(), {}
    for row in rows:
        files = row.files[name]
        digest.update(json.dumps([row.id, files, _file_stamp(files[0], seen)]).encode("utf-8"))
        digest.update(b"\n")
    return params_key({"version": VERSION, "scale": kind, "shape": list(shape), "rows": digest.hexdigest(),
                       "count": len(rows)}, length=16)


def _chunks(load: Callable[[Any], np.ndarray], rows: Sequence[Any], dim: int):
    """The rows' arrays as ``[n, D]`` float64 chunks of up to :data:`CHUNK_ROWS` rows."""
    for start in range(0, len(rows), CHUNK_ROWS):
        arrays = [np.asarray(load(r), dtype=np.float64).reshape(-1, dim) for r in rows[start:start + CHUNK_ROWS]]
        yield np.concatenate(arrays, axis=0)


def train_scaling(cfg: Any, root: Path, name: str, kind: str, shape: tuple, train_rows: Sequence[Any],
                  load: Callable[[Any], np.ndarray]) -> tuple[FeatureScaling, bool]:
    """The modality's scaling from the training rows (``load(row)``: the raw, finite array), read
    from the cache or computed and saved there; ``(scaling, computed now)``."""
    dim = int(shape[-1])
    if kind == "none":
        return FeatureScaling.identity(dim), False
    key = scaling_key(kind, shape, train_rows, name)
    path = cache_root(cfg) / "feature_scaling" / source_name(f"manifest-{name}", root) / f"{key}.json"
    if path.is_file():
        try:
            scaling = FeatureScaling.from_dict(read_json(path))
            if scaling.kind == kind and scaling.center.shape == scaling.scale.shape == (dim,):
                return scaling, False
        except (ValueError, KeyError, TypeError):
            pass  # unreadable or foreign: computed again and replaced below
    scaling = compute_scaling(kind, _chunks(load, list(train_rows), dim))
    write_json(path, {**scaling.as_dict(), "modality": name, "rows": len(train_rows), "shape": list(shape)})
    return scaling, True
