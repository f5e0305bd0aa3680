"""The data package on a small synthetic data set: real files, determinism, split files,
stratified split, frame sampling, spectrogram cache and the dataset items."""
from __future__ import annotations

import functools
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from bmlr.data import DATASETS, DataError, DataSplits, build_datasets, synthetic
from bmlr.data.synthetic_signals import tone
from bmlr.data.audio import SpectrogramParams, compute_spectrogram, expected_shape, load_waveform
from bmlr.data.base import AudioVisualDataset, list_frames, read_split_csv, stratified_split
from bmlr.data.cache import SpectrogramStore, atomic_save_npy, cache_root, params_key
from bmlr.data.frames import IMAGENET_MEAN, IMAGENET_STD, load_frames, sample_frame_indices
from bmlr.data.types import ClipRecord

# version v2 (no val.csv: validation is carved out of train) for the data package's tests
SMALL = dict(version="v2", n_train_per_class=4, n_test_per_class=2, image_size=16, n_frames=3)
PARAMS = synthetic.SPECTROGRAM_PARAMS  # v2's


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "data", seed=0, **SMALL)


def make_cfg(tmp_path: Path, data_root=None, **over) -> types.SimpleNamespace:
    cfg = dict(dataset="synthetic", data_root=None if data_root is None else str(data_root),
               cache_dir=str(tmp_path / "cache"), frames=3, image_size=16, val_fraction=0.25, split_seed=0,
               skip_bad=False, num_workers=0)
    cfg.update(over)
    return types.SimpleNamespace(**cfg)


def records_of(root: Path, split: str = "train") -> list[ClipRecord]:
    rows = read_split_csv(root / f"{split}.csv", synthetic.CLASS_NAMES)
    return [ClipRecord(c, y, str(root / "AudioWAV" / f"{c}.wav"), list_frames(root / "Frames" / c)) for c, y in rows]


# --- generated files --------------------------------------------------------------------------


def test_generated_files_are_real(small_root):
    import librosa

    train = read_split_csv(small_root / "train.csv", synthetic.CLASS_NAMES)
    test = read_split_csv(small_root / "test.csv", synthetic.CLASS_NAMES)
    assert len(train) == 6 * SMALL["n_train_per_class"] and len(test) == 6 * SMALL["n_test_per_class"]
    assert sorted(np.bincount([y for _, y in train])) == [SMALL["n_train_per_class"]] * 6  # balanced
    assert not {c for c, _ in train} & {c for c, _ in test}
    assert (small_root / "classes.txt").read_text().split() == synthetic.CLASS_NAMES
    assert "66.7%" in (small_root / "README.txt").read_text()  # v2's audio ceiling
    assert (small_root / ".complete").is_file()
    clip = train[0][0]
    y, sr = librosa.load(small_root / "AudioWAV" / f"{clip}.wav", sr=None)
    assert sr == 8000 and 0.6 * sr <= len(y) <= 1.0 * sr and np.abs(y).max() > 0.05
    assert sf.info(str(small_root / "AudioWAV" / f"{clip}.wav")).subtype == "PCM_16"
    frames = sorted((small_root / "Frames" / clip).iterdir())
    assert [f.name for f in frames] == ["frame_000.jpg", "frame_001.jpg", "frame_002.jpg"]
    with Image.open(frames[0]) as img:
        assert img.format == "JPEG" and img.size == (16, 16)


def _digest(root: Path, suffixes: tuple[str, ...]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in suffixes:
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("version", sorted(synthetic.VERSIONS))
def test_every_version_is_deterministic(tmp_path, version):
    small = dict(SMALL, version=version, n_train_per_class=2, n_val_per_class=1, n_test_per_class=1, n_frames=2)
    one = synthetic.generate(tmp_path / "one", seed=0, **small)
    two = synthetic.generate(tmp_path / "two", seed=0, **small)
    other = synthetic.generate(tmp_path / "other", seed=1, **small)
    for suffixes in ((".wav", ".csv", ".txt"), (".jpg",)):  # jpg: the same for one Pillow version
        assert _digest(one, suffixes) == _digest(two, suffixes)
    assert _digest(one, (".wav",)) != _digest(other, (".wav",))
    assert (one / ".complete").read_text() == f"{version} seed 0\n"


def test_version_v2_still_writes_the_files_it_always_wrote(tmp_path):
    """Recorded from the generator before versions existed (v2 was then the only one): the grids
    in bench/data were trained on these bytes."""
    root = synthetic.generate(tmp_path / "v2", seed=0, version="v2", n_train_per_class=3, n_test_per_class=2,
                              image_size=16, n_frames=2)
    assert _digest(root, (".wav", ".csv")) == "fceccc051ace6cbb0a43e453a341bb688cbf42c03283cc93824f47eef596f9fb"


def test_v3_ships_a_validation_split_and_every_class_has_its_own_tone(tmp_path):
    v3 = synthetic.VERSIONS["v3"]
    assert len(set(v3.pitches)) == 6 and synthetic.audio_ceiling("v3") == pytest.approx(1 - v3.audio_swap)
    assert synthetic.audio_ceiling("v2") == pytest.approx(4 / 6)
    assert 6 * v3.n_val_per_class >= 711  # one standard error <= 1.5 points at 80 %
    root = synthetic.generate(tmp_path / "v3", seed=0, version="v3", n_train_per_class=3, n_val_per_class=2,
                              n_test_per_class=1, image_size=16, n_frames=2)
    data = build_datasets(make_cfg(tmp_path, data_root=root, image_size=16))
    assert (len(data.train), len(data.val), len(data.test)) == (18, 12, 6)
    assert data.info["val_from"] == "split file"
    assert data.modalities["audio"].shape == (1, 129, 63)  # v3's hop of 128 samples
    with pytest.raises(DataError, match="unknown synthetic data version 'v9'"):
        build_datasets(make_cfg(tmp_path, data_version="v9"))


def test_v3_swaps_the_tone_of_its_share_of_clips():
    rng = np.random.default_rng(0)
    classes = [synthetic._tone_class(rng, 2, 0.15) for _ in range(4000)]
    swapped = [c for c in classes if c != 2]
    assert abs(len(swapped) / 4000 - 0.15) < 0.02
    assert sorted(set(swapped)) == [0, 1, 3, 4, 5]  # uniformly among the other classes


def test_ensure_synthetic_is_atomic_and_generates_once(tmp_path, monkeypatch):
    real = synthetic.generate
    calls = []

    def broken(root, seed=0, **kw):
        real(root, seed=seed, n_train_per_class=1, n_test_per_class=1, n_val_per_class=1, image_size=8)
        raise KeyboardInterrupt  # killed half way

    monkeypatch.setattr(synthetic, "generate", broken)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_synthetic(tmp_path, seed=3)
    assert list((tmp_path / "synthetic").iterdir()) == []  # no half data set, no temp folder

    def small(root, seed=0, **kw):
        calls.append(seed)
        return real(root, seed=seed, **SMALL)

    monkeypatch.setattr(synthetic, "generate", small)
    root = synthetic.ensure_synthetic(tmp_path, seed=3)
    assert root == tmp_path / "synthetic" / f"{synthetic.LATEST}-seed3" and (root / ".complete").is_file()
    assert synthetic.ensure_synthetic(tmp_path, seed=3) == root and calls == [3]


# --- split files and splits --------------------------------------------------------------------


def test_read_split_csv_tolerates_bom_and_blank_lines(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("\ufeffclip_a,b_checker\n\nclip_b, a_vertical \r\n\n".encode("utf-8"))
    assert read_split_csv(path, synthetic.CLASS_NAMES) == [("clip_a", 2), ("clip_b", 1)]


def test_read_split_csv_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("clip_a,b_checker\n\nclip_b,ANGRY\n")
    with pytest.raises(DataError) as e:
        read_split_csv(path, synthetic.CLASS_NAMES)
    msg = str(e.value)
    assert str(path) in msg and "line 3" in msg and "ANGRY" in msg and "a_horizontal" in msg
    path.write_text("clip_a\n")
    with pytest.raises(DataError, match="line 1"):
        read_split_csv(path, synthetic.CLASS_NAMES)
    with pytest.raises(DataError, match="missing.csv"):
        read_split_csv(tmp_path / "missing.csv", synthetic.CLASS_NAMES)


def test_stratified_split():
    labels = np.repeat(np.arange(6), [20, 20, 20, 20, 10, 1])
    train, val = stratified_split(labels, 0.1, seed=0)
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(len(labels)))
    assert np.bincount(labels[val], minlength=6).tolist() == [2, 2, 2, 2, 1, 0]
    assert (np.bincount(labels[train], minlength=6) >= 1).all()  # every class keeps a train sample
    again_train, again_val = stratified_split(labels, 0.1, seed=0)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, stratified_split(labels, 0.1, seed=1)[1])
    assert len(stratified_split(labels, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError):
        stratified_split(labels, 1.0, seed=0)


# --- frames ----------------------------------------------------------------------------------


def test_sample_frame_indices():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = sample_frame_indices(10, 3, train=True, rng=g)
        assert 0 <= idx[0] < 3 and 3 <= idx[1] < 6 and 6 <= idx[2] < 10
    seen = {tuple(sample_frame_indices(10, 3, True, g)) for _ in range(200)}
    assert len(seen) > 10
    assert sample_frame_indices(10, 3, train=False) == [1, 5, 8]
    assert sample_frame_indices(3, 3, train=False) == [0, 1, 2] == sample_frame_indices(3, 3, True, g)
    assert sample_frame_indices(2, 3, train=False) == [0, 1, 1] == sample_frame_indices(2, 3, True, g)
    assert sample_frame_indices(1, 3, train=True, rng=g) == [0, 0, 0]
    with pytest.raises(ValueError):
        sample_frame_indices(0, 3, train=False)


def test_load_frames_shapes_and_normalisation(tmp_path):
    paths = []
    for i, value in enumerate((0, 128, 255)):
        p = tmp_path / f"frame_{i:03d}.png"
        Image.new("RGB", (20, 12), (value, value, value)).save(p)
        paths.append(str(p))
    out = load_frames(paths, 3, 8, train=False)
    assert out.shape == (3, 3, 8, 8) and out.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[0, :, 0, 0], (0 - mean) / std, atol=1e-5)
    assert torch.allclose(out[2, :, 3, 3], (1 - mean) / std, atol=1e-5)
    assert torch.equal(out, load_frames(paths, 3, 8, train=False))  # eval is deterministic
    # train: one crop and one flip for all frames of a clip
    gradient = np.tile(np.arange(0, 240, 12, dtype=np.uint8), (12, 1))
    img = Image.fromarray(np.stack([gradient] * 3, -1))
    same = []
    for i in range(2):
        p = tmp_path / f"same_{i}.png"
        img.save(p)
        same.append(str(p))
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        out = load_frames(same, 2, 8, train=True, rng=g)
        assert out.shape == (2, 3, 8, 8) and torch.equal(out[0], out[1])


def test_corrupt_and_empty_jpg_raise_data_error(tmp_path):
    bad = tmp_path / "frame_000.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    empty = tmp_path / "frame_001.jpg"
    empty.write_bytes(b"")
    for path in (bad, empty):
        with pytest.raises(DataError, match=str(path)):
            load_frames([str(path)], 1, 8, train=False)


# --- audio and the spectrogram cache --------------------------------------------------------------


def test_spectrogram_shape_and_tiling(small_root):
    wav = small_root / "AudioWAV" / "tr00000.wav"
    spec = compute_spectrogram(wav, PARAMS)
    assert spec.shape == expected_shape(PARAMS) == (129, 126) and spec.dtype == np.float32
    assert np.isfinite(spec).all()
    raw, _ = sf.read(wav, dtype="float32")
    y = load_waveform(wav, PARAMS)
    assert len(raw) < len(y) == 8000
    assert np.allclose(y, np.tile(raw, 2)[:8000], atol=1e-6)  # tiled, not padded
    short = SpectrogramParams(8000, 0.5, 128, 32)
    assert compute_spectrogram(wav, short).shape == expected_shape(short) == (65, 126)


def test_empty_wav_raises_data_error(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    no_samples = tmp_path / "no_samples.wav"
    sf.write(no_samples, np.zeros(0, dtype=np.float32), 8000, subtype="PCM_16")
    for path in (empty, no_samples, tmp_path / "missing.wav"):
        with pytest.raises(DataError, match=path.name):
            compute_spectrogram(path, PARAMS)


def test_cache_root_and_params_key(tmp_path, monkeypatch):
    monkeypatch.setenv("BMLR_CACHE", str(tmp_path / "env"))
    assert cache_root(types.SimpleNamespace(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    assert cache_root(types.SimpleNamespace(cache_dir=None)) == tmp_path / "env"
    monkeypatch.delenv("BMLR_CACHE")
    assert cache_root(types.SimpleNamespace(cache_dir=None)) == Path.home() / ".cache" / "bmlr"
    key = params_key(PARAMS)
    assert key == params_key(SpectrogramParams(8000, 1.0, 256, 64)) and len(key) == 12
    assert key != params_key(SpectrogramParams(8000, 1.0, 256, 32))
    assert key != params_key(SpectrogramParams(8000, 1.0, 256, 64, tile=False))


def test_atomic_save_leaves_no_temp_files(tmp_path):
    atomic_save_npy(tmp_path / "a.npy", np.arange(3, dtype=np.float32))
    assert os.listdir(tmp_path) == ["a.npy"]
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.arange(3))


def test_spectrogram_store_caches_resumes_and_never_recomputes(tmp_path, small_root, monkeypatch):
    records = records_of(small_root)
    store = SpectrogramStore(tmp_path, PARAMS, dataset="syn-test")
    assert store.ensure(records, workers=2) == len(records)
    assert store.directory == tmp_path / "spectrograms" / "syn-test" / params_key(PARAMS)
    meta = json.loads((store.directory / "params.json").read_text())
    assert meta["params"]["n_fft"] == 256 and meta["key"] == store.key
    for r in records[:3]:
        cached = store.load(r.clip_id)
        assert isinstance(cached, np.memmap)
        assert np.array_equal(cached, compute_spectrogram(r.audio_path, PARAMS))
    assert store.ensure(records) == 0  # a second run does no work
    # an interrupted run: two arrays missing, one leftover temp file
    for r in records[:2]:
        store.path(r.clip_id).unlink()
    (store.directory / f".{records[0].clip_id}.npy.tmp-999-dead").write_bytes(b"\x93NUMPY partial")
    assert store.ensure(records) == 2
    assert np.array_equal(store.load(records[0].clip_id), compute_spectrogram(records[0].audio_path, PARAMS))
    # loading never computes
    monkeypatch.setattr(SpectrogramStore, "compute", lambda *a: pytest.fail("recomputed"))
    store.load(records[1].clip_id)
    store.path(records[1].clip_id).unlink()
    with pytest.raises(DataError, match=records[1].clip_id):
        store.load(records[1].clip_id)


# --- the registered builder and dataset items ----------------------------------------------------


def test_build_synthetic_from_data_root(tmp_path, small_root):
    assert "synthetic" in DATASETS
    data = build_datasets(make_cfg(tmp_path, data_root=small_root))
    assert isinstance(data, DataSplits) and data.num_classes == 6 and data.class_names == synthetic.CLASS_NAMES
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 12)
    assert data.info["train"] == 18 and data.info["val"] == 6 and data.info["test"] == 12
    assert data.modalities["audio"].kind == "spectrogram" and data.modalities["audio"].shape == (1, 129, 126)
    assert data.modalities["visual"].kind == "frames" and data.modalities["visual"].shape == (3, 3, 16, 16)
    assert sorted(np.bincount(data.val.labels)) == [1] * 6  # stratified
    assert not {r.clip_id for r in data.train.records} & {r.clip_id for r in data.val.records}
    for split in (data.train, data.val, data.test):
        inputs, label = split[0]
        assert set(inputs) == {"audio", "visual"} and isinstance(label, int) and 0 <= label < 6
        assert inputs["audio"].shape == (1, 129, 126) and inputs["audio"].dtype == torch.float32
        assert inputs["visual"].shape == (3, 3, 16, 16) and inputs["visual"].dtype == torch.float32
    a, b = data.test[1][0], data.test[1][0]
    assert torch.equal(a["visual"], b["visual"]) and torch.equal(a["audio"], b["audio"])
    batch, labels = next(iter(torch.utils.data.DataLoader(data.train, batch_size=4)))
    assert batch["audio"].shape == (4, 1, 129, 126) and batch["visual"].shape == (4, 3, 3, 16, 16)
    assert labels.dtype == torch.int64
    again = build_datasets(make_cfg(tmp_path, data_root=small_root))  # cached: nothing computed
    assert again.info["spectrograms_computed"] == 0
    assert [r.clip_id for r in again.val.records] == [r.clip_id for r in data.val.records]


def test_build_synthetic_generates_into_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "generate", functools.partial(synthetic.generate, **SMALL))
    data = build_datasets(make_cfg(tmp_path, data_version="v2"))
    root = tmp_path / "cache" / "synthetic" / "v2-seed0"
    assert (root / ".complete").is_file() and data.info["root"] == str(root)
    assert data.info["spectrograms_computed"] == 36
    assert (tmp_path / "cache" / "spectrograms" / "synthetic-v2-seed0" / params_key(PARAMS)).is_dir()


def test_bad_clip_files_raise_or_are_skipped(tmp_path, small_root):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(small_root, root)
    clip = read_split_csv(root / "train.csv", synthetic.CLASS_NAMES)[0][0]
    (root / "AudioWAV" / f"{clip}.wav").write_bytes(b"")
    with pytest.raises(DataError, match=f"{clip}.wav"):
        build_datasets(make_cfg(tmp_path, data_root=root))
    with pytest.warns(UserWarning, match="skipped 1 bad clips"):
        data = build_datasets(make_cfg(tmp_path, data_root=root, skip_bad=True))
    assert data.info["skipped"] == 1 and len(data.train) + len(data.val) == 23
    # a corrupt jpg raises when the item is read, naming the file
    record = data.test.records[0]
    Path(record.frame_paths[1]).write_bytes(b"garbage")
    with pytest.raises(DataError, match="frame_001.jpg"):
        data.test[0]
    with pytest.raises(KeyError, match="synthetic"):
        build_datasets(make_cfg(tmp_path, dataset="no_such_dataset"))


def test_dataset_rejects_bad_arguments(small_root, tmp_path):
    store = SpectrogramStore(tmp_path, PARAMS, dataset="x")
    with pytest.raises(ValueError):
        AudioVisualDataset(records_of(small_root), store, frames=0, image_size=16, train=False)
