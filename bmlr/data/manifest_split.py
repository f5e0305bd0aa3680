"""Train / val / test of a manifest data set, without leaks.

* A ``split`` column is used as given; a missing ``val`` is carved out of train.
* Without one, a seeded split: ``test_fraction`` (modalities.yaml ``split:``) of the rows go to
  test, then ``val_fraction`` of the rest to val.
* Carving is stratified by class (:func:`bmlr.data.base.stratified_split`) or, with a ``group``
  column, by whole groups (:func:`group_split`), so no group is on two sides. With a given split
  and a group column, a group on two sides is an error naming its row.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from bmlr.data.base import stratified_split
from bmlr.data.manifest_io import SPLIT_VALUES, ManifestRow, row_error
from bmlr.data.types import DataError

__all__ = ["group_split", "assign_splits"]


def group_split(labels: Sequence[int], groups: Sequence[str], fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(keep_idx, held_idx)``, whole groups held out, roughly ``fraction`` of each class.

    Groups are visited in a seeded random order; a group is held out when at least half of its
    samples fill a class quota still open (``round(fraction * class count)``). Both sorted.
    """
    labels = np.asarray(labels, dtype=np.int64)
    names = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    members: dict[str, list[int]] = {g: [] for g in names}
    for i, g in enumerate(groups):
        members[g].append(i)
    need = {int(c): int(round(fraction * n)) for c, n in zip(*np.unique(labels, return_counts=True))}
    held: list[int] = []
    for k in order:
        idx = members[names[k]]
        counts = Counter(int(labels[i]) for i in idx)
        gain = sum(min(n, need[c]) for c, n in counts.items())
        if gain > 0 and 2 * gain >= len(idx):
            held += idx
            for c, n in counts.items():
                need[c] = max(0, need[c] - n)
    keep = sorted(set(range(len(labels))) - set(held))
    return np.asarray(keep, dtype=np.int64), np.asarray(sorted(held), dtype=np.int64)


def _carve(idx: list[int], labels: Sequence[int], rows: Sequence[ManifestRow], fraction: float, seed: int,
           grouped: bool) -> tuple[list[int], list[int]]:
    sub_labels = [labels[i] for i in idx]
    if grouped:
        keep, held = group_split(sub_labels, [rows[i].group for i in idx], fraction, seed)
    else:
        keep, held = stratified_split(sub_labels, fraction, seed)
    return [idx[i] for i in keep], [idx[i] for i in held]


def _check_groups(root: Path, rows: Sequence[ManifestRow]) -> None:
    first: dict[str, ManifestRow] = {}
    for r in rows:
        other = first.setdefault(r.group, r)
        if other.split != r.split:
            raise row_error(root, r.line, r.id, "group",
                            f"group {r.group!r} is in the {r.split} split here and in the {other.split} split on "
                            f"line {other.line} (id {other.id!r}); expected each group in one split")


def assign_splits(root: Path, rows: Sequence[ManifestRow], labels: Sequence[int], *, has_split: bool,
                  has_group: bool, val_fraction: float, test_fraction: float, seed: int
                  ) -> tuple[dict[str, list[int]], dict]:
    """Row indices of each split (in file order) and what ``DataSplits.info`` says about them."""
    parts: dict[str, list[int]] = {s: [] for s in SPLIT_VALUES}
    if has_split:
        if has_group:
            _check_groups(root, rows)
        for i, r in enumerate(rows):
            parts[r.split].append(i)
        for split in ("train", "test"):
            if not parts[split]:
                raise DataError(f"{root / 'manifest.csv'}, column 'split': no row has split {split!r}; expected "
                                f"train and test rows (val is carved from train when absent)")
        info = {"split_from": "split column"}
    else:
        parts["train"], parts["test"] = _carve(list(range(len(rows))), labels, rows, test_fraction, seed, has_group)
        info = {"split_from": f"seeded {'group-aware' if has_group else 'stratified'} split",
                "test_fraction": test_fraction}
    val_given = bool(parts["val"])
    if not val_given:
        parts["train"], parts["val"] = _carve(parts["train"], labels, rows, val_fraction, seed, has_group)
    info["val_from"] = "split column" if val_given else "train"
    for split in SPLIT_VALUES:
        if not parts[split]:
            raise DataError(f"{root / 'manifest.csv'}: the {split} split is empty (val_fraction={val_fraction}, "
                            f"test_fraction={test_fraction}, {len(rows)} rows"
                            f"{', whole groups' if has_group else ''}); add rows or give a split column")
    if has_group:
        info["group_aware"] = True
        info["groups"] = {s: len({rows[i].group for i in parts[s]}) for s in SPLIT_VALUES}
    return parts, info
