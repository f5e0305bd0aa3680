"""Embedded synthetic audio-visual data set (the default; generated, never downloaded).

Built to show modality imbalance the way CREMA-D does: audio is clean and learned in a few
epochs but cannot tell some classes apart; the visual frames are noisy and learned slowly, yet
they resolve exactly the classes the audio confuses. A model reaches the fused ceiling only
when it learns both modalities, and joint training lets the fast audio branch starve the
visual one.

Files (the CREMA-D layout the audio-visual loaders read), under
``<cache_root>/synthetic/v1-seed<seed>/`` unless ``cfg.data_root`` points elsewhere::

    AudioWAV/<clip>.wav              8 kHz mono, 16-bit PCM, 0.6-1.0 s (tiled to 1 s on load)
    Frames/<clip>/frame_000.jpg ...  3 frames, 32 x 32 RGB, JPEG quality 90
    train.csv, test.csv              rows "clip,LABEL", no header (600 / 240 clips, balanced)
    classes.txt, README.txt          class names; this design and the ceilings
    .complete                        written last; the folder is renamed into place after it

Classes (the letter is the audio group)::

    0 a_horizontal  1 a_vertical   audio group 0: harmonic tone, f0 260 Hz
    2 b_checker     3 b_diamond    audio group 1: f0 390 Hz
    4 c_rings                      audio group 2: f0 585 Hz
    5 d_spots                      audio group 3: f0 880 Hz

* **Audio**: 4 harmonics (weights ~1/k), f0 jitter +-3 %, slight vibrato, random amplitude and
  phases, attack/release envelope, light white noise. Classes of one group are drawn from the
  *same* distribution, so audio alone cannot separate 0 from 1 or 2 from 3.
* **Visual**: a class texture (horizontal / vertical stripes, axis / 45-degree checkerboard,
  concentric rings, round spots), all flip-invariant, at a random period (4.5-7 px), rotation
  jitter (sd 6 degrees), phase, colour and background, drifting and jittering across the frames;
  faint (amplitude U(0.02, 0.12) of the [0, 1] range) under heavy Gaussian pixel noise (sd 0.15,
  independent per frame and channel).

Attainable accuracy (test split, 240 clips; version v2 defaults, seed 0):

* **Audio alone: 66.7 %** (analytic Bayes ceiling). Four audio distributions for six balanced
  classes: groups c and d are always right, each pair {0,1}, {2,3} is right half of the time:
  (2 + 4 * 1/2) / 6 = 4/6. A tiny ResNet-18 (base width 8, blocks (1,1,1,1); Adam lr 1e-3,
  batch 64) reaches 62-67 % within a few epochs and stays there.
* **Visual alone: at least 86.7 %.** Logistic regression on the log FFT magnitudes of the
  frames (shift invariant; averaged over the 3 frames, scikit-learn, C = 0.001;
  `python bench/synthetic_ceiling.py`) reaches 86.7 %
  on the 6 classes and tells the two classes of an audio pair apart 96.9 % of the time. A tiny
  ResNet learns it slowly: the visual branch of ``only_tpo`` (trained on its own loss only) is
  at 57 % (val) after 40 epochs and 68 % (test) after 80.
* **Fused: at least 97.9 %** = (2 + 4 * 0.969) / 6, audio resolving the group and vision the
  class within a pair.
* **Joint training (the imbalance):** ``baseline`` (30 epochs, 3 seeds) reaches 85.1 % fused,
  audio 66.1 %, visual 33.3 % (A/V ratio 2.02): the audio branch fits the training set first
  and the visual branch is starved, so the fused accuracy stays ~13 points below its ceiling.
  (Version v1 used amplitude U(0.04, 0.30): there joint training still learned vision and
  reached 96.9 % fused, so the imbalance did not cost accuracy; hence v2.)

Measured on CPU with ``build_audio_visual_splits`` (val 10 % carved from train) and plain
cross-entropy; the measurement script is not part of the package.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bmlr.data.audio import SpectrogramParams
from bmlr.data.base import build_audio_visual_splits
from bmlr.data.cache import cache_root
from bmlr.data.registry import DATASETS
from bmlr.data.types import DataError, DataSplits
from bmlr.fileio import TMP_MARK, tmp_path_for

__all__ = [
    "CLASS_NAMES",
    "AUDIO_GROUP",
    "SPECTROGRAM_PARAMS",
    "VERSION",
    "generate",
    "ensure_synthetic",
    "build_synthetic",
    "audio_ceiling",
]

VERSION = "v2"  # v2: fainter visual patterns (contrast 0.02-0.12), so joint training starves vision
CLASS_NAMES = ["a_horizontal", "a_vertical", "b_checker", "b_diamond", "c_rings", "d_spots"]
#: audio distribution of each class: classes 0,1 share group 0 and 2,3 share group 1
AUDIO_GROUP = (0, 0, 1, 1, 2, 3)
#: fundamental frequency (Hz) of each audio group; 4 harmonics stay below Nyquist at 8 kHz
GROUP_F0 = (260.0, 390.0, 585.0, 880.0)
SAMPLE_RATE = 8000
SPECTROGRAM_PARAMS = SpectrogramParams(sample_rate=SAMPLE_RATE, duration_s=1.0, n_fft=256, hop_length=64)
JPEG_QUALITY = 90
DEFAULTS = dict(n_train_per_class=100, n_test_per_class=40, image_size=32, n_frames=3,
                visual_noise=0.15, contrast=(0.02, 0.12))


def audio_ceiling(audio_group=AUDIO_GROUP) -> float:
    """Bayes accuracy of audio alone on balanced classes: classes sharing one audio distribution
    can only be told apart by chance, so each group of k classes contributes 1 correct in k."""
    groups = set(audio_group)
    return len(groups) / len(audio_group)


# --------------------------------------------------------------------------------------------
# audio


def _make_audio(rng: np.random.Generator, group: int) -> np.ndarray:
    """A harmonic tone at the group's pitch: jitter, amplitude, phases, envelope, light noise."""
    sr = SAMPLE_RATE
    f0 = GROUP_F0[group] * (1.0 + rng.uniform(-0.03, 0.03))
    n = int(sr * rng.uniform(0.6, 1.0))  # shorter than the 1 s window: the loader tiles it
    t = np.arange(n) / sr
    weights = (1.0 / np.arange(1, 5)) * rng.uniform(0.6, 1.0, size=4)
    phases = rng.uniform(0, 2 * np.pi, size=4)
    vibrato = 1.0 + 0.004 * np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 2 * np.pi))
    phase_t = 2 * np.pi * np.cumsum(f0 * vibrato) / sr
    x = sum(w * np.sin(k * phase_t + p) for k, (w, p) in enumerate(zip(weights, phases), start=1))
    x = x / weights.sum()
    attack, release = int(0.02 * sr), int(0.05 * sr)
    env = np.ones(n)
    env[:attack] = np.linspace(0, 1, attack, endpoint=False)
    env[n - release:] = np.linspace(1, 0, release)
    x = rng.uniform(0.25, 0.6) * env * x + rng.normal(0.0, rng.uniform(0.003, 0.01), size=n)
    return np.clip(x, -1.0, 1.0)


# --------------------------------------------------------------------------------------------
# visual


def _pattern(label: int, xs: np.ndarray, ys: np.ndarray, period: float, theta: float, phases: np.ndarray,
             centres: np.ndarray) -> np.ndarray:
    """Class pattern on pixel coordinates, unit RMS / sqrt(2) (the power of a cosine)."""
    c, s = np.cos(theta), np.sin(theta)
    u = c * xs + s * ys  # rotated coordinates (small rotation jitter)
    v = -s * xs + c * ys
    k = 2 * np.pi / period
    if label == 0:  # horizontal stripes
        p = np.cos(k * v + phases[0])
    elif label == 1:  # vertical stripes
        p = np.cos(k * u + phases[0])
    elif label == 2:  # axis-aligned checkerboard
        p = np.cos(k * u + phases[0]) * np.cos(k * v + phases[1])
    elif label == 3:  # checkerboard rotated by 45 degrees (diamonds)
        d1, d2 = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
        p = np.cos(k * d1 + phases[0]) * np.cos(k * d2 + phases[1])
    elif label == 4:  # concentric rings around a random centre
        r = np.hypot(xs - centres[0, 0], ys - centres[0, 1])
        p = np.cos(k * r + phases[0])
    else:  # a few round spots
        p = np.zeros_like(xs)
        sigma = period / 3.0
        for cx, cy in centres:
            p += np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    p = p - p.mean()
    rms = np.sqrt(np.mean(p**2))
    return p / (rms * np.sqrt(2)) if rms > 0 else p


def _make_frames(rng: np.random.Generator, label: int, size: int, n_frames: int, noise: float,
                 contrast: tuple[float, float]) -> list[np.ndarray]:
    """``n_frames`` uint8 RGB images: the class pattern, faint and jittered, under heavy noise."""
    scale = size / 32.0
    period = rng.uniform(4.5, 7.0) * scale
    theta = np.deg2rad(rng.normal(0.0, 6.0))
    phases = rng.uniform(0, 2 * np.pi, size=2)
    centres = rng.uniform(0.15 * size, 0.85 * size, size=(5, 2))
    amplitude = rng.uniform(*contrast)
    background = rng.uniform(0.35, 0.65, size=3)
    colour = rng.uniform(0.4, 1.0, size=3) * rng.choice([-1.0, 1.0])
    drift = rng.normal(0.0, 0.6 * scale, size=2)  # slow motion across frames
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    frames = []
    for f in range(n_frames):
        offset = drift * f + rng.normal(0.0, 0.5 * scale, size=2)  # position jitter per frame
        p = _pattern(label, xs - offset[0], ys - offset[1], period, theta, phases, centres)
        img = background + amplitude * p[..., None] * colour
        img = img + rng.normal(0.0, noise, size=img.shape)
        frames.append(np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8))
    return frames


# --------------------------------------------------------------------------------------------
# generation


def _readme(seed: int, settings: dict) -> str:
    return README_TEMPLATE.format(seed=seed, version=VERSION, classes="\n".join(
        f"  {i}  {name:<13} audio group {AUDIO_GROUP[i]} (f0 {GROUP_F0[AUDIO_GROUP[i]]:.0f} Hz)"
        for i, name in enumerate(CLASS_NAMES)), **settings, audio_ceiling=100 * audio_ceiling())


def generate(root: str | os.PathLike, seed: int = 0, n_train_per_class: int = DEFAULTS["n_train_per_class"],
             n_test_per_class: int = DEFAULTS["n_test_per_class"], image_size: int = DEFAULTS["image_size"],
             n_frames: int = DEFAULTS["n_frames"], visual_noise: float = DEFAULTS["visual_noise"],
             contrast: tuple[float, float] = DEFAULTS["contrast"]) -> Path:
    """Write the synthetic data set into ``root`` (created; files overwritten) and return it.

    Deterministic from the arguments: the same seed gives byte-identical wav files and csv
    files, and the same jpg files for one Pillow version (fixed quality, no metadata).
    """
    import soundfile as sf
    from PIL import Image

    if n_train_per_class < 1 or n_test_per_class < 1 or n_frames < 1 or image_size < 8:
        raise ValueError("need n_train_per_class, n_test_per_class, n_frames >= 1 and image_size >= 8")
    root = Path(root)
    (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
    (root / "Frames").mkdir(parents=True, exist_ok=True)
    contrast = (float(contrast[0]), float(contrast[1]))
    for split_id, (split, n_per_class, prefix) in enumerate(
            (("train", n_train_per_class, "tr"), ("test", n_test_per_class, "te"))):
        labels = np.repeat(np.arange(len(CLASS_NAMES)), n_per_class)
        labels = labels[np.random.default_rng([seed, split_id, 1]).permutation(len(labels))]
        rows = []
        for i, label in enumerate(labels):
            clip = f"{prefix}{i:05d}"
            rng = np.random.default_rng([seed, split_id, 2, i])
            audio = _make_audio(rng, AUDIO_GROUP[label])
            sf.write(root / "AudioWAV" / f"{clip}.wav", audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
            folder = root / "Frames" / clip
            folder.mkdir(exist_ok=True)
            for f, frame in enumerate(_make_frames(rng, int(label), image_size, n_frames, visual_noise, contrast)):
                Image.fromarray(frame, "RGB").save(folder / f"frame_{f:03d}.jpg", format="JPEG",
                                                   quality=JPEG_QUALITY)
            rows.append(f"{clip},{CLASS_NAMES[label]}\n")
        (root / f"{split}.csv").write_text("".join(rows), encoding="utf-8")
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASS_NAMES), encoding="utf-8")
    settings = dict(n_train_per_class=n_train_per_class, n_test_per_class=n_test_per_class,
                    image_size=image_size, n_frames=n_frames, visual_noise=visual_noise,
                    contrast_lo=contrast[0], contrast_hi=contrast[1])
    (root / "README.txt").write_text(_readme(seed, settings), encoding="utf-8")
    (root / ".complete").write_text(f"{VERSION} seed {seed}\n", encoding="utf-8")  # last
    return root


def _folder_name(seed: int, kwargs: dict) -> str:
    name = f"{VERSION}-seed{int(seed)}"
    extra = {k: v for k, v in kwargs.items() if DEFAULTS.get(k) != v}
    if extra:
        name += "-" + hashlib.sha1(repr(sorted(extra.items())).encode()).hexdigest()[:8]
    return name


def ensure_synthetic(root: str | os.PathLike, seed: int = 0, **kwargs: Any) -> Path:
    """The generated data set under ``<root>/synthetic/<version>-seed<seed>[-<hash>]``, generating
    it once. Generation goes to a temporary folder that is renamed into place after its
    ``.complete`` marker is written, so a killed generation never leaves a half data set."""
    base = Path(root) / "synthetic"
    final = base / _folder_name(seed, kwargs)
    if (final / ".complete").is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    for entry in base.iterdir():  # leftovers of killed generations (older than an hour)
        if TMP_MARK in entry.name and time.time() - entry.stat().st_mtime > 3600:
            shutil.rmtree(entry, ignore_errors=True)  # best effort: another run may be removing it too
    tmp = tmp_path_for(final)
    try:
        generate(tmp, seed=seed, **kwargs)
        if final.exists() and not (final / ".complete").is_file():
            shutil.rmtree(final)  # an incomplete folder written by something else
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / ".complete").is_file():  # lost a race only if the winner finished
                raise
    finally:
        if tmp.exists():  # best effort, so that a cleanup problem never hides the real error
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _read_classes(root: Path) -> list[str]:
    path = root / "classes.txt"
    if not path.is_file():
        return list(CLASS_NAMES)
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if len(set(names)) != len(names) or len(names) < 2:
        raise DataError(f"{path}: expected at least two distinct class names, one per line")
    return names


@DATASETS.register("synthetic")
def build_synthetic(cfg: Any) -> DataSplits:
    """The synthetic data set: ``cfg.data_root`` if given (a folder in the layout above), else
    generated once into ``<cache_root>/synthetic/``."""
    data_root = getattr(cfg, "data_root", None)
    if data_root:
        root = Path(os.path.expanduser(str(data_root)))
        if not root.is_dir():
            raise DataError(f"synthetic data_root not found: {root}")
        source = "synthetic-" + hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    else:
        seed = int(getattr(cfg, "data_seed", 0) or 0)
        root = ensure_synthetic(cache_root(cfg), seed=seed)
        source = f"synthetic-{root.name}"
    splits = build_audio_visual_splits(cfg, root, _read_classes(root), SPECTROGRAM_PARAMS, source)
    splits.info = {"dataset": "synthetic", **splits.info}
    return splits


README_TEMPLATE = """Synthetic audio-visual data set (bmlr {version}, seed {seed})
=============================================================

Written by bmlr.data.synthetic.generate; regenerate it rather than editing it.
A stand-in for CREMA-D that shows the same modality imbalance: audio is clean and
learned in a few epochs but ambiguous between some classes; the frames are noisy and
learned slowly but resolve exactly those classes.

Layout
  AudioWAV/<clip>.wav             8000 Hz mono 16-bit PCM, 0.6-1.0 s (loaders tile to 1 s)
  Frames/<clip>/frame_NNN.jpg     {n_frames} frames of {image_size}x{image_size} RGB (JPEG quality 90)
  train.csv, test.csv             "clip,LABEL" rows, no header; {n_train_per_class} / {n_test_per_class} clips per class
  classes.txt                     class names in label order
  .complete                       marker written last

Classes
{classes}

Audio: a harmonic tone (4 harmonics) at the group's pitch with +-3% jitter, slight
vibrato, random amplitude and phases, an envelope and light noise. Classes in the same
group (0/1 and 2/3) share exactly the same audio distribution.

Visual: a faint class texture (horizontal stripes, vertical stripes, checkerboard,
45-degree checkerboard, rings, spots) with random period, phase, rotation jitter, colour,
background and motion, amplitude U({contrast_lo}, {contrast_hi}), under Gaussian pixel
noise of sd {visual_noise} (values in [0, 1]).

Attainable test accuracy (default sizes)
  audio alone   {audio_ceiling:.1f}%  analytic Bayes ceiling: (2 + 4 * 1/2) / 6
  visual alone  >= 86.7%  logistic regression on FFT magnitudes of the frames (v2 defaults);
                          a tiny ResNet learns it slowly (68% after 80 epochs alone)
  fused         >= 97.9%  (2 + 4 * 0.969) / 6: audio gives the group, vision the class in a pair
  joint training (baseline, 30 epochs): 85% fused, audio 66%, visual 33%: the imbalance
"""
