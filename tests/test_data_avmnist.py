"""AV-MNIST: FSDD-style recordings paired by label with MNIST idx images.

Tiny generated layouts for the happy path and the bad inputs; the real ``../shared/data`` (FSDD +
MNIST; skipped with a reason where absent) for the official split and the pairing, and, marked
slow, end to end: prepare, then train ``baseline`` and ``bmlr`` for a few epochs on the CPU."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from media_fixtures import make_cfg, write_wav

from bmlr.data import DataError, avmnist, build_datasets
from bmlr.data.frames import IMAGENET_MEAN, IMAGENET_STD

TEST_TAKES, TRAIN_TAKES = (0, 3), (5, 6, 7)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def digit_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose pixel values encode their label (for checking the pairing)."""
    images = rng.integers(0, 256, size=(len(labels), 28, 28)).astype(np.uint8)
    images[:, 0, 0] = labels * 20  # the pairing test reads the label back from this pixel
    return images


def write_avmnist(root: Path) -> None:
    rng = np.random.default_rng(3)
    for digit in range(10):
        for take in TEST_TAKES + TRAIN_TAKES:
            write_wav(root / "fsdd" / "recordings" / f"{digit}_spk_{take}.wav", digit, rng)
    for prefix, per_digit, ext in (("train", 3, ""), ("t10k", 4, ".gz")):
        labels = np.repeat(np.arange(10), per_digit)
        labels = labels[rng.permutation(len(labels))]
        write_idx(root / "mnist" / f"{prefix}-images-idx3-ubyte{ext}", digit_images(labels, rng))
        write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte{ext}", labels)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("avmnist") / "data"
    write_avmnist(root)
    return root


@pytest.fixture
def layout(tmp_path, pristine):
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    return root


def test_read_idx(tmp_path, pristine):
    images, labels = avmnist.load_mnist(pristine / "mnist")
    assert images.shape == (70, 28, 28) and labels.shape == (70,)
    assert np.bincount(labels).tolist() == [7] * 10
    assert np.array_equal(images[:, 0, 0], labels * 20)  # the two files agree, train pair first
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match=f"{bad}: not an idx file"):
        avmnist.read_idx(bad, 3)
    write_idx(bad, np.zeros((3, 4, 4), dtype=np.uint8))
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DataError, match=f"{bad}: .*truncated"):
        avmnist.read_idx(bad, 3)


def test_happy_path_and_pairing(tmp_path, layout):
    data = build_datasets(make_cfg(tmp_path, "avmnist", layout, image_size=28, frames=3))
    assert data.num_classes == 10 and data.class_names == [str(d) for d in range(10)]
    # FSDD's official split by take; validation: a third of each digit's train recordings
    assert (len(data.train), len(data.val), len(data.test)) == (20, 10, 20)
    assert {int(r.clip_id.split("_")[2]) for r in data.test.records} == set(TEST_TAKES)
    assert data.modalities["audio"].shape == (1, 129, 63)  # 8 kHz, 1 s, n_fft 256, hop 128
    assert data.modalities["visual"].kind == "frames" and data.modalities["visual"].shape == (1, 3, 28, 28)
    images, _ = avmnist.load_mnist(layout / "mnist")
    used = []
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for split in (data.train, data.val, data.test):
        for i, record in enumerate(split.records):
            image = images[split.image_index[i]]
            assert image[0, 0] == 20 * record.label  # paired by label
            used.append(split.image_index[i])
        inputs, label = split[0]
        expected = (torch.from_numpy(images[split.image_index[0]] / 255.0).float() - mean) / std
        assert torch.allclose(inputs["visual"][0], expected, atol=1e-6)  # gray -> 3 channels, normalised
        assert inputs["audio"].shape == (1, 129, 63) and label == split.records[0].label
    assert len(used) == len(set(used)) == 50  # no image used twice, so none shared across splits
    again = build_datasets(make_cfg(tmp_path, "avmnist", layout, image_size=28))
    assert again.test.image_index == data.test.image_index and again.info["spectrograms_computed"] == 0
    other = build_datasets(make_cfg(tmp_path, "avmnist", layout, image_size=8, split_seed=1))
    assert other.test.image_index != data.test.image_index
    assert other.test[0][0]["visual"].shape == (1, 3, 8, 8)


def test_too_few_images(tmp_path, layout):
    for take in (8, 9, 10):
        write_wav(layout / "fsdd" / "recordings" / f"4_spk_{take}.wav", 4, np.random.default_rng(0))
    with pytest.raises(DataError, match="8 recordings of digit 4 but only 7 MNIST images"):
        build_datasets(make_cfg(tmp_path, "avmnist", layout))


def test_missing_folders_and_files(tmp_path, layout):
    with pytest.raises(DataError, match="AV-MNIST data root not found"):
        build_datasets(make_cfg(tmp_path, "avmnist", tmp_path / "nothing"))
    (layout / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz has no matching t10k-labels"):
        build_datasets(make_cfg(tmp_path, "avmnist", layout))
    shutil.rmtree(layout / "mnist")
    with pytest.raises(DataError, match=f"MNIST folder not found: {layout / 'mnist'}"):
        build_datasets(make_cfg(tmp_path, "avmnist", layout))
    shutil.rmtree(layout / "fsdd")
    with pytest.raises(DataError, match=f"FSDD recordings folder not found: {layout / 'fsdd' / 'recordings'}"):
        build_datasets(make_cfg(tmp_path, "avmnist", layout))


@pytest.mark.parametrize("case", ["bad_name", "empty_wav", "unreadable_wav"])
def test_bad_recordings(tmp_path, layout, case):
    rec = layout / "fsdd" / "recordings"
    if case == "bad_name":
        named = rec / "seven_spk_1.wav"
        shutil.copy(rec / "7_spk_5.wav", named)
    else:
        named = rec / "2_spk_5.wav"
        named.write_bytes(b"" if case == "empty_wav" else b"RIFF garbage garbage garbage")
    with pytest.raises(DataError) as err:
        build_datasets(make_cfg(tmp_path, "avmnist", layout))
    assert str(named) in str(err.value)
    with pytest.warns(UserWarning, match="skipped 1 bad clips"):
        data = build_datasets(make_cfg(tmp_path, "avmnist", layout, skip_bad=True))
    assert data.info["skipped"] == 1 and data.info["skipped_clips"] == [named.stem]
    assert len(data.train) + len(data.val) + len(data.test) == 50 - (case != "bad_name")


# --- the real data in ../shared/data ------------------------------------------------------------


def test_shared_data_official_split_and_pairing(shared_data):
    rows, problems = avmnist.list_fsdd(shared_data / "fsdd" / "recordings")
    assert not problems and len(rows["train"]) == 2700 and len(rows["test"]) == 300
    assert np.bincount([d for _, d in rows["test"]]).tolist() == [30] * 10
    images, labels = avmnist.load_mnist(shared_data / "mnist")
    assert images.shape == (10000, 28, 28)
    paired = avmnist.pair_images(rows, labels, seed=0)
    everything = paired["train"] + paired["test"]
    assert len(set(everything)) == 3000  # never an image twice, so never across splits
    for split in ("train", "test"):
        assert all(labels[i] == d for i, (_, d) in zip(paired[split], rows[split]))
    assert avmnist.pair_images(rows, labels, seed=0) == paired
    assert avmnist.pair_images(rows, labels, seed=1)["test"] != paired["test"]


@pytest.mark.slow
def test_shared_data_end_to_end_prepare_and_train(shared_data, tmp_path):
    """prepare, then 3 epochs of baseline and bmlr on the CPU: both far above chance (10 %)."""
    from bmlr.config import load_config
    from bmlr.data.prepare import prepare
    from bmlr.train import train

    cache = tmp_path / "cache"
    first = prepare("avmnist", str(shared_data), str(cache), workers=2, progress=False)
    assert first["info"]["spectrograms_computed"] == 3000
    assert (first["info"]["train"], first["info"]["val"], first["info"]["test"]) == (2430, 270, 300)
    root = Path(__file__).resolve().parents[1]
    for method in ("baseline", "bmlr"):
        cfg = load_config(root / "configs" / "avmnist.yaml", {
            "data_root": str(shared_data), "cache_dir": str(cache), "method": method, "epochs": 3, "seeds": [0],
            "output_dir": str(tmp_path / "runs"), "name": method, "threads": 1})
        result = train(cfg, progress=False)
        test = result["seeds"][0]["test"]
        assert test["acc"] > 0.6, (method, test)
        assert max(test["acc_audio"], test["acc_visual"]) > 0.3, (method, test)
