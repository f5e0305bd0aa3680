"""CMU-MOSI / CMU-MOSEI from MMSA-format pickles written by the test (small feature sizes):
seven-class labels, -inf replaced, the three sequence modalities, and every malformed pickle
named with what was expected."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from media_fixtures import make_cfg

from bmlr.data import DATASETS, DataError, build_datasets, mosi

DIMS = {"text": 12, "audio": 5, "vision": 20}
SCORES = np.array([-3.4, -2.6, -1.2, -0.4, 0.5, 1.5, 2.6, 3.0, -2.0, 1.0, 0.0, -1.5, 2.2, -2.9])


def make_pickle(n: dict | None = None, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n = n or {"train": 14, "valid": 5, "test": 6}
    data = {}
    for split, size in n.items():
        scores = np.resize(SCORES, size) if split == "train" else rng.uniform(-3, 3, size)
        entry = {m: rng.standard_normal((size, 50, d)).astype(np.float32) for m, d in DIMS.items()}
        entry["audio"][0, :3, 1] = -np.inf  # as in MMSA's MOSI audio features
        entry["regression_labels"] = scores.astype(np.float32)
        entry["id"] = np.array([f"{split}_{i}" for i in range(size)])
        data[split] = entry
    return data


def dump(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)
    return path


def test_seven_class_labels():
    assert mosi.seven_class(SCORES).tolist() == [0, 0, 2, 3, 3, 5, 6, 6, 1, 4, 3, 1, 5, 0]
    assert mosi.CLASS_NAMES[0] == "-3" and mosi.CLASS_NAMES[6] == "+3"


@pytest.mark.parametrize("dataset", ["mosi", "mosei"])
def test_happy_path(tmp_path, dataset):
    from bmlr.config import from_dict
    from bmlr.engine import build_model_for

    assert dataset in DATASETS
    dump(tmp_path / dataset.upper() / "Processed" / "aligned_50.pkl", make_pickle())
    data = build_datasets(make_cfg(tmp_path, dataset, tmp_path / dataset.upper()))
    assert (len(data.train), len(data.val), len(data.test)) == (14, 5, 6)
    assert data.num_classes == 7 and data.info["val_from"] == "valid split" and data.info["official_split"] is False
    assert list(data.modalities) == ["text", "audio", "vision"]
    assert {m: (s.kind, s.shape) for m, s in data.modalities.items()} == {
        m: ("sequence", (50, d)) for m, d in DIMS.items()}
    assert data.train.labels == mosi.seven_class(SCORES).tolist()
    assert data.info["train_class_counts"] == np.bincount(mosi.seven_class(SCORES), minlength=7).tolist()
    inputs, label = data.train[0]
    assert label == 0 and inputs["audio"].dtype == torch.float32
    assert torch.isfinite(inputs["audio"]).all() and (inputs["audio"][:3, 1] == 0).all()  # -inf -> 0
    # the pickle path itself works too, and the engine builds Transformers for the three sequences
    again = build_datasets(make_cfg(tmp_path, dataset, tmp_path / dataset.upper() / "Processed" / "aligned_50.pkl"))
    assert len(again.test) == 6
    cfg = from_dict({"dataset": dataset, "model_width": 8, "model_depth": 1})
    model = build_model_for(cfg, data)
    batch, labels = next(iter(torch.utils.data.DataLoader(data.train, batch_size=4)))
    fused, unimodal = model(batch)
    assert fused.shape == (4, 7) and set(unimodal) == set(DIMS)


def _broken(kind: str) -> object:
    data = make_pickle()
    if kind == "not_a_dict":
        return [1, 2, 3]
    if kind == "no_valid_split":
        del data["valid"]
    elif kind == "no_vision_key":
        del data["test"]["vision"]
    elif kind == "no_labels":
        del data["train"]["regression_labels"]
    elif kind == "row_mismatch":
        data["valid"]["text"] = data["valid"]["text"][:-1]
    elif kind == "dim_mismatch":
        data["test"]["audio"] = np.zeros((6, 50, 7), dtype=np.float32)
    elif kind == "not_3d":
        data["train"]["vision"] = np.zeros((14, 20), dtype=np.float32)
    return data


@pytest.mark.parametrize("kind, words", [
    ("not_a_dict", "got a list; expected a dict with splits"),
    ("no_valid_split", "missing split 'valid'"),
    ("no_vision_key", "split 'test' lacks key(s) ['vision']"),
    ("no_labels", "split 'train' lacks key(s) ['regression_labels']"),
    ("row_mismatch", "valid['text'] has shape (4, 50, 12); expected (N=5, L, D)"),
    ("dim_mismatch", "test['audio'] has per-sample shape (50, 7), but (50, 5) in the train split"),
    ("not_3d", "train['vision'] has shape (14, 20)"),
])
def test_malformed_pickle_names_file_and_expectation(tmp_path, kind, words):
    path = dump(tmp_path / "aligned_50.pkl", _broken(kind))
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg(tmp_path, "mosi", tmp_path))
    msg = str(err.value)
    assert str(path) in msg and words in msg, msg
    if kind.startswith("no_"):
        assert "text" in msg and "regression_labels" in msg  # says what was expected


def test_missing_or_unreadable_pickle(tmp_path, capsys):
    from bmlr.train import main

    with pytest.raises(DataError, match="MOSI data root not found"):
        build_datasets(make_cfg(tmp_path, "mosi", tmp_path / "absent"))
    with pytest.raises(DataError, match=f"no aligned_50.pkl in {tmp_path}"):
        build_datasets(make_cfg(tmp_path, "mosei", tmp_path))
    (tmp_path / "aligned_50.pkl").write_bytes(b"definitely not a pickle")
    with pytest.raises(DataError, match=f"cannot read pickle {tmp_path / 'aligned_50.pkl'}"):
        build_datasets(make_cfg(tmp_path, "mosi", tmp_path))
    dump(tmp_path / "aligned_50.pkl", _broken("no_vision_key"))
    rc = main(["--set", "dataset=mosi", "--set", f"data_root={tmp_path}", "--set", f"output_dir={tmp_path / 'r'}",
               "--no-progress"])
    assert rc == 2 and "lacks key(s) ['vision']" in capsys.readouterr().err
