"""Reading a manifest data set: ``manifest.csv``, ``modalities.yaml`` and ``classes.txt``.

Layout (``data_root``)::

    manifest.csv        header row; columns id, label, optional split (train/val/test), optional
                        group, and one column per modality naming its file (relative to data_root,
                        or absolute; for ``features`` with a ``matrix``, the row index into it)
    modalities.yaml     modality name -> {kind: audio | image | frames | video | features, parameters};
                        an optional top-level ``split: {test_fraction: 0.2, file: splits.csv}``
                        (test_fraction: used without a split column; file: a CSV ``id,split``
                        giving the split instead of a column); a ``features`` modality's
                        ``scale: none | standard | robust`` (default standard) picks its
                        per-dimension scaling (:mod:`bmlr.data.feature_scaling`)
    classes.txt         optional: class names in label order, one per line

Every problem raises :class:`DataError` naming the file, and for a row its line number (the
header is line 1), id and column. This module reads and checks; ``bmlr.data.manifest`` builds
the data sets.
"""
from __future__ import annotations

import csv
import itertools
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bmlr.data.base import list_frames, read_data_text
from bmlr.data.types import DataError

__all__ = ["MANIFEST", "MODALITIES", "CLASSES", "RESERVED", "KINDS", "SPLIT_VALUES", "KIND_PARAMS",
           "ModalityConfig", "ManifestRow", "Manifest", "read_modalities", "read_manifest", "read_classes",
           "row_error", "check_row_files", "feature_shape", "apply_split_file"]

MANIFEST = "manifest.csv"
MODALITIES = "modalities.yaml"
CLASSES = "classes.txt"
RESERVED = ("id", "label", "split", "group")
SPLIT_VALUES = ("train", "val", "test")
#: kind -> its parameters in modalities.yaml and their defaults (None: from the config)
KIND_PARAMS: dict[str, dict[str, Any]] = {
    "audio": {"sample_rate": 16000, "duration_s": 1.0, "n_fft": 512, "hop_length": 160, "tile": True},
    "image": {"image_size": None, "augment": True},
    "frames": {"frames": None, "image_size": None, "augment": True},
    "video": {"fps": 1.0, "frames": None, "image_size": None, "augment": True},
    "features": {"shape": None, "matrix": None, "scale": "standard"},
}
KINDS = tuple(KIND_PARAMS)
SPLIT_OPTIONS = {"test_fraction": 0.2, "file": None}


@dataclass(frozen=True)
class ModalityConfig:
    """One modality of modalities.yaml: its name (= the manifest column), kind and parameters
    (the kind's defaults filled in)."""

    name: str
    kind: str
    params: dict


@dataclass
class ManifestRow:
    """One sample: CSV line, id, label name, split and group (None without those columns), and
    each modality's files (audio / image / features: one; frames: the sorted frame images)."""

    line: int
    id: str
    label: str
    split: str | None
    group: str | None
    files: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Manifest:
    """The parsed manifest: rows in file order, modalities in modalities.yaml order, options."""

    root: Path
    rows: list[ManifestRow]
    modalities: dict[str, ModalityConfig]
    has_split: bool
    has_group: bool
    options: dict


def row_error(root: Path, line: int, clip: str | None, column: str, message: str) -> DataError:
    """``DataError("<root>/manifest.csv, line N (id 'x'), column 'c': message")``."""
    who = f" (id {clip!r})" if clip else ""
    return DataError(f"{root / MANIFEST}, line {line}{who}, column {column!r}: {message}")


def _load_yaml(path: Path) -> Any:
    import yaml

    text = read_data_text(path, "modalities file", f"a mapping: modality name -> {{kind: {'|'.join(KINDS)}}}")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from None


def _modality(path: Path, name: Any, spec: Any) -> ModalityConfig:
    if not isinstance(name, str) or not name or name in RESERVED:
        raise DataError(f"{path}: modality name {name!r} is not usable; expected a CSV column name other "
                        f"than {list(RESERVED)}")
    if not isinstance(spec, dict) or spec.get("kind") not in KIND_PARAMS:
        got = spec.get("kind") if isinstance(spec, dict) else spec
        raise DataError(f"{path}: modality {name!r}: kind {got!r}; expected kind: one of {list(KINDS)}")
    kind = spec["kind"]
    defaults = KIND_PARAMS[kind]
    unknown = sorted(set(spec) - set(defaults) - {"kind"})
    if unknown:
        raise DataError(f"{path}: modality {name!r} ({kind}): unknown parameter(s) {unknown}; "
                        f"expected some of {sorted(defaults)}")
    params = {**defaults, **{k: v for k, v in spec.items() if k != "kind"}}
    for key, value in params.items():
        if value is not None and not _valid(key, value):
            raise DataError(f"{path}: modality {name!r} ({kind}): {key}: {value!r}; expected {_EXPECTED[key]}")
    return ModalityConfig(name, kind, params)


_EXPECTED = {"sample_rate": "a positive integer", "n_fft": "a positive integer", "hop_length": "a positive integer",
             "frames": "a positive integer", "image_size": "a positive integer", "duration_s": "a positive number",
             "fps": "a positive number", "tile": "true or false", "augment": "true or false",
             "shape": "a list of positive integers, [D] or [T, D]", "matrix": "a .npy file name",
             "scale": "one of none, standard, robust"}


def _valid(key: str, value: Any) -> bool:
    """Whether a modalities.yaml parameter has the type :data:`_EXPECTED` says."""
    expected = _EXPECTED[key]
    if expected == "true or false":
        return isinstance(value, bool)
    if key == "shape":
        return isinstance(value, list) and len(value) in (1, 2) and all(_valid("frames", v) for v in value)
    if key == "matrix":
        return isinstance(value, str) and bool(value)
    if key == "scale":
        return value in ("none", "standard", "robust")
    number = (int,) if "integer" in expected else (int, float)
    return isinstance(value, number) and not isinstance(value, bool) and value > 0


def read_modalities(root: Path) -> tuple[dict[str, ModalityConfig], dict]:
    """``(modalities in file order, split options)`` from ``<root>/modalities.yaml``."""
    path = root / MODALITIES
    doc = _load_yaml(path)
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping of modality name -> {{kind: ..., parameters}}")
    options = doc.pop("split", None) or {}
    if not isinstance(options, dict) or set(options) - set(SPLIT_OPTIONS):
        raise DataError(f"{path}: 'split' must be a mapping with some of {sorted(SPLIT_OPTIONS)}, got {options!r}")
    options = {**SPLIT_OPTIONS, **options}
    if not 0.0 < float(options["test_fraction"]) < 1.0:
        raise DataError(f"{path}: split.test_fraction must be in (0, 1), got {options['test_fraction']}")
    modalities = {name: _modality(path, name, spec) for name, spec in doc.items()}
    if not 2 <= len(modalities) <= 3:
        raise DataError(f"{path}: {len(modalities)} modalities {list(modalities)}; expected two or three")
    return modalities, options


def _header(root: Path, fields: list[str] | None, modalities: dict[str, ModalityConfig]) -> None:
    path = root / MANIFEST
    if not fields:
        raise DataError(f"{path}: empty file; expected a header row: id,label[,split][,group],<modality>...")
    for column in ("id", "label"):
        if column not in fields:
            raise DataError(f"{path}, line 1: no {column!r} column in the header {fields}")
    if len(set(fields)) != len(fields):
        raise DataError(f"{path}, line 1: repeated column in the header {fields}")
    for column in fields:
        if column not in RESERVED and column not in modalities:
            raise DataError(f"{path}, line 1, column {column!r}: not a modality of {root / MODALITIES} "
                            f"({list(modalities)}) nor one of {list(RESERVED)}")
    for name in modalities:
        if name not in fields:
            raise DataError(f"{path}, line 1: modality {name!r} of {root / MODALITIES} has no column in the header "
                            f"{fields}")


def _row(root: Path, line: int, raw: dict, modalities: dict[str, ModalityConfig], seen: dict[str, int]) -> ManifestRow:
    if None in raw or any(v is None for v in raw.values()):
        raise row_error(root, line, None, "id", "wrong number of cells; expected one per header column")
    clip = raw["id"].strip()
    if not clip:
        raise row_error(root, line, None, "id", "empty id")
    if clip in seen:
        raise row_error(root, line, clip, "id", f"id repeated (first on line {seen[clip]})")
    seen[clip] = line
    label = raw["label"].strip()
    if not label:
        raise row_error(root, line, clip, "label", "empty label")
    split = raw["split"].strip() if "split" in raw else None
    if split is not None and split not in SPLIT_VALUES:
        raise row_error(root, line, clip, "split", f"unknown split {split!r}; expected one of {list(SPLIT_VALUES)}")
    group = raw["group"].strip() if "group" in raw else None
    if group is not None and not group:
        raise row_error(root, line, clip, "group", "empty group")
    files = {name: [raw[name].strip()] for name in modalities}
    return ManifestRow(line, clip, label, split, group, files)


def read_manifest(root: Path) -> Manifest:
    """Parse modalities.yaml and manifest.csv (UTF-8, a BOM tolerated; blank lines skipped).
    Files are not checked here (:func:`check_row_files`)."""
    modalities, options = read_modalities(root)
    text = read_data_text(root / MANIFEST, "manifest", "a CSV with a header row id,label[,split][,group],<modality>...")
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip() for f in (reader.fieldnames or [])]
    _header(root, fields, modalities)
    reader.fieldnames = fields
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    for raw in reader:
        rows.append(_row(root, reader.line_num, raw, modalities, seen))
    if not rows:
        raise DataError(f"{root / MANIFEST}: no rows after the header")
    has_split = "split" in fields
    if options["file"]:
        if has_split:
            raise DataError(f"{root / MODALITIES}: split.file {options['file']!r} and a split column in "
                            f"{root / MANIFEST}; expected one of the two")
        apply_split_file(_resolve(root, str(options["file"])), rows)
        has_split = True
    return Manifest(root, rows, modalities, has_split, "group" in fields, options)


def apply_split_file(path: Path, rows: list[ManifestRow]) -> None:
    """Set each row's split from a CSV with a header ``id,split`` (every manifest id once)."""
    reader = csv.DictReader(read_data_text(path, "split file", "a CSV with a header id,split").splitlines())
    if not reader.fieldnames or not {"id", "split"} <= {f.strip() for f in reader.fieldnames}:
        raise DataError(f"{path}, line 1: header {reader.fieldnames}; expected id,split")
    reader.fieldnames = [f.strip() for f in reader.fieldnames]
    by_id = {r.id: r for r in rows}
    seen: dict[str, int] = {}
    for raw in reader:
        clip, split = (raw.get("id") or "").strip(), (raw.get("split") or "").strip()
        where = f"{path}, line {reader.line_num} (id {clip!r})"
        if clip not in by_id:
            raise DataError(f"{where}, column 'id': not an id of the manifest")
        if clip in seen:
            raise DataError(f"{where}, column 'id': id repeated (first on line {seen[clip]})")
        if split not in SPLIT_VALUES:
            raise DataError(f"{where}, column 'split': unknown split {split!r}; expected one of {list(SPLIT_VALUES)}")
        seen[clip] = reader.line_num
        by_id[clip].split = split
    missing = [r for r in rows if r.id not in seen]
    if missing:
        raise DataError(f"{path}: {len(missing)} manifest ids have no split, e.g. {missing[0].id!r} (manifest line "
                        f"{missing[0].line}); expected every id once")


def read_classes(root: Path, rows: list[ManifestRow]) -> list[str]:
    """``classes.txt`` (one name per line) when present, checking every row's label against it;
    else the sorted distinct labels."""
    path = root / CLASSES
    if not path.exists():
        warn_doubtful_labels(root, rows)
        return sorted({r.label for r in rows})
    names = [line.strip() for line in read_data_text(path, "class file").splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: a class name is repeated; expected each name once")
    known = set(names)
    for r in rows:
        if r.label not in known:
            raise row_error(root, r.line, r.id, "label", f"unknown label {r.label!r}; expected one of {names} "
                                                         f"({path})")
    return names


def one_edit_apart(a: str, b: str) -> bool:
    """Whether ``b`` is ``a`` with one character changed, added or removed, or ``a`` in
    another case (``cat`` / ``Cat``, ``cat`` / ``cats``, ``cat`` / ``cart``)."""
    if a == b:
        return False
    if a.casefold() == b.casefold():
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    short, long_ = sorted((a, b), key=len)
    i = next((k for k in range(len(short)) if short[k] != long_[k]), len(short))
    return short[i + (len(short) == len(long_)):] == long_[i + 1:]


def warn_doubtful_labels(root: Path, rows: list[ManifestRow]) -> None:
    """Without ``classes.txt`` every distinct label is a class, so a typo becomes a class of its
    own: warn, naming the manifest lines, about a label with one sample and about a label one
    edit away from another that has ten times its samples (classes named ``0`` to ``9`` with
    similar counts are not typos); ``classes.txt`` makes an unknown label an error."""
    lines: dict[str, list[int]] = {}
    for r in rows:
        lines.setdefault(r.label, []).append(r.line)
    near = [(rare, common) for rare, common in (sorted(pair, key=lambda label: len(lines[label]))
                                                for pair in itertools.combinations(sorted(lines), 2))
            if one_edit_apart(rare, common) and 10 * len(lines[rare]) <= len(lines[common])]  # a typo is rare
    doubtful = [f"{rare!r} (line {', '.join(map(str, lines[rare][:5]))}) is one edit from {common!r}"
                for rare, common in near]
    named = {rare for rare, _ in near}
    doubtful += [f"{label!r} has one sample (line {rows_[0]})" for label, rows_ in sorted(lines.items())
                 if len(rows_) == 1 and label not in named]
    if doubtful:
        warnings.warn(f"{root / MANIFEST}: no {CLASSES}, so every label is a class; doubtful labels: "
                      f"{'; '.join(doubtful[:10])}. A typo becomes a class of its own: fix the rows, or list the "
                      f"classes in {root / CLASSES} to make an unknown label an error", stacklevel=2)


def _resolve(root: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else root / path


def feature_shape(path: Path) -> tuple[int, ...]:
    """Shape of a ``.npy`` file, read from its header only."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"file not found: {path} (expected a .npy array)") from None
    except (ValueError, OSError) as e:
        raise DataError(f"cannot read {path} as a .npy array: {e}") from None
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{path}: dtype {array.dtype}; expected numbers")
    return tuple(int(s) for s in array.shape)


def _check_one(path: Path, kind: str) -> list[str]:
    if kind == "frames":
        frames = list_frames(path)
        if not frames:
            raise DataError(f"no frame images (.jpg, .jpeg, .png) in {path}")
        return frames
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes)")
    return [str(path)]


def _matrix_row(root: Path, modality: ModalityConfig, value: str, shapes: dict[str, tuple]) -> tuple[list[str], tuple]:
    """``([matrix file, row index], per-row shape)`` of a ``features`` modality with a ``matrix``."""
    matrix = _resolve(root, str(modality.params["matrix"]))
    key = f"{modality.name}:matrix"
    if key not in shapes:
        try:
            shapes[key] = feature_shape(matrix)
        except DataError as e:
            raise DataError(f"{root / MODALITIES}: modality {modality.name!r}: {e}") from None
        if len(shapes[key]) not in (2, 3):
            raise DataError(f"{root / MODALITIES}: modality {modality.name!r}: {matrix} has shape {shapes[key]}; "
                            f"expected [N, D] or [N, T, D] (one row per sample)")
    n = shapes[key][0]
    if not value.isdigit() or int(value) >= n:
        raise DataError(f"row index {value!r} into {matrix}; expected an integer from 0 to {n - 1}")
    return [str(matrix), str(int(value))], shapes[key][1:]


def _check_features(root: Path, modality: ModalityConfig, value: str, shapes: dict[str, tuple]) -> list[str]:
    if modality.params["matrix"]:
        files, shape = _matrix_row(root, modality, value, shapes)
    else:
        path = _resolve(root, value)
        files, shape = _check_one(path, "features"), feature_shape(path)
    if len(shape) not in (1, 2) or 0 in shape:
        raise DataError(f"{files[0]} has shape {shape}; expected a vector [D] or a sequence [T, D]")
    expected = shapes.setdefault(modality.name, shape)
    if shape != expected:
        raise DataError(f"{files[0]} has {'rows of ' if len(files) == 2 else ''}shape {shape}, expected {expected} "
                        f"(as {MODALITIES if modality.params['shape'] else 'the other rows'})")
    return files


def check_row_files(root: Path, row: ManifestRow, modalities: dict[str, ModalityConfig],
                    shapes: dict[str, tuple]) -> None:
    """Resolve and check each modality file of ``row`` in place (``row.files``); a features file
    must have ``shapes[name]`` (set from the first row when modalities.yaml gives none)."""
    for name, modality in modalities.items():
        value = row.files[name][0]
        if not value:
            raise row_error(root, row.line, row.id, name, "empty cell; expected a file name")
        try:
            if modality.kind == "features":
                row.files[name] = _check_features(root, modality, value, shapes)
            else:
                row.files[name] = _check_one(_resolve(root, value), modality.kind)
        except DataError as e:
            raise row_error(root, row.line, row.id, name, str(e)) from None
