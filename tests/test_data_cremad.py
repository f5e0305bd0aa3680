"""CREMA-D layout on a tiny generated copy: real wav and jpg files, a few clips per class; the
happy path, every bad input (error naming the file, or skipped and counted with skip_bad) and the
exit status of the training CLI."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from media_fixtures import BAD_CASES, break_clip, make_cfg, write_clip

from bmlr.data import DataError, build_datasets, cremad
from bmlr.data.audio import compute_spectrogram

N_TRAIN, N_TEST = 3, 1


def write_cremad(root: Path, frames_dir: str = "Image-01-FPS") -> dict[str, list[tuple[str, str]]]:
    rng = np.random.default_rng(0)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    i = 0
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        for k in range(n):
            for label_index, label in enumerate(cremad.CLASS_NAMES):
                clip = f"{1001 + i}_DFA_{label}_XX"
                i += 1
                write_clip(root / "AudioWAV" / f"{clip}.wav", root / frames_dir / clip, label_index, rng)
                rows[split].append((clip, label))
    # the common split files: no header; train.csv with a UTF-8 byte-order mark and CRLF
    (root / "train.csv").write_bytes(("\ufeff" + "".join(f"{c},{y}\r\n" for c, y in rows["train"])).encode())
    (root / "test.csv").write_text("".join(f"{c},{y}\n" for c, y in rows["test"]))
    return rows


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("cremad") / "CREMA-D"
    return root, write_cremad(root)


@pytest.fixture
def layout(tmp_path, pristine):
    root = tmp_path / "CREMA-D"
    shutil.copytree(pristine[0], root)
    return root, pristine[1]


def test_happy_path(tmp_path, layout):
    root, rows = layout
    data = build_datasets(make_cfg(tmp_path, "cremad", root))
    assert data.class_names == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"] and data.num_classes == 6
    assert (len(data.train), len(data.val), len(data.test)) == (12, 6, 6)
    assert data.info["train"] == 12 and data.info["val"] == 6 and data.info["test"] == 6
    assert data.info["skipped"] == 0 and data.info["spectrograms_computed"] == 24
    assert data.info["common_split"] is False
    assert data.modalities["audio"].shape == (1, 257, 188)  # 22,050 Hz, 3 s, n_fft 512, hop 353
    assert data.modalities["visual"].kind == "frames" and data.modalities["visual"].shape == (2, 3, 8, 8)
    # labels come from the split files; the validation split is stratified and disjoint from train
    truth = {c: cremad.CLASS_NAMES.index(y) for c, y in rows["train"] + rows["test"]}
    for split in (data.train, data.val, data.test):
        assert all(truth[r.clip_id] == r.label for r in split.records)
    assert sorted(np.bincount(data.val.labels, minlength=6)) == [1] * 6
    assert not {r.clip_id for r in data.train.records} & {r.clip_id for r in data.val.records}
    assert {r.clip_id for r in data.test.records} == {c for c, _ in rows["test"]}
    inputs, label = data.train[0]
    assert inputs["audio"].shape == (1, 257, 188) and inputs["visual"].shape == (2, 3, 8, 8)
    record = data.test.records[0]
    assert torch.equal(data.test[0][0]["audio"][0],
                       torch.from_numpy(compute_spectrogram(record.audio_path, cremad.SPECTROGRAM_PARAMS)))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    again = build_datasets(make_cfg(tmp_path, "cremad", root))
    assert torch.equal(torch.rand(3), expected)  # building (and checking an item) leaves torch's RNG alone
    assert again.info["spectrograms_computed"] == 0
    assert [r.clip_id for r in again.val.records] == [r.clip_id for r in data.val.records]
    other_seed = build_datasets(make_cfg(tmp_path, "cremad", root, split_seed=1))
    assert [r.clip_id for r in other_seed.val.records] != [r.clip_id for r in data.val.records]


def test_frames_folder_alternative_name(tmp_path, layout):
    root, _ = layout
    (root / "Image-01-FPS").rename(root / "Frames")
    data = build_datasets(make_cfg(tmp_path, "cremad", root))
    assert "/Frames/" in data.train.records[0].frame_paths[0]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_clip_names_the_file(tmp_path, layout, case):
    root, rows = layout
    clip = rows["train"][0][0]
    named = break_clip(case, root / "AudioWAV" / f"{clip}.wav", root / "Image-01-FPS" / clip)
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg(tmp_path, "cremad", root))
    assert named in str(err.value)


def test_skip_bad_skips_counts_and_names(tmp_path, layout):
    root, rows = layout
    broken = [c for c, _ in rows["train"][:len(BAD_CASES)]]  # one clip per case, classes NEU..ANG, NEU
    for case, clip in zip(BAD_CASES, broken):
        break_clip(case, root / "AudioWAV" / f"{clip}.wav", root / "Image-01-FPS" / clip)
    with pytest.warns(UserWarning, match=r"skipped 7 bad clips \(") as record:
        data = build_datasets(make_cfg(tmp_path, "cremad", root, skip_bad=True))
    assert data.info["skipped"] == 7 and len(data.info["skipped_clips"]) == 5
    assert set(data.info["skipped_clips"]) <= set(broken)
    assert broken[0] in str(record[0].message)
    kept = {r.clip_id for s in (data.train, data.val, data.test) for r in s.records}
    assert not kept & set(broken) and len(kept) == 24 - 7


def test_missing_root_split_file_and_folders(tmp_path, layout):
    root, _ = layout
    with pytest.raises(DataError, match="data root not found: .*nowhere"):
        build_datasets(make_cfg(tmp_path, "cremad", tmp_path / "nowhere"))
    with pytest.raises(DataError, match="data_root is not set"):
        build_datasets(make_cfg(tmp_path, "cremad", None))
    (root / "test.csv").rename(root / "test.bak")
    with pytest.raises(DataError, match=f"split file not found: {root / 'test.csv'}"):
        build_datasets(make_cfg(tmp_path, "cremad", root))
    (root / "test.bak").rename(root / "test.csv")
    shutil.rmtree(root / "Image-01-FPS")
    with pytest.raises(DataError, match="Image-01-FPS.*prepare --dataset cremad"):
        build_datasets(make_cfg(tmp_path, "cremad", root))
    shutil.rmtree(root / "AudioWAV")
    with pytest.raises(DataError, match=f"audio folder not found: {root / 'AudioWAV'}"):
        build_datasets(make_cfg(tmp_path, "cremad", root))


def test_label_outside_class_list(tmp_path, layout):
    root, rows = layout
    text = (root / "test.csv").read_text().splitlines()
    text[1] = text[1].split(",")[0] + ",SURPRISE"
    (root / "test.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg(tmp_path, "cremad", root))
    msg = str(err.value)
    assert str(root / "test.csv") in msg and "line 2" in msg and "SURPRISE" in msg and "NEU" in msg


def test_training_cli_exits_2_naming_the_file(tmp_path, layout, capsys):
    from bmlr.train import main

    root, rows = layout
    clip = rows["test"][0][0]
    (root / "AudioWAV" / f"{clip}.wav").unlink()
    rc = main(["--set", "dataset=cremad", "--set", f"data_root={root}", "--set", f"cache_dir={tmp_path / 'c'}",
               "--set", f"output_dir={tmp_path / 'runs'}", "--set", "epochs=1", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(root / "AudioWAV" / f"{clip}.wav") in err
