"""Kinetics-Sounds layout on a tiny generated copy (31 classes, a few real wav + jpg clips each):
the pinned class list, the split files, every bad input, skip-bad."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from media_fixtures import BAD_CASES, break_clip, make_cfg, write_clip

from bmlr.data import DataError, build_datasets, ks

N_TRAIN, N_TEST = 2, 1


def write_ks(root: Path) -> dict[str, list[tuple[str, str]]]:
    rng = np.random.default_rng(1)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    i = 0
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for _ in range(n):
            for label_index, label in enumerate(ks.CLASS_NAMES):
                clip = f"yt{i:04d}-Ab_{i:06d}_{i + 10:06d}"
                i += 1
                write_clip(root / "audio" / f"{clip}.wav", root / "frames" / clip, label_index % 12, rng,
                           n_frames=1 + i % 3)
                rows[split].append((clip, label))
    (root / "classes.txt").write_text("\n".join(reversed(ks.CLASS_NAMES)) + "\n")  # any order
    for split in rows:
        (root / f"{split}.csv").write_text("".join(f"{c},{y}\n" for c, y in rows[split]))
    return rows


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("ks") / "kinetics-sounds"
    return root, write_ks(root)


@pytest.fixture
def layout(tmp_path, pristine):
    root = tmp_path / "ks"
    shutil.copytree(pristine[0], root)
    return root, pristine[1]


def test_pinned_class_list():
    assert len(ks.CLASS_NAMES) == 31 == len(set(ks.CLASS_NAMES)) and ks.CLASS_NAMES == sorted(ks.CLASS_NAMES)
    assert {"playing bagpipes", "tap dancing", "blowing out candles", "stomping grapes"} <= set(ks.CLASS_NAMES)
    assert not {"typing", "patting", "fingerpicking"} & set(ks.CLASS_NAMES)  # not in Kinetics-400


def test_happy_path(tmp_path, layout):
    root, rows = layout
    data = build_datasets(make_cfg(tmp_path, "ks", root, val_fraction=0.5, frames=3))
    assert data.num_classes == 31 and data.class_names == ks.CLASS_NAMES
    assert (len(data.train), len(data.val), len(data.test)) == (31, 31, 31)  # val carved from train
    assert data.info["val_from"] == "train" and data.info["spectrograms_computed"] == 93
    assert data.modalities["audio"].shape == (1, 257, 1001)  # 16 kHz, 10 s, n_fft 512, hop 160
    truth = {c: ks.CLASS_NAMES.index(y) for c, y in rows["train"] + rows["test"]}
    assert all(truth[r.clip_id] == r.label for s in (data.train, data.val, data.test) for r in s.records)
    inputs, _ = data.val[0]
    assert inputs["visual"].shape == (3, 3, 8, 8)  # frames repeated when a clip has fewer than T


def test_class_file_must_be_the_pinned_list(tmp_path, layout):
    root, _ = layout
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match=f"class list file not found: {root / 'classes.txt'}"):
        build_datasets(make_cfg(tmp_path, "ks", root))
    (root / "classes.txt").write_text("\n".join(ks.CLASS_NAMES[:-1] + ["juggling balls"]) + "\n")
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg(tmp_path, "ks", root))
    assert str(root / "classes.txt") in str(err.value) and "juggling balls" in str(err.value)
    assert ks.CLASS_NAMES[-1] in str(err.value)


def test_label_outside_class_list_and_missing_split(tmp_path, layout):
    root, rows = layout
    with (root / "train.csv").open("a") as f:
        f.write("extra_clip,playing kazoo\n")
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg(tmp_path, "ks", root))
    assert str(root / "train.csv") in str(err.value) and f"line {len(rows['train']) + 1}" in str(err.value)
    assert "playing kazoo" in str(err.value)
    (root / "train.csv").unlink()
    with pytest.raises(DataError, match=f"split file not found: {root / 'train.csv'}"):
        build_datasets(make_cfg(tmp_path, "ks", root))
    shutil.rmtree(root / "audio")
    with pytest.raises(DataError, match=f"folder not found: {root / 'audio'}"):
        build_datasets(make_cfg(tmp_path, "ks", root))
    with pytest.raises(DataError, match="Kinetics-Sounds data root not found"):
        build_datasets(make_cfg(tmp_path, "ks", root / "missing"))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_clip_names_the_file(tmp_path, layout, case):
    root, rows = layout
    clip = rows["train"][0][0]
    named = break_clip(case, root / "audio" / f"{clip}.wav", root / "frames" / clip)
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg(tmp_path, "ks", root))
    assert named in str(err.value)


def test_skip_bad(tmp_path, layout):
    root, rows = layout
    broken = [c for c, _ in rows["test"][:len(BAD_CASES)]]
    for case, clip in zip(BAD_CASES, broken):
        break_clip(case, root / "audio" / f"{clip}.wav", root / "frames" / clip)
    with pytest.warns(UserWarning, match="skipped 7 bad clips"):
        data = build_datasets(make_cfg(tmp_path, "ks", root, skip_bad=True))
    assert data.info["skipped"] == 7 and len(data.info["skipped_clips"]) == 5
    assert set(data.info["skipped_clips"]) <= set(broken)
    assert len(data.test) == 31 - 7
