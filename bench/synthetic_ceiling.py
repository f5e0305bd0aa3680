"""Attainable visual and fused accuracy of the synthetic data set, measured without a CNN.

Logistic regression (scikit-learn, installed with librosa) on the log FFT magnitudes of the
frames (shift invariant; averaged over a clip's frames), trained on the train split and
scored on test. Prints the 6-class visual accuracy, the accuracy of telling apart the two
classes of an audio pair, and the fused estimate (2 + 4 q) / 6 (audio resolves the group).

    python bench/synthetic_ceiling.py [--root DIR]   # default: generate/read the cached default
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bmlr.config import from_dict
from bmlr.data.cache import cache_root
from bmlr.data.synthetic import AUDIO_GROUP, ensure_synthetic


def features(root: Path, split: str, classes: list[str]):
    x, y = [], []
    for line in (root / f"{split}.csv").read_text().splitlines():
        clip, label = line.split(",")
        mags = []
        for frame in sorted((root / "Frames" / clip).glob("*.jpg")):
            a = np.asarray(Image.open(frame).convert("RGB"), dtype=np.float64) / 255.0
            a = a - a.mean(axis=(0, 1))
            mags.append(np.abs(np.fft.fft2(a, axes=(0, 1))).sum(-1))
        x.append(np.log(np.mean(mags, 0)).ravel())
        y.append(classes.index(label))
    return np.array(x), np.array(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="a generated synthetic data set (default: the cached default)")
    args = parser.parse_args()
    root = Path(args.root) if args.root else ensure_synthetic(cache_root(from_dict({})))
    classes = (root / "classes.txt").read_text().split()
    x_train, y_train = features(root, "train", classes)
    x_test, y_test = features(root, "test", classes)
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=0.001, max_iter=3000).fit(scaler.transform(x_train), y_train)
    proba = clf.predict_proba(scaler.transform(x_test))
    acc = float((proba.argmax(1) == y_test).mean())
    pairs = {}
    for c, g in enumerate(AUDIO_GROUP):
        pairs.setdefault(g, []).append(c)
    in_pair = [(t, pairs[AUDIO_GROUP[t]]) for t in y_test if len(pairs[AUDIO_GROUP[t]]) > 1]
    idx = [i for i, t in enumerate(y_test) if len(pairs[AUDIO_GROUP[t]]) > 1]
    q = float(np.mean([members[int(np.argmax(proba[i, members]))] == t for i, (t, members) in zip(idx, in_pair)]))
    alone = sum(len(m) == 1 for m in pairs.values())
    n_paired = len(classes) - alone
    print(f"data: {root}")
    print(f"visual 6-class test accuracy (logistic regression on FFT magnitudes): {acc:.3f}")
    print(f"within-pair accuracy q: {q:.3f}")
    print(f"fused estimate ({alone} + {n_paired} q) / {len(classes)} = {(alone + n_paired * q) / len(classes):.3f}")


if __name__ == "__main__":
    main()
