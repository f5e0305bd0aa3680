"""Preprocessing: PyAV frame / audio extraction from real mp4 files, `python -m bmlr.data.prepare`
(no work the second time, resumes after a kill, cache keyed by the parameters, identical to the
on-the-fly computation, parallel == serial), the CLI's errors and --skip-bad."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from media_fixtures import SECOND_COLOURS, write_clip, write_mp4, write_wav
from PIL import Image

from bmlr.data import DataError, ave, cremad
from bmlr.data.audio import SpectrogramParams, compute_spectrogram
from bmlr.data.prepare import main, prepare
from bmlr.data.video import extract_audio, extract_frames, extract_videos

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# --- video ---------------------------------------------------------------------------------------


def test_extract_frames_at_1_fps(tmp_path):
    video = write_mp4(tmp_path / "clip.mp4", seconds=3.5, fps=10)
    assert extract_frames(video, tmp_path / "frames" / "clip") == 4  # t = 0, 1, 2, 3 s
    names = sorted(os.listdir(tmp_path / "frames" / "clip"))
    assert names == [f"frame_{i:05d}.jpg" for i in range(4)]
    for name, colour in zip(names, SECOND_COLOURS):  # the frame at the start of each second
        pixels = np.asarray(Image.open(tmp_path / "frames" / "clip" / name)).reshape(-1, 3).mean(0)
        assert np.abs(pixels - colour).max() < 20, (name, pixels, colour)
    assert os.listdir(tmp_path / "frames") == ["clip"]  # no temporary folder left
    assert extract_frames(write_mp4(tmp_path / "c2.mp4", seconds=2.0, fps=4), tmp_path / "f2", fps=2) == 4


def test_extract_audio(tmp_path):
    import soundfile as sf

    video = write_mp4(tmp_path / "clip.mp4", seconds=2.0, tone_hz=500.0)
    n = extract_audio(video, tmp_path / "clip.wav", sample_rate=16000)
    y, sr = sf.read(tmp_path / "clip.wav")
    assert sr == 16000 and len(y) == n and abs(n / 16000 - 2.0) < 0.1
    peak = np.argmax(np.abs(np.fft.rfft(y[2000:18000]))) * 16000 / 16000
    assert abs(peak - 500) < 5 and sf.info(str(tmp_path / "clip.wav")).subtype == "PCM_16"


def test_bad_videos_name_the_file(tmp_path):
    silent = write_mp4(tmp_path / "silent.mp4", seconds=1.0, audio=False)
    with pytest.raises(DataError, match=f"{silent} has no audio stream"):
        extract_audio(silent, tmp_path / "a.wav")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    with pytest.raises(DataError, match=str(garbage)):
        extract_frames(garbage, tmp_path / "g")
    assert not (tmp_path / "g").exists() and not any(p.name.startswith(".g") for p in tmp_path.iterdir())
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=f"{empty} is empty"):
        extract_frames(empty, tmp_path / "e")


def test_ave_video_jobs_extract_audio_and_frames_and_resume(tmp_path):
    import types

    root = tmp_path / "AVE_Dataset"
    for vid in ("vidA", "vidB", "vidC"):
        write_mp4(root / "AVE" / f"{vid}.mp4", seconds=2.2, fps=5, size=16)
    (root / "AVE" / "broken.mp4").write_bytes(b"not a video")
    cfg = types.SimpleNamespace(data_root=str(root))
    jobs = ave.video_jobs(cfg)
    assert sorted(j.clip_id for j in jobs) == ["broken", "vidA", "vidB", "vidC"]
    with pytest.raises(DataError, match="broken.mp4"):
        extract_videos(jobs, workers=1)
    done, failed = extract_videos(jobs, workers=2, skip_bad=True)
    assert set(failed) == {"broken"} and done <= 3
    assert sorted(p.name for p in (root / "audio").iterdir()) == ["vidA.wav", "vidB.wav", "vidC.wav"]
    assert len(os.listdir(root / "frames" / "vidB")) == 3
    assert extract_videos([j for j in jobs if j.clip_id != "broken"], workers=2) == (0, {})  # nothing left


# --- prepare on a CREMA-D layout built from videos -------------------------------------------------


def write_cremad_with_videos(root: Path, per_class: int = 6) -> int:
    """6 classes x (per_class train + 1 test) clips: wavs; frame folders, except for the first clip
    of each class, which has an mp4 video instead (6 train clips per class leave 1 for the default
    10 % validation split)."""
    rng = np.random.default_rng(5)
    rows = {"train": [], "test": []}
    for i in range(per_class + 1):
        for label_index, label in enumerate(cremad.CLASS_NAMES):
            clip = f"{1001 + i}_IEO_{label}_HI"
            if i == 0:  # a video to extract the frames from
                write_wav(root / "AudioWAV" / f"{clip}.wav", label_index, rng)
                write_mp4(root / "VideoFlash" / f"{clip}.mp4", seconds=1.6, fps=5, size=16, audio=False)
            else:  # frames already extracted
                write_clip(root / "AudioWAV" / f"{clip}.wav", root / "Image-01-FPS" / clip, label_index, rng)
            rows["train" if i < per_class else "test"].append(f"{clip},{label}\n")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("".join(lines))
    return 6 * (per_class + 1)


@pytest.fixture(scope="module")
def pristine_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep") / "CREMA-D"
    return root, write_cremad_with_videos(root)


@pytest.fixture
def cremad_videos(tmp_path, pristine_videos):
    """A fresh copy per test (prepare writes the frame folders into the data root)."""
    import shutil

    root = tmp_path / "CREMA-D"
    shutil.copytree(pristine_videos[0], root)
    return root, pristine_videos[1]


def npy_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("spectrograms/*/*/*.npy"))


def test_prepare_twice_does_no_work_and_matches_on_the_fly(tmp_path, cremad_videos, capsys):
    root, n = cremad_videos
    cache = tmp_path / "cache"
    assert main(["--dataset", "cremad", "--root", str(root), "--cache-dir", str(cache), "--workers", "2",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "videos: 6 found, 6 extracted now" in out and f"spectrograms: {n} computed now" in out
    assert "splits: train 30 / val 6 / test 6" in out
    assert {p.stem for p in (root / "VideoFlash").iterdir()} <= set(os.listdir(root / "Image-01-FPS"))
    assert len(os.listdir(root / "Image-01-FPS" / "1001_IEO_NEU_HI")) == 2  # 1.6 s at 1 fps
    files = npy_files(cache)
    assert len(files) == n
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = prepare("cremad", str(root), str(cache), workers=2, progress=False)
    assert again["videos_extracted"] == 0 and again["info"]["spectrograms_computed"] == 0
    assert {f: f.stat().st_mtime_ns for f in npy_files(cache)} == stamps  # nothing rewritten
    # the cached arrays are exactly what the on-the-fly computation gives (parallel == serial)
    for f in files:
        wav = root / "AudioWAV" / f"{f.stem}.wav"
        assert np.array_equal(np.load(f), compute_spectrogram(wav, cremad.SPECTROGRAM_PARAMS))


def test_changed_parameters_get_a_new_cache(tmp_path, cremad_videos, monkeypatch):
    root, n = cremad_videos
    cache = tmp_path / "cache"
    prepare("cremad", str(root), str(cache), workers=1, progress=False)
    monkeypatch.setattr(cremad, "SPECTROGRAM_PARAMS", SpectrogramParams(22050, 3.0, 512, 512))
    summary = prepare("cremad", str(root), str(cache), workers=1, progress=False)
    assert summary["info"]["spectrograms_computed"] == n
    folders = sorted(p.parent for p in npy_files(cache))
    assert len(set(folders)) == 2 and np.load(npy_files(cache)[-1]).shape in {(257, 188), (257, 130)}


def test_killed_prepare_resumes(tmp_path, cremad_videos):
    root, n = cremad_videos
    cache = tmp_path / "cache"
    code = (
        "import sys, time\n"
        "import bmlr.data.cache as c\n"
        "slow = c.SpectrogramStore.compute\n"
        "c.SpectrogramStore.compute = lambda self, r: (time.sleep(0.4), slow(self, r))[1]\n"
        "from bmlr.data.prepare import main\n"
        f"sys.exit(main(['--dataset', 'cremad', '--root', {str(root)!r}, '--cache-dir', {str(cache)!r},"
        " '--workers', '1', '--no-progress']))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(npy_files(cache)) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no cleanup handlers run
    finally:
        proc.wait()
    done_before = len(npy_files(cache))
    assert 3 <= done_before < n, done_before
    for f in npy_files(cache):  # every visible array is complete
        assert np.load(f).shape == (257, 188)
    summary = prepare("cremad", str(root), str(cache), workers=1, progress=False)
    assert summary["info"]["spectrograms_computed"] == n - done_before
    assert len(npy_files(cache)) == n


def test_cli_errors_exit_2_and_skip_bad(tmp_path, cremad_videos, capsys):
    assert main(["--dataset", "cremad", "--root", str(tmp_path / "none"), "--no-progress"]) == 2
    assert f"error: CREMA-D data root not found: {tmp_path / 'none'}" in capsys.readouterr().err
    assert main(["--dataset", "imagenet", "--root", str(tmp_path)]) == 2
    assert "key 'dataset' has value 'imagenet'" in capsys.readouterr().err
    root = cremad_videos[0]
    (root / "VideoFlash" / "1001_IEO_SAD_HI.mp4").write_bytes(b"broken video")
    (root / "AudioWAV" / "1002_IEO_HAP_HI.wav").write_bytes(b"")
    args = ["--dataset", "cremad", "--root", str(root), "--cache-dir", str(tmp_path / "c"), "--no-progress"]
    assert main(args) == 2
    assert "1001_IEO_SAD_HI.mp4" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="skipped 2 bad clips"):
        assert main(args + ["--skip-bad", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "1 unreadable (skipped): 1001_IEO_SAD_HI" in out
    assert "skipped 2 bad clips, first: " in out and "1002_IEO_HAP_HI" in out and "1001_IEO_SAD_HI" in out


def test_prepare_mosi_and_synthetic_need_no_videos(tmp_path):
    import pickle

    rng = np.random.default_rng(0)
    split = lambda k: {"text": rng.standard_normal((k, 4, 3)), "audio": rng.standard_normal((k, 4, 2)),  # noqa: E731
                       "vision": rng.standard_normal((k, 4, 2)), "regression_labels": np.linspace(-3, 3, k)}
    with open(tmp_path / "aligned_50.pkl", "wb") as f:
        pickle.dump({"train": split(14), "valid": split(7), "test": split(7)}, f)
    summary = prepare("mosi", str(tmp_path), None, progress=False)
    assert (summary["info"]["train"], summary["info"]["val"], summary["info"]["test"]) == (14, 7, 7)
    assert "videos" not in summary


def test_workers_are_counted_as_num_workers_counts_them(tmp_path, capsys):
    """-1: one per available core (the default), 0: none (this process does the work), N: N."""
    from bmlr.data.prepare import available_cores
    from bmlr.data.synthetic import generate

    root = generate(tmp_path / "data", seed=0, n_train_per_class=2, n_test_per_class=1, n_val_per_class=1,
                    image_size=32, n_frames=2)
    for workers, expected in ((-1, available_cores()), (0, 1), (2, 2)):
        summary = prepare("synthetic", str(root), str(tmp_path / f"cache{workers}"), workers=workers, progress=False)
        assert summary["workers"] == expected
    with pytest.raises(SystemExit):
        main(["--dataset", "synthetic", "--workers", "-2"])
    assert "--workers must be -1" in capsys.readouterr().err
