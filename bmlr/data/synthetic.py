"""Embedded synthetic audio-visual data set (the default; generated, never downloaded).

Versions (``cfg.data_version``; each stays reproducible by name, byte for byte):

* **v3** (the default): both modalities carry information about every class, at different
  learning speeds, as in CREMA-D and Kinetics-Sounds. Audio is fast with a lower ceiling:
  each class has its own tone, but 12 % of the clips carry another class's (drawn uniformly),
  so the audio alone is right at most 88 % of the time (exact). Vision is slow with a higher
  ceiling: faint class textures under heavy noise, which a tiny ResNet learns over tens of
  epochs. Train / validation / test: 600 / 720 / 720 clips (validation and test: one standard
  error is at most 1.5 points at 80 %).
* **v2**: audio names a *pair* of classes (ceiling 66.7 %) and vision the class within it,
  frames fainter than v1's; validation is carved out of 600 training clips, 240 test clips.
  Joint training there trains vision on exactly the residual it needs, so it does not show the
  imbalance the literature measures (below); kept for the benchmarks recorded on it.
* **v1**: v2 with stronger frames (contrast 0.04-0.30): joint training learns both.

Files (the CREMA-D layout the audio-visual loaders read), under
``<cache_root>/synthetic/<version>-seed<seed>/`` unless ``cfg.data_root`` points elsewhere::

    AudioWAV/<clip>.wav              8 kHz mono, 16-bit PCM, 0.6-1.0 s (tiled to 1 s on load)
    Frames/<clip>/frame_000.jpg ...  3 frames, 32 x 32 RGB, JPEG quality 90
    train.csv, val.csv, test.csv     rows "clip,LABEL", no header, balanced (no val.csv in v1/v2)
    classes.txt, README.txt          class names; the version's design
    .complete                        "<version> seed <seed>", written last; the folder is renamed into place after it

Classes: 0 a_horizontal, 1 a_vertical, 2 b_checker, 3 b_diamond, 4 c_rings, 5 d_spots.

* **Audio** (:func:`bmlr.data.synthetic_signals.tone`): 4 harmonics (weights ~1/k) at the
  class's pitch (v3: 250, 315, 397, 500, 630, 794 Hz, a third of an octave apart; v1/v2: 260 Hz
  for classes 0 and 1, 390 Hz for 2 and 3, 585 and 880 Hz), f0 jitter +-3 %, slight vibrato,
  random amplitude and phases, attack/release envelope, light white noise. The v3 spectrogram
  uses a hop of 128 samples (the tones are steady), v1/v2 64.
* **Visual** (:func:`bmlr.data.synthetic_signals.frames`): a class texture (horizontal /
  vertical stripes, axis / 45-degree checkerboard, concentric rings, round spots), all
  flip-invariant, at a random period (4.5-7 px), rotation jitter (sd 6 degrees), phase, colour
  and background, drifting and jittering across the frames; faint (amplitude U(0.05, 0.25) of
  the [0, 1] range in v3, U(0.02, 0.12) in v2) under Gaussian pixel noise (sd 0.15).

What v3 allows and what joint training reaches (test split, data seed 0; the measurements are
``bench/synthetic_ceiling.py`` and ``bench/bench_imbalance.py``, whose tables are in the README):

* audio alone: 88.0 % Bayes (88.6 % on this test split, reading each clip's tone);
* visual alone: 95.3 % by logistic regression on the frames' FFT magnitudes; the tiny ResNet
  (width 8, Adam 1e-3) trained alone reaches ~78 % in 20 epochs and ~91 % in 60;
* fused: at least 99.2 % (the exact audio posterior times the calibrated visual one);
* joint training (``baseline``, 20 epochs) stays near the audio: see the README's table for
  the fused accuracy and the under-optimization gap of the visual encoder (its linear probe in
  the joint model against the same encoder trained alone for the same epochs).

The v2 numbers (240 test clips): audio 66.7 % (exact), visual >= 86.7 %, fused >= 97.9 %;
``baseline`` 85.1 % fused with the visual branch at 33 %, but the visual encoder trained alone
was no better at 30 epochs (about 35 %), so v2 shows a fused gap without under-optimization.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bmlr.data.audio import SpectrogramParams
from bmlr.data.base import build_audio_visual_splits
from bmlr.data.cache import cache_root
from bmlr.data.registry import DATASETS
from bmlr.data.synthetic_signals import SAMPLE_RATE, frames, tone
from bmlr.data.types import DataError, DataSplits
from bmlr.fileio import TMP_MARK, tmp_path_for

__all__ = ["CLASS_NAMES", "AUDIO_GROUP", "SPECTROGRAM_PARAMS", "Version", "VERSIONS", "LATEST",
           "generate", "ensure_synthetic", "build_synthetic", "audio_ceiling"]

CLASS_NAMES = ["a_horizontal", "a_vertical", "b_checker", "b_diamond", "c_rings", "d_spots"]
#: v1/v2: the audio distribution of each class (classes 0,1 share group 0 and 2,3 share group 1)
AUDIO_GROUP = (0, 0, 1, 1, 2, 3)
#: v1/v2: fundamental frequency (Hz) of each audio group; 4 harmonics stay below Nyquist at 8 kHz
GROUP_F0 = (260.0, 390.0, 585.0, 880.0)
#: v3: one pitch per class, a third of an octave apart
CLASS_F0 = (250.0, 315.0, 397.0, 500.0, 630.0, 794.0)
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Version:
    """What one version of the generator draws; the sizes are defaults `generate` may override."""

    name: str
    pitches: tuple[float, ...]  # the tone (Hz) of each class
    audio_swap: float  # share of clips whose tone is another class's (drawn uniformly among the others)
    contrast: tuple[float, float]  # range of the texture's amplitude ([0, 1] pixel scale)
    visual_noise: float  # sd of the Gaussian pixel noise
    n_train_per_class: int
    n_val_per_class: int  # 0: no val.csv; the loaders carve validation out of train
    n_test_per_class: int
    summary: str
    hop_length: int = 64  # of the spectrogram (n_fft 256): v3 takes 128, half the time steps (its tones are steady)

    @property
    def spectrogram(self) -> SpectrogramParams:
        return SpectrogramParams(sample_rate=SAMPLE_RATE, duration_s=1.0, n_fft=256, hop_length=self.hop_length)

    def audio_ceiling(self) -> float:
        """Bayes accuracy of the audio alone (balanced classes): each distinct pitch is right for
        the classes it stands for, minus the swapped clips (the best guess is the pitch's class)."""
        share = len(set(self.pitches)) / len(self.pitches)
        return share * (1.0 - self.audio_swap) if self.audio_swap else share


_PAIRS = tuple(GROUP_F0[g] for g in AUDIO_GROUP)
VERSIONS = {
    "v1": Version("v1", _PAIRS, 0.0, (0.04, 0.30), 0.15, 100, 0, 40,
                  "audio names a pair of classes, the frames the class within it"),
    "v2": Version("v2", _PAIRS, 0.0, (0.02, 0.12), 0.15, 100, 0, 40,
                  "v1 with fainter frames (contrast 0.02-0.12), so joint training starves vision"),
    "v3": Version("v3", CLASS_F0, 0.12, (0.05, 0.25), 0.15, 100, 120, 120,
                  "both modalities name every class: a fast audio with a lower ceiling, slow frames "
                  "with a higher one; a large validation split", hop_length=128),
}
LATEST = "v3"  # the version a run without `data_version` generates
SPECTROGRAM_PARAMS = VERSIONS["v2"].spectrogram  # v1's and v2's (v3: VERSIONS["v3"].spectrogram)


def audio_ceiling(version: str = LATEST) -> float:
    """Bayes accuracy of audio alone for a version (v1/v2: 4 pitches for 6 classes, 4/6)."""
    return _version(version).audio_ceiling()


def _version(name: str) -> Version:
    if name not in VERSIONS:
        raise DataError(f"unknown synthetic data version {name!r}; expected one of {sorted(VERSIONS)}")
    return VERSIONS[name]


# --------------------------------------------------------------------------------------------
# generation


def _readme(version: Version, seed: int, settings: dict) -> str:
    classes = "\n".join(f"  {i}  {name:<13} tone {version.pitches[i]:.0f} Hz" for i, name in enumerate(CLASS_NAMES))
    return README_TEMPLATE.format(seed=seed, version=version.name, summary=version.summary, classes=classes,
                                  audio_swap=100 * version.audio_swap, **settings,
                                  audio_ceiling=100 * version.audio_ceiling())


def _sizes(v: Version, n_train: int | None, n_val: int | None, n_test: int | None) -> dict[str, int]:
    sizes = {"train": v.n_train_per_class if n_train is None else int(n_train),
             "val": v.n_val_per_class if n_val is None else int(n_val),
             "test": v.n_test_per_class if n_test is None else int(n_test)}
    if sizes["train"] < 1 or sizes["test"] < 1 or sizes["val"] < 0:
        raise ValueError(f"need n_train_per_class, n_test_per_class >= 1 and n_val_per_class >= 0, got {sizes}")
    return sizes


def _tone_class(rng: np.random.Generator, label: int, swap: float) -> int:
    """The class whose tone a clip carries: its own, or with probability ``swap`` another one.
    Versions without swaps draw nothing here, so their files stay as they were."""
    if not swap:
        return label
    swapped, offset = rng.uniform() < swap, int(rng.integers(1, len(CLASS_NAMES)))
    return (label + offset) % len(CLASS_NAMES) if swapped else label


def _write_split(root: Path, v: Version, seed: int, split_id: int, split: str, n_per_class: int,
                 image_size: int, n_frames: int, noise: float, contrast: tuple[float, float]) -> None:
    import soundfile as sf
    from PIL import Image

    labels = np.repeat(np.arange(len(CLASS_NAMES)), n_per_class)
    labels = labels[np.random.default_rng([seed, split_id, 1]).permutation(len(labels))]
    rows = []
    for i, label in enumerate(labels):
        clip = f"{split[:2]}{i:05d}"
        rng = np.random.default_rng([seed, split_id, 2, i])
        audio = tone(rng, v.pitches[_tone_class(rng, int(label), v.audio_swap)])
        sf.write(root / "AudioWAV" / f"{clip}.wav", audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        folder = root / "Frames" / clip
        folder.mkdir(exist_ok=True)
        for f, frame in enumerate(frames(rng, int(label), image_size, n_frames, noise, contrast)):
            Image.fromarray(frame, "RGB").save(folder / f"frame_{f:03d}.jpg", format="JPEG", quality=JPEG_QUALITY)
        rows.append(f"{clip},{CLASS_NAMES[label]}\n")
    (root / f"{split}.csv").write_text("".join(rows), encoding="utf-8")


def generate(root: str | os.PathLike, seed: int = 0, version: str = LATEST, n_train_per_class: int | None = None,
             n_test_per_class: int | None = None, n_val_per_class: int | None = None, image_size: int = 32,
             n_frames: int = 3, visual_noise: float | None = None,
             contrast: tuple[float, float] | None = None, audio_swap: float | None = None) -> Path:
    """Write one version of the synthetic data set into ``root`` (created; files overwritten)
    and return it. Sizes, noise, contrast and the tone swaps default to the version's (``VERSIONS``).

    Deterministic from the arguments: the same seed and version give byte-identical wav and csv
    files, and the same jpg files for one Pillow version (fixed quality, no metadata). Each clip
    draws from its own generator (seed, split, index), so the split sizes change no other clip.
    """
    v = _version(version)
    if audio_swap is not None:  # a variant of the version (the measurements in bench/ sweep it)
        v = dataclasses.replace(v, audio_swap=float(audio_swap))
    sizes = _sizes(v, n_train_per_class, n_val_per_class, n_test_per_class)
    if n_frames < 1 or image_size < 8:
        raise ValueError("need n_frames >= 1 and image_size >= 8")
    noise = v.visual_noise if visual_noise is None else float(visual_noise)
    lo, hi = v.contrast if contrast is None else contrast
    root = Path(root)
    (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
    (root / "Frames").mkdir(parents=True, exist_ok=True)
    # split ids 0 (train) and 1 (test) as in v1/v2; validation (v3) is 2
    for split_id, split in ((0, "train"), (1, "test"), (2, "val")):
        if sizes[split]:
            _write_split(root, v, seed, split_id, split, sizes[split], image_size, n_frames, noise,
                         (float(lo), float(hi)))
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASS_NAMES), encoding="utf-8")
    settings = dict(n_train_per_class=sizes["train"], n_val_per_class=sizes["val"], n_test_per_class=sizes["test"],
                    image_size=image_size, n_frames=n_frames, visual_noise=noise, contrast_lo=lo, contrast_hi=hi)
    (root / "README.txt").write_text(_readme(v, seed, settings), encoding="utf-8")
    (root / ".complete").write_text(f"{v.name} seed {seed}\n", encoding="utf-8")  # last
    return root


def _folder_name(seed: int, version: str, kwargs: dict) -> str:
    name = f"{version}-seed{int(seed)}"
    if kwargs:
        name += "-" + hashlib.sha1(repr(sorted(kwargs.items())).encode()).hexdigest()[:8]
    return name


def ensure_synthetic(root: str | os.PathLike, seed: int = 0, version: str = LATEST, **kwargs: Any) -> Path:
    """The generated data set under ``<root>/synthetic/<version>-seed<seed>[-<hash of kwargs>]``,
    generating it once. Generation goes to a temporary folder that is renamed into place after its
    ``.complete`` marker is written, so a killed generation never leaves a half data set."""
    _version(version)
    base = Path(root) / "synthetic"
    final = base / _folder_name(seed, version, kwargs)
    if (final / ".complete").is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    for entry in base.iterdir():  # leftovers of killed generations (older than an hour)
        if TMP_MARK in entry.name and time.time() - entry.stat().st_mtime > 3600:
            shutil.rmtree(entry, ignore_errors=True)  # best effort: another run may be removing it too
    tmp = tmp_path_for(final)
    try:
        generate(tmp, seed=seed, version=version, **kwargs)
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


def _stored_version(root: Path) -> str:
    """The version a generated folder was written by (its ``.complete`` marker: "v3 seed 0");
    v2 for a folder without one (a data set laid out by hand reads like v2)."""
    marker = root / ".complete"
    words = marker.read_text(encoding="utf-8").split() if marker.is_file() else []
    return words[0] if words and words[0] in VERSIONS else "v2"


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
    version ``cfg.data_version`` generated once into ``<cache_root>/synthetic/``. A ``val.csv``
    is the validation split; without one it is carved out of train (``cfg.val_fraction``)."""
    data_root = getattr(cfg, "data_root", None)
    if data_root:
        root = Path(os.path.expanduser(str(data_root)))
        if not root.is_dir():
            raise DataError(f"synthetic data_root not found: {root}")
        source = "synthetic-" + hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
        version = _version(_stored_version(root))
    else:
        seed = int(getattr(cfg, "data_seed", 0) or 0)
        version = _version(getattr(cfg, "data_version", None) or LATEST)
        root = ensure_synthetic(cache_root(cfg), seed=seed, version=version.name)
        source = f"synthetic-{root.name}"
    val_csv = "val.csv" if (root / "val.csv").is_file() else None  # v3 ships one; v1/v2 carve it out of train
    splits = build_audio_visual_splits(cfg, root, _read_classes(root), version.spectrogram, source, val_csv=val_csv)
    splits.info = {"dataset": "synthetic", **splits.info}
    return splits


README_TEMPLATE = """Synthetic audio-visual data set (bmlr {version}, seed {seed})
=============================================================

Written by bmlr.data.synthetic.generate (version {version}: {summary});
regenerate it rather than editing it. Every version's design and measured accuracies
are in the docstring of bmlr/data/synthetic.py.

Layout
  AudioWAV/<clip>.wav             8000 Hz mono 16-bit PCM, 0.6-1.0 s (loaders tile to 1 s)
  Frames/<clip>/frame_NNN.jpg     {n_frames} frames of {image_size}x{image_size} RGB (JPEG quality 90)
  train.csv, val.csv, test.csv    "clip,LABEL" rows, no header; {n_train_per_class} / {n_val_per_class} / {n_test_per_class}
                                  clips per class (no val.csv where 0: validation is carved from train)
  classes.txt                     class names in label order
  .complete                       marker written last

Classes
{classes}

Audio: a harmonic tone (4 harmonics) at the class's pitch with +-3% jitter, slight
vibrato, random amplitude and phases, an envelope and light noise; {audio_swap:.0f}% of the
clips carry another class's tone. Bayes accuracy of the audio alone: {audio_ceiling:.1f}%.

Visual: a faint class texture (horizontal stripes, vertical stripes, checkerboard,
45-degree checkerboard, rings, spots) with random period, phase, rotation jitter, colour,
background and motion, amplitude U({contrast_lo}, {contrast_hi}), under Gaussian pixel
noise of sd {visual_noise} (values in [0, 1]).
"""
