"""AVE layout on a tiny generated copy: the official annotation files (Category&VideoID&Quality&
Start&End), audio and 1-fps frames per video id; every bad input; skip-bad."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from media_fixtures import BAD_CASES, break_clip, make_cfg, write_clip

from bmlr.data import DataError, ave, build_datasets


def write_ave(root: Path) -> dict[str, list[tuple[str, int]]]:
    """Train: one video per category; val and test: 8 videos each."""
    rng = np.random.default_rng(2)
    sizes = {"train": 28, "val": 8, "test": 8}
    rows: dict[str, list[tuple[str, int]]] = {}
    i = 0
    for split, n in sizes.items():
        rows[split] = []
        lines = ["Category&VideoID&Quality&StartTime&EndTime"] if split == "train" else []
        for k in range(n):
            label = k % 28 if split == "train" else (3 * k + 1) % 28
            vid = f"V{i:03d}-x_y{i}"
            i += 1
            write_clip(root / "audio" / f"{vid}.wav", root / "frames" / vid, label % 12, rng)
            lines.append(f"{ave.CLASS_NAMES[label]}&{vid}&{'good' if k % 2 else 'bad'}&{k % 5}&{5 + k % 5}")
            rows[split].append((vid, label))
        text = "\n".join(lines) + "\n"
        (root / ave.SPLIT_FILES[split]).write_bytes((("\ufeff" if split == "val" else "") + text).encode())
    return rows


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("ave") / "AVE_Dataset"
    return root, write_ave(root)


@pytest.fixture
def layout(tmp_path, pristine):
    root = tmp_path / "AVE_Dataset"
    shutil.copytree(pristine[0], root)
    return root, pristine[1]


def test_pinned_categories():
    assert len(ave.CLASS_NAMES) == 28 == len(set(ave.CLASS_NAMES))
    assert ave.CLASS_NAMES[0] == "Church bell" and "Baby cry, infant cry" in ave.CLASS_NAMES


def test_read_annotations(tmp_path, pristine):
    root, rows = pristine
    assert ave.read_annotations(root / "trainSet.txt", ave.CLASS_NAMES) == rows["train"]  # header skipped
    assert ave.read_annotations(root / "valSet.txt", ave.CLASS_NAMES) == rows["val"]  # BOM tolerated
    bad = tmp_path / "testSet.txt"
    for line, words in [
        ("Church bell&abc&good&0", "expected 'Category&VideoID&Quality&Start&End'"),
        ("Church bells&abc&good&0&10", "unknown category 'Church bells'"),
        ("Church bell&abc&good&zero&10", "whole seconds"),
        ("Church bell&abc&good&7&3", "0 <= Start < End"),
        ("Church bell&abc&good&0&10\nBark&abc&good&0&10", "repeated (first on line 2)"),
    ]:
        bad.write_text("Bark&first&good&0&10\n" + line + "\n")
        with pytest.raises(DataError) as err:
            ave.read_annotations(bad, ave.CLASS_NAMES)
        assert str(bad) in str(err.value) and words in str(err.value), str(err.value)
        assert "line 2" in str(err.value) or "line 3" in str(err.value)


def test_happy_path(tmp_path, layout):
    root, rows = layout
    data = build_datasets(make_cfg(tmp_path, "ave", root))
    assert data.num_classes == 28 and data.class_names == ave.CLASS_NAMES
    assert (len(data.train), len(data.val), len(data.test)) == (28, 8, 8)  # the official val split is kept
    assert data.info["val_from"] == "split file" and data.info["official_split"] is False
    assert data.modalities["audio"].shape == (1, 257, 1001)
    assert [(r.clip_id, r.label) for r in data.val.records] == rows["val"]
    assert [(r.clip_id, r.label) for r in data.test.records] == rows["test"]
    inputs, label = data.test[2]
    assert inputs["audio"].shape == (1, 257, 1001) and inputs["visual"].shape == (2, 3, 8, 8) and label == 7


def test_missing_annotation_file_and_folders(tmp_path, layout):
    root, _ = layout
    (root / "valSet.txt").unlink()
    with pytest.raises(DataError, match=f"AVE annotation file not found: {root / 'valSet.txt'}"):
        build_datasets(make_cfg(tmp_path, "ave", root))
    with pytest.raises(DataError, match="AVE data root not found"):
        build_datasets(make_cfg(tmp_path, "ave", tmp_path / "nope"))
    (root / "valSet.txt").write_text("")
    shutil.rmtree(root / "frames")
    with pytest.raises(DataError, match=f"folder not found: {root / 'frames'}.*prepare --dataset ave"):
        build_datasets(make_cfg(tmp_path, "ave", root))


def test_video_in_two_splits(tmp_path, layout):
    root, rows = layout
    with (root / "testSet.txt").open("a") as f:
        f.write(f"{ave.CLASS_NAMES[rows['val'][0][1]]}&{rows['val'][0][0]}&good&0&10\n")
    with pytest.raises(DataError, match=f"{rows['val'][0][0]}.*both the val and the test split"):
        build_datasets(make_cfg(tmp_path, "ave", root))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_clip_names_the_file(tmp_path, layout, case):
    root, rows = layout
    vid = rows["train"][0][0]
    named = break_clip(case, root / "audio" / f"{vid}.wav", root / "frames" / vid)
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg(tmp_path, "ave", root))
    assert named in str(err.value)


def test_skip_bad(tmp_path, layout):
    root, rows = layout
    broken = [v for v, _ in rows["test"][:len(BAD_CASES)]]
    for case, vid in zip(BAD_CASES, broken):
        break_clip(case, root / "audio" / f"{vid}.wav", root / "frames" / vid)
    with pytest.warns(UserWarning, match="skipped 7 bad clips"):
        data = build_datasets(make_cfg(tmp_path, "ave", root, skip_bad=True))
    assert data.info["skipped"] == 7 and set(data.info["skipped_clips"]) <= set(broken)
    assert [r.clip_id for r in data.test.records] == [v for v, _ in rows["test"][7:]]
