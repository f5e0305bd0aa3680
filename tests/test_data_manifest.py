"""``dataset: manifest``: your own clips from manifest.csv + modalities.yaml.

Tiny generated layouts (wav written with soundfile, PNG images, .npy features) for the kinds, the
splits and every bad input; AV-MNIST from ``../shared/data`` (skipped with a reason where absent)
exported as a manifest and trained both ways; marked slow, a three-modality manifest tuned end to
end through ``tune.py``."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from media_fixtures import make_cfg, write_jpg, write_wav

from bmlr.data import DataError, build_datasets
from bmlr.data.manifest_split import group_split

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "owl")
MODALITIES = {"voice": {"kind": "audio", "sample_rate": 8000, "duration_s": 0.5, "n_fft": 128, "hop_length": 64},
              "photo": {"kind": "image", "image_size": 8},
              "emb": {"kind": "features"}}


def write_png(path: Path, label: int, rng: np.random.Generator, size: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = (rng.integers(0, 40, size=(size, size, 3)) + 60 * label).astype(np.uint8)
    Image.fromarray(img, "RGB").save(path, format="PNG")


def make_rows(root: Path, per_class: int = 6, split: bool = True, group: bool = False, dim: int = 5) -> list[dict]:
    """Files for ``per_class`` samples of each class; rows with k=0 test, k=1 val, the rest train;
    group = ``g<k>`` (so a group holds one sample of each class)."""
    rng = np.random.default_rng(0)
    rows = []
    for c, name in enumerate(CLASSES):
        for k in range(per_class):
            clip = f"{name}{k}"
            write_wav(root / "clips" / f"{clip}.wav", c, rng)
            write_png(root / "photos" / f"{clip}.png", c, rng)
            (root / "emb").mkdir(parents=True, exist_ok=True)
            np.save(root / "emb" / f"{clip}.npy", (rng.normal(size=dim) + c).astype(np.float32))
            row = {"id": clip, "label": name}
            if split:
                row["split"] = "test" if k == 0 else "val" if k == 1 else "train"
            if group:
                row["group"] = f"g{k}"
            row.update({"voice": f"clips/{clip}.wav", "photo": f"photos/{clip}.png", "emb": f"emb/{clip}.npy"})
            rows.append(row)
    return rows


def write_manifest(root: Path, rows: list[dict], modalities: dict | None = None, classes=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (root / "modalities.yaml").write_text(yaml.safe_dump(modalities or MODALITIES, sort_keys=False))
    if classes is not None:
        (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return root


def build(tmp_path: Path, root: Path, **over):
    return build_datasets(make_cfg(tmp_path, "manifest", root, **over))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest") / "data"
    return root, make_rows(root)


@pytest.fixture
def layout(tmp_path, pristine):
    """A fresh copy of the files and the rows (to change and write with :func:`write_manifest`)."""
    src, rows = pristine
    root = tmp_path / "data"
    shutil.copytree(src, root)
    return root, [dict(r) for r in rows]


# --- the kinds, the happy path -------------------------------------------------------------------

def test_three_modalities_from_the_split_column(tmp_path, layout):
    root, rows = layout
    data = build(tmp_path, write_manifest(root, rows))
    assert data.class_names == list(CLASSES) and data.num_classes == 3
    assert {m: (s.kind, s.shape) for m, s in data.modalities.items()} == {
        "voice": ("spectrogram", (1, 65, 63)), "photo": ("frames", (1, 3, 8, 8)), "emb": ("vector", (5,))}
    assert list(data.modalities) == ["voice", "photo", "emb"]  # modalities.yaml order
    assert (len(data.train), len(data.val), len(data.test)) == (12, 3, 3)
    assert data.info["split_from"] == "split column" and data.info["val_from"] == "split column"
    assert data.info["spectrograms_computed"] == 18
    assert [r.id for r in data.test.rows] == ["cat0", "dog0", "owl0"]  # file order
    inputs, label = data.test[1]
    assert label == 1
    center, scale = (np.array(data.scaling["emb"][k], dtype=np.float32) for k in ("center", "scale"))
    assert data.scaling["emb"]["kind"] == "standard"  # features standardised with the train split's statistics
    assert torch.allclose(inputs["emb"], torch.from_numpy((np.load(root / "emb" / "dog0.npy") - center) / scale))
    again = build(tmp_path, root)  # the cache is complete: nothing computed twice
    assert again.info["spectrograms_computed"] == 0


def test_classes_txt_sets_the_label_order(tmp_path, layout):
    root, rows = layout
    data = build(tmp_path, write_manifest(root, rows, classes=("owl", "cat", "dog")))
    assert data.class_names == ["owl", "cat", "dog"]
    assert data.test[0][1] == 1  # cat0


def test_val_carved_from_train_when_absent(tmp_path, layout):
    root, rows = layout
    for r in rows:
        r["split"] = "train" if r["split"] == "val" else r["split"]
    data = build(tmp_path, write_manifest(root, rows), val_fraction=0.25)
    assert data.info["val_from"] == "train"
    assert (len(data.train), len(data.val), len(data.test)) == (12, 3, 3)
    assert sorted(data.val.labels) == [0, 1, 2]


def test_frames_and_sequence_features(tmp_path, layout):
    """A folder of images (``frames``, T from the config) and [T, D] features -> ``sequence``."""
    root, rows = layout
    rng = np.random.default_rng(1)
    (root / "seq").mkdir()
    for r in rows:
        for f in range(3):
            write_jpg(root / "frames" / r["id"] / f"frame_{f:05d}.jpg", CLASSES.index(r["label"]), rng)
        np.save(root / "seq" / f"{r['id']}.npy", rng.normal(size=(4, 6)).astype(np.float32))
        r["photo"], r["emb"] = f"frames/{r['id']}", f"seq/{r['id']}.npy"
    modalities = {**MODALITIES, "photo": {"kind": "frames", "image_size": 8}}
    data = build(tmp_path, write_manifest(root, rows, modalities), frames=2)
    assert data.modalities["photo"].shape == (2, 3, 8, 8)
    assert (data.modalities["emb"].kind, data.modalities["emb"].shape) == ("sequence", (4, 6))


def test_trains_and_picks_the_encoders(tmp_path, layout):
    """vector -> mlp, spectrogram -> resnet_audio, one-frame image -> resnet_visual; one epoch."""
    from bmlr.config import from_dict
    from bmlr.engine import Trainer

    root, rows = layout
    write_manifest(root, rows)
    cfg = from_dict({"dataset": "manifest", "data_root": str(root), "cache_dir": str(tmp_path / "cache"),
                     "image_size": 8, "model_width": 4, "model_depth": 1, "batch_size": 6, "epochs": 1,
                     "lr": 1e-3, "threads": 1, "device": "cpu"})
    trainer = Trainer(cfg, seed=0)
    assert type(trainer.model.encoders["emb"]).__name__ == "MLPEncoder"
    assert type(trainer.model.encoders["photo"]).__name__ == "ResNetVisualEncoder"
    history = trainer.fit(1)
    assert len(history) == 1 and 0.0 <= history[0]["val_acc"] <= 1.0


def test_features_from_one_matrix_with_a_row_index(tmp_path, layout):
    root, rows = layout
    matrix = np.random.default_rng(2).normal(size=(len(rows), 3, 4)).astype(np.float32)
    np.save(root / "all_features.npy", matrix)
    for i, r in enumerate(rows):
        r["emb"] = str(len(rows) - 1 - i)
    modalities = {**MODALITIES, "emb": {"kind": "features", "matrix": "all_features.npy", "scale": "none"}}
    data = build(tmp_path, write_manifest(root, rows, modalities))
    assert (data.modalities["emb"].kind, data.modalities["emb"].shape) == ("sequence", (3, 4))
    row = data.test.rows[0]  # cat0, line 2: matrix row 17
    assert torch.equal(data.test[0][0]["emb"], torch.from_numpy(matrix[len(rows) - 1]))
    train_steps = matrix[[len(rows) - 1 - i for i, r in enumerate(rows) if r["split"] == "train"]].reshape(-1, 4)
    standard = {**modalities, "emb": {**modalities["emb"], "scale": "standard"}}
    scaled = build(tmp_path, write_manifest(root, rows, standard))
    np.testing.assert_allclose(scaled.scaling["emb"]["center"], train_steps.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert row.id == "cat0"
    rows[3]["emb"] = "18"
    with pytest.raises(DataError, match=r"line 5 \(id 'cat3'\), column 'emb': row index '18'"):
        build(tmp_path, write_manifest(root, rows, modalities))


# --- splits that do not leak ---------------------------------------------------------------------

def test_stratified_seeded_split_without_a_split_column(tmp_path, layout):
    root, rows = layout
    for r in rows:
        del r["split"]
    write_manifest(root, rows)
    data = build(tmp_path, root, val_fraction=0.25)
    assert data.info["split_from"] == "seeded stratified split"
    # test_fraction 0.2 of 6 per class -> 1, then 0.25 of 5 -> 1 (rounded) per class
    assert (len(data.train), len(data.val), len(data.test)) == (12, 3, 3)
    assert sorted(data.test.labels) == [0, 1, 2]
    same = build(tmp_path, root, val_fraction=0.25)
    assert [r.id for r in same.test.rows] == [r.id for r in data.test.rows]
    other = build(tmp_path, root, val_fraction=0.25, split_seed=5)
    assert [r.id for r in other.test.rows] != [r.id for r in data.test.rows]


def test_group_aware_split_keeps_each_group_on_one_side(tmp_path, layout):
    root, rows = layout
    for k, r in enumerate(rows):
        del r["split"]
        r["group"] = f"speaker{k % 6}"
    write_manifest(root, rows)
    data = build(tmp_path, root, val_fraction=0.25)
    sides = {s: {r.group for r in getattr(data, s).rows} for s in ("train", "val", "test")}
    assert not (sides["train"] & sides["val"]) and not (sides["train"] & sides["test"])
    assert not (sides["val"] & sides["test"])
    assert all(sides.values())
    assert data.info["group_aware"] is True and data.info["split_from"] == "seeded group-aware split"
    assert sum(data.info["groups"].values()) == 6


def test_group_split_holds_out_whole_groups():
    labels = np.repeat(np.arange(4), 20)
    groups = [f"g{i % 10}" for i in range(80)]
    keep, held = group_split(labels, groups, 0.2, seed=3)
    assert {groups[i] for i in keep}.isdisjoint({groups[i] for i in held})
    assert 8 <= len(held) <= 32 and len(keep) + len(held) == 80
    assert set(labels[held]) == {0, 1, 2, 3}


def test_given_split_with_groups_carves_val_by_group(tmp_path, layout):
    root, rows = layout
    for r in rows:
        k = int(r["id"][-1])
        r["split"] = "test" if k == 0 else "train"
        r["group"] = f"g{k}"
    data = build(tmp_path, write_manifest(root, rows), val_fraction=0.2)
    train_groups = {r.group for r in data.train.rows}
    assert train_groups.isdisjoint({r.group for r in data.val.rows}) and len(data.val) > 0
    assert data.info["val_from"] == "train" and data.info["group_aware"]


def test_split_file_instead_of_a_column(tmp_path, layout):
    """``split: {file: ...}`` in modalities.yaml: a speaker-held-out split without renaming files."""
    root, rows = layout
    given = {r["id"]: r.pop("split") for r in rows}
    given["cat2"] = "test"
    write_manifest(root, rows, {**MODALITIES, "split": {"file": "speaker_split.csv"}})
    (root / "speaker_split.csv").write_text("id,split\n" + "".join(f"{k},{v}\n" for k, v in given.items()))
    data = build(tmp_path, root)
    assert [r.id for r in data.test.rows] == ["cat0", "cat2", "dog0", "owl0"]
    assert data.info["split_from"] == "split column" and len(data.val) == 3
    (root / "speaker_split.csv").write_text("id,split\ncat0,test\ncow9,train\n")
    with pytest.raises(DataError, match=r"speaker_split.csv, line 3 \(id 'cow9'\), column 'id'"):
        build(tmp_path, root)
    (root / "speaker_split.csv").write_text("id,split\ncat0,holdout\n")
    with pytest.raises(DataError, match=r"speaker_split.csv, line 2 \(id 'cat0'\), column 'split': unknown"):
        build(tmp_path, root)
    (root / "speaker_split.csv").write_text("id,split\ncat0,test\n")
    with pytest.raises(DataError, match=r"17 manifest ids have no split, e.g. 'cat1'"):
        build(tmp_path, root)


# --- bad input: a DataError naming the row and the column, before any training -------------------

def _bad(case: str, root: Path, rows: list[dict]) -> tuple[dict, str]:
    """Break the layout as ``case`` says; return the modalities to write and what the message must
    say (``line N`` and the column)."""
    modalities = dict(MODALITIES)
    if case == "missing_file":
        (root / "clips" / "dog3.wav").unlink()
        return modalities, "line 11 (id 'dog3'), column 'voice': file not found"
    if case == "unknown_label":
        rows[4]["label"] = "cow"
        return modalities, "line 6 (id 'cat4'), column 'label': unknown label 'cow'"
    if case == "unknown_split":
        rows[2]["split"] = "validation"
        return modalities, "line 4 (id 'cat2'), column 'split': unknown split 'validation'"
    if case == "feature_shape":
        np.save(root / "emb" / "owl5.npy", np.zeros(4, dtype=np.float32))
        return modalities, "line 19 (id 'owl5'), column 'emb': "
    if case == "declared_shape":
        modalities["emb"] = {"kind": "features", "shape": [7]}
        return modalities, "line 2 (id 'cat0'), column 'emb': "
    if case == "column_not_in_yaml":
        del modalities["emb"]
        modalities["photo2"] = {"kind": "image"}
        return modalities, "line 1, column 'emb': not a modality"
    if case == "yaml_modality_not_in_csv":
        modalities["depth"] = {"kind": "image"}
        del modalities["voice"]
        for r in rows:
            del r["voice"]
        return modalities, "modality 'depth'"
    if case == "empty_split":
        for r in rows:
            r["split"] = "train" if r["split"] == "test" else r["split"]
        return modalities, "column 'split': no row has split 'test'"
    if case == "group_spans_splits":
        for r in rows:
            r["group"] = "speaker-" + r["id"][-1]
        rows[7]["split"] = "test"  # dog1: group speaker-1 is val elsewhere
        return modalities, "line 9 (id 'dog1'), column 'group': group 'speaker-1'"
    if case == "empty_image":
        (root / "photos" / "owl2.png").write_bytes(b"")
        return modalities, "line 16 (id 'owl2'), column 'photo'"
    raise ValueError(case)


BAD = ("missing_file", "unknown_label", "unknown_split", "feature_shape", "declared_shape", "column_not_in_yaml",
       "yaml_modality_not_in_csv", "empty_split", "group_spans_splits", "empty_image")


@pytest.mark.parametrize("case", BAD)
def test_bad_input_names_row_and_column(tmp_path, layout, case):
    root, rows = layout
    modalities, expected = _bad(case, root, rows)
    write_manifest(root, rows, modalities, classes=CLASSES if case == "unknown_label" else None)
    with pytest.raises(DataError) as err:
        build(tmp_path, root)
    assert expected in str(err.value)
    assert not (tmp_path / "cache").exists()  # raised before any preprocessing


def test_unreadable_audio_names_the_row(tmp_path, layout):
    root, rows = layout
    (root / "clips" / "cat3.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage, not audio" * 4)
    with pytest.raises(DataError, match=r"line 5 \(id 'cat3'\), column 'voice': cannot read audio"):
        build(tmp_path, write_manifest(root, rows))


def test_skip_bad_leaves_the_row_out(tmp_path, layout):
    root, rows = layout
    (root / "clips" / "dog3.wav").unlink()
    np.save(root / "emb" / "cat2.npy", np.zeros(2, dtype=np.float32))
    with pytest.warns(UserWarning, match="skipped 2"):
        data = build(tmp_path, write_manifest(root, rows), skip_bad=True)
    assert data.info["skipped"] == 2 and set(data.info["skipped_clips"]) == {"cat2", "dog3"}
    assert len(data.train) == 10


def test_bad_modalities_yaml(tmp_path, layout):
    root, rows = layout
    write_manifest(root, rows, {**MODALITIES, "emb": {"kind": "point_cloud"}})
    with pytest.raises(DataError, match=r"modalities.yaml: modality 'emb': kind 'point_cloud'"):
        build(tmp_path, root)
    write_manifest(root, rows, {**MODALITIES, "emb": {"kind": "features", "dims": 3}})
    with pytest.raises(DataError, match=r"unknown parameter\(s\) \['dims'\]"):
        build(tmp_path, root)
    write_manifest(root, rows, {**MODALITIES, "photo": {"kind": "image", "image_size": "big"}})
    with pytest.raises(DataError, match=r"modality 'photo' \(image\): image_size: 'big'; expected a positive integer"):
        build(tmp_path, root)
    write_manifest(root, rows, {**MODALITIES, "emb": {"kind": "features", "shape": 5}})
    with pytest.raises(DataError, match=r"shape: 5; expected a list of positive integers"):
        build(tmp_path, root)
    (root / "modalities.yaml").unlink()
    with pytest.raises(DataError, match="modalities file not found"):
        build(tmp_path, root)


def test_train_exits_2_before_training(tmp_path, layout):
    root, rows = layout
    rows[4]["split"] = "dev"
    write_manifest(root, rows)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"dataset": "manifest", "data_root": str(root),
                                      "cache_dir": str(tmp_path / "cache"), "epochs": 1, "seeds": [0]}))
    out = subprocess.run([sys.executable, "-m", "bmlr.train", "--config", str(config), "--no-progress",
                          "--set", f"output_dir={tmp_path / 'runs'}"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "line 6 (id 'cat4'), column 'split'" in out.stderr


# --- a built-in data set exported as a manifest trains the same ------------------------------------

def _history(tmp_path: Path, dataset: str, root: Path, cache: Path) -> list[dict]:
    from bmlr.config import from_dict
    from bmlr.engine import Trainer

    cfg = from_dict({"dataset": dataset, "data_root": str(root), "cache_dir": str(cache), "frames": 1,
                     "image_size": 28, "model_width": 4, "model_depth": 1, "batch_size": 16, "epochs": 2,
                     "lr": 1e-3, "val_fraction": 0.25, "split_seed": 1, "threads": 1, "device": "cpu",
                     "method": "bmlr"})
    history = Trainer(cfg, seed=0).fit(2)
    return [{k: v for k, v in epoch.items() if k.startswith("val_")} for epoch in history]


def _export_and_compare(tmp_path: Path, source: Path) -> None:
    from bmlr.data.manifest_export import main

    out = tmp_path / "exported"
    assert main(["--dataset", "avmnist", "--root", str(source), "--out", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--val-fraction", "0.25", "--split-seed", "1"]) == 0
    modalities = yaml.safe_load((out / "modalities.yaml").read_text())
    assert modalities["visual"] == {"kind": "image", "augment": False}
    assert (out / "classes.txt").read_text().split() == [str(d) for d in range(10)]
    builtin = _history(tmp_path, "avmnist", source, tmp_path / "cache")
    manifest = _history(tmp_path, "manifest", out, tmp_path / "cache")
    assert len(builtin) == 2 and builtin[0]["val_acc"] >= 0
    assert manifest == builtin


def test_exported_avmnist_trains_exactly_as_the_builtin(tmp_path):
    """Generated AV-MNIST layout (always runs): export, then the same validation history."""
    from test_data_avmnist import write_avmnist

    write_avmnist(tmp_path / "avmnist")
    _export_and_compare(tmp_path, tmp_path / "avmnist")


def test_shared_avmnist_exported_trains_exactly_as_the_builtin(tmp_path, shared_data):
    """AV-MNIST from ../shared/data (two speakers, takes 0-1 test and 5-8 train: 120 clips):
    built-in and exported manifest give the same per-epoch validation history, same seed."""
    source = tmp_path / "avmnist"
    recordings = source / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for wav in sorted((shared_data / "fsdd" / "recordings").iterdir()):
        digit, speaker, take = wav.stem.split("_")
        if speaker in ("george", "jackson") and int(take) in (0, 1, 5, 6, 7, 8):
            shutil.copy(wav, recordings / wav.name)
    os.symlink(shared_data / "mnist", source / "mnist")
    _export_and_compare(tmp_path, source)


def test_exported_mosi_features_read_back_identically(tmp_path):
    """Sequence features (MOSI layout, generated): one .npy per sample, the same items in order."""
    from test_data_mosi import dump, make_pickle

    from bmlr.data.manifest_export import export_manifest

    pickle_path = dump(tmp_path / "aligned_50.pkl", make_pickle())
    export_manifest("mosi", str(pickle_path), tmp_path / "exported", cache_dir=str(tmp_path / "cache"))
    builtin = build_datasets(make_cfg(tmp_path, "mosi", pickle_path))
    manifest = build(tmp_path, tmp_path / "exported")
    assert manifest.modalities == builtin.modalities and manifest.class_names == builtin.class_names
    for split in ("train", "val", "test"):
        a, b = getattr(builtin, split), getattr(manifest, split)
        assert len(a) == len(b)
        for i in range(len(a)):
            assert a[i][1] == b[i][1] and all(torch.equal(a[i][0][m], b[i][0][m]) for m in builtin.modalities)


# --- tuning a manifest ------------------------------------------------------------------------------

def test_shipped_manifest_search_space_is_valid():
    from bmlr.tuning.search_space import load_search_space

    space = load_search_space(ROOT / "search_spaces" / "manifest.yaml")
    assert {"alpha", "beta", "lr", "fusion"} <= set(space.params)
    assert {"epochs", "batch_size", "model_width", "model_depth"} <= set(space.fixed)
    assert "Figure 5" in space.text and "modalities.yaml" in space.text


def test_the_untuned_manifest_configuration_is_the_search_spaces_first_trial(tmp_path):
    """configs/manifest.yaml (what `bmlr-train` trains untuned) is the shipped space's fixed part
    with each searched key at its default: the model a study's first trial measures. The study's
    own production configuration (a trial's thread count included) differs from it in nothing
    the banner would name."""
    from bmlr.config import load_config
    from bmlr.tuning.config_drift import config_drift
    from bmlr.tuning.plan import StudySettings, plan_study
    from bmlr.tuning.search_space import load_search_space

    space = load_search_space(ROOT / "search_spaces" / "manifest.yaml")
    untuned = load_config(ROOT / "configs" / "manifest.yaml")
    assert untuned.dataset == "manifest"
    assert {k: getattr(untuned, k) for k in space.fixed} == space.fixed
    assert {k: getattr(untuned, k) for k in space.params} == space.defaults_point()
    (tmp_path / "data").mkdir()
    plan = plan_study(StudySettings(dataset="manifest", data_root=str(tmp_path / "data"), storage=str(tmp_path / "runs"),
                                    search_space=str(ROOT / "search_spaces" / "manifest.yaml"), name="m"),
                      log=lambda _m: None, lock=False)
    path, drift = config_drift(plan.production, plan.space.params, root=ROOT)
    assert path == ROOT / "configs" / "manifest.yaml" and drift == []


def test_tune_refuses_a_bad_manifest_before_any_trial(tmp_path, layout, capsys):
    import ray

    from bmlr.tuning import cli

    root, rows = layout
    rows[9]["label"] = "cow"
    write_manifest(root, rows, classes=CLASSES)
    rc = cli.main(["--dataset", "manifest", "--data-root", str(root), "--search-space",
                   str(ROOT / "search_spaces" / "manifest.yaml"), "--storage", str(tmp_path / "runs"),
                   "--set", f"cache_dir={tmp_path / 'cache'}", "-v", "0"])
    assert rc == 2 and not ray.is_initialized()
    assert "line 11 (id 'dog3'), column 'label': unknown label 'cow'" in capsys.readouterr().err


@pytest.mark.slow
def test_three_modality_manifest_tunes_end_to_end(tmp_path):
    """audio wav + PNG image + feature vector, no split column: two trials of one epoch through tune.py."""
    root = tmp_path / "data"
    rows = make_rows(root, per_class=6, split=False)  # 12 / 3 / 3: batches of 6, never one sample
    write_manifest(root, rows)
    storage = tmp_path / "runs"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MLFLOW_TRACKING_URI", None)
    tiny = ["model_width=4", "model_depth=1", "image_size=8", "batch_size=6", "val_fraction=0.25",
            f"cache_dir={tmp_path / 'cache'}"]
    out = subprocess.run([sys.executable, str(ROOT / "tune.py"), "--dataset", "manifest", "--data-root", str(root),
                          "--search-space", str(ROOT / "search_spaces" / "manifest.yaml"), "--samples", "2",
                          "--max-epochs", "1", "--storage", str(storage), "--num-cpus", "2", "--name", "mine",
                          "-v", "0", *[a for s in tiny for a in ("--set", s)]],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    study = storage / "manifest" / "mine"
    with (study / "trials.csv").open() as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 2 and all(t["status"] == "completed" for t in trials), trials
    best = yaml.safe_load((study / "best.yaml").read_text())
    assert best["dataset"] == "manifest" and best["data_root"] == str(root)


def test_video_files_give_frames_and_audio(tmp_path, layout):
    """A ``video`` modality (frames extracted once into the cache) and an ``audio`` modality
    naming the same mp4 (its track extracted to a wav)."""
    from media_fixtures import write_mp4

    root, rows = layout
    for k, r in enumerate(rows):
        write_mp4(root / "videos" / f"{r['id']}.mp4", seconds=2.2, fps=5, size=16, tone_hz=300 + 40 * k)
        r["voice"] = r["photo"] = f"videos/{r['id']}.mp4"
    modalities = {**MODALITIES, "photo": {"kind": "video", "image_size": 8}}
    data = build(tmp_path, write_manifest(root, rows, modalities), frames=2)
    assert data.modalities["photo"].shape == (2, 3, 8, 8)
    assert len(data.train.rows[0].files["photo"]) == 3  # 2.2 s at 1 fps
    assert data.train.rows[0].files["voice"][0].endswith(".wav")
    assert data.info["spectrograms_computed"] == 18
    assert build(tmp_path, root, frames=2).info["spectrograms_computed"] == 0
    (root / "videos" / "owl4.mp4").write_bytes(b"not a video at all" * 10)
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(DataError, match=r"line 18 \(id 'owl4'\), column 'voice'"):
        build(tmp_path, root, frames=2)


def test_mlp_encoder_for_feature_vectors():
    from bmlr.models import ENCODERS

    encoder = ENCODERS.get("mlp")(d_in=5, hidden=4, layers=2)
    assert encoder.out_dim == 4 and encoder(torch.randn(3, 5)).shape == (3, 4)
    with pytest.raises(ValueError, match=r"mlp expects \[B, 5\]"):
        encoder(torch.randn(3, 2, 5))


def test_without_classes_txt_a_doubtful_label_is_a_warning_naming_its_rows(tmp_path):
    import warnings

    from bmlr.data.manifest_io import read_classes, read_manifest

    rows = make_rows(tmp_path / "src", per_class=12, split=False)
    rows[5]["label"] = "dogg"  # a typo of "dog" (one edit): cat 11, dogg 1
    rows[30]["label"] = "owls"  # an owl row that became a class of one
    root = write_manifest(tmp_path / "src", rows)
    with pytest.warns(UserWarning) as caught:
        names = read_classes(root, read_manifest(root).rows)
    assert names == ["cat", "dog", "dogg", "owl", "owls"]  # still read as written: a warning, not an error
    text = str(caught[0].message)
    lines = {r["label"]: i + 2 for i, r in enumerate(rows)}  # the header is line 1
    assert f"'dogg' (line {lines['dogg']}) is one edit from 'dog'" in text
    assert f"'owls' (line {lines['owls']}) is one edit from 'owl'" in text
    assert "classes.txt" in text and "'cat'" not in text
    digits = [{**r, "label": str(i % 10)} for i, r in enumerate(make_rows(tmp_path / "d", per_class=10, split=False))]
    root = write_manifest(tmp_path / "d", digits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # classes 0 to 9 with equal counts: one edit apart, but no typos
        assert read_classes(root, read_manifest(root).rows) == [str(d) for d in range(10)]
