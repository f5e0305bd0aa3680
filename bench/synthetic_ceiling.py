"""Attainable visual and fused accuracy of the synthetic data set, measured without a CNN.

Visual: logistic regression (scikit-learn) on the log FFT magnitudes of the frames (shift
invariant; averaged over a clip's frames), trained on the train split and scored on test.

* v1 / v2 (audio names a pair of classes): prints the 6-class visual accuracy, the accuracy of
  telling apart the two classes of an audio pair, and the fused estimate (2 + 4 q) / 6.
* v3 (every class its own tone, a share `audio_swap` of clips carrying another class's): the
  audio's Bayes posterior is known exactly (the clip's tone class, read from the wav's spectral
  peak, is right with probability 1 - swap and each other class has swap / 5), so the fused
  bound combines it with the visual classifier's posterior (its temperature fitted on the
  validation split): a lower bound of the Bayes fused accuracy, since the visual classifier is
  not the Bayes one.

    python bench/synthetic_ceiling.py [--root DIR]   # default: generate/read the cached default
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bmlr.config import from_dict
from bmlr.data.cache import cache_root
from bmlr.data.synthetic import AUDIO_GROUP, VERSIONS, ensure_synthetic


def rows(root: Path, split: str, classes: list[str]) -> list[tuple[str, int]]:
    return [(c, classes.index(y)) for c, y in (line.split(",") for line in
                                               (root / f"{split}.csv").read_text().splitlines())]


def features(root: Path, split: str, classes: list[str]):
    x, y = [], []
    for clip, label in rows(root, split, classes):
        mags = []
        for frame in sorted((root / "Frames" / clip).glob("*.jpg")):
            a = np.asarray(Image.open(frame).convert("RGB"), dtype=np.float64) / 255.0
            a = a - a.mean(axis=(0, 1))
            mags.append(np.abs(np.fft.fft2(a, axes=(0, 1))).sum(-1))
        x.append(np.log(np.mean(mags, 0)).ravel())
        y.append(label)
    return np.array(x), np.array(y)


def tone_class(path: Path, pitches: tuple[float, ...]) -> int:
    """The class whose pitch is nearest (in log frequency) to the wav's strongest low peak."""
    audio, sr = sf.read(path)
    spectrum = np.abs(np.fft.rfft(audio, sr))  # 1 Hz bins
    f0 = float(np.argmax(spectrum[150:1000]) + 150)  # the fundamentals lie in 250-800 Hz
    return int(np.argmin([abs(np.log(f0 / p)) for p in pitches]))


def calibrated_log_posteriors(val: np.ndarray, val_y: np.ndarray, test: np.ndarray, low: float,
                              high: float) -> np.ndarray:
    """Log posteriors of the `test` logits divided by the temperature, among 121 spaced evenly in
    log between `low` and `high`, that minimises the negative log-likelihood of `val` (temperature
    scaling, fitted on validation); bench_imbalance.py calibrates its encoders with it too."""
    temps = np.exp(np.linspace(np.log(low), np.log(high), 121))
    nll = [-log_softmax(val / t, axis=1)[np.arange(len(val_y)), val_y].mean() for t in temps]
    return log_softmax(test / temps[int(np.argmin(nll))], axis=1)


def calibrated(clf, scaler, x_val, y_val, x_test) -> np.ndarray:
    """Test log posteriors of `clf` with the temperature that minimises the validation NLL."""
    val, test = clf.decision_function(scaler.transform(x_val)), clf.decision_function(scaler.transform(x_test))
    return calibrated_log_posteriors(val, y_val, test, 0.01, 10.0)


def pairs_report(proba: np.ndarray, y_test: np.ndarray, classes: list[str]) -> None:
    pairs = {}
    for c, g in enumerate(AUDIO_GROUP):
        pairs.setdefault(g, []).append(c)
    in_pair = [(t, pairs[AUDIO_GROUP[t]]) for t in y_test if len(pairs[AUDIO_GROUP[t]]) > 1]
    idx = [i for i, t in enumerate(y_test) if len(pairs[AUDIO_GROUP[t]]) > 1]
    q = float(np.mean([members[int(np.argmax(proba[i, members]))] == t for i, (t, members) in zip(idx, in_pair)]))
    alone = sum(len(m) == 1 for m in pairs.values())
    n_paired = len(classes) - alone
    print(f"within-pair accuracy q: {q:.3f}")
    print(f"fused estimate ({alone} + {n_paired} q) / {len(classes)} = {(alone + n_paired * q) / len(classes):.3f}")


def swap_report(root: Path, version, clf, scaler, classes: list[str], x_test, y_test) -> None:
    tones = np.array([tone_class(root / "AudioWAV" / f"{c}.wav", version.pitches) for c, _ in rows(root, "test", classes)])
    k = len(classes)
    audio_logp = np.full((len(tones), k), np.log(version.audio_swap / (k - 1)))
    audio_logp[np.arange(len(tones)), tones] = np.log(1 - version.audio_swap)
    x_val, y_val = features(root, "val", classes)
    fused = (audio_logp + calibrated(clf, scaler, x_val, y_val, x_test)).argmax(1)
    print(f"audio Bayes accuracy (tone class read from the wav): {float((tones == y_test).mean()):.3f} "
          f"(analytic {1 - version.audio_swap:.3f})")
    print(f"fused lower bound (exact audio posterior x calibrated visual posterior): "
          f"{float((fused == y_test).mean()):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="a generated synthetic data set (default: the cached default)")
    parser.add_argument("--audio-swap", type=float, help="the folder's tone-swap share where it is not its version's")
    parser.add_argument("--C", type=float, default=0.001, help="inverse regularisation of the visual classifier")
    args = parser.parse_args()
    root = Path(args.root) if args.root else ensure_synthetic(cache_root(from_dict({})))
    version = VERSIONS[(root / ".complete").read_text().split()[0]]
    if args.audio_swap is not None:
        version = dataclasses.replace(version, audio_swap=args.audio_swap)
    classes = (root / "classes.txt").read_text().split()
    x_train, y_train = features(root, "train", classes)
    x_test, y_test = features(root, "test", classes)
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=args.C, max_iter=3000).fit(scaler.transform(x_train), y_train)
    proba = clf.predict_proba(scaler.transform(x_test))
    print(f"data: {root} (version {version.name})")
    print(f"visual 6-class test accuracy (logistic regression on FFT magnitudes): "
          f"{float((proba.argmax(1) == y_test).mean()):.3f}")
    if version.audio_swap:
        swap_report(root, version, clf, scaler, classes, x_test, y_test)
    else:
        pairs_report(proba, y_test, classes)


if __name__ == "__main__":
    main()
