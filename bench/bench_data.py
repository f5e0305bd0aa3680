"""Data-path benchmark: samples per second through the DataLoader with the spectrogram cache
against computing every spectrogram on the fly (librosa, as a loader without a cache would).

Both paths read the same training split with the same DataLoader settings (evaluation-mode frame
transforms off: the training split's augmentation runs in both); only where the spectrogram comes
from differs (``SpectrogramStore.load``, a memory-mapped ``.npy``, against
``LiveSpectrograms.load``, which runs ``compute_spectrogram``). Passes alternate (cached, live,
cached, live, ...) so machine noise hits both; the ratio of the median rates is printed. Run:

    python bench/bench_data.py                                   # synthetic (generated once into the cache)
    python bench/bench_data.py --dataset avmnist --root ../shared/data
    python bench/bench_data.py --dataset cremad --root /data/CREMA-D --workers 4
    python bench/bench_data.py --dataset cremad --generate 256   # CREMA-D-like clips written to a temp folder

``--generate N`` writes N CREMA-D-style clips (2.5 s of 16 kHz audio, as the release, and three
224 x 224 JPEG frames) so the paper's pipeline (resampling to 22,050 Hz, 257 x 188) can be timed
without the data set.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types

import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bmlr.config import from_dict  # noqa: E402
from bmlr.data import build_datasets  # noqa: E402
from bmlr.data.cache import LiveSpectrograms  # noqa: E402


def generate_cremad(root: str, n: int) -> None:
    import numpy as np
    import soundfile as sf
    from PIL import Image

    from bmlr.data.cremad import CLASS_NAMES

    rng = np.random.default_rng(0)
    rows = {"train": [], "test": []}
    for i in range(n):
        label = CLASS_NAMES[i % len(CLASS_NAMES)]
        clip = f"{1001 + i}_GEN_{label}_XX"
        t = np.arange(int(16000 * 2.5)) / 16000
        y = 0.3 * np.sin(2 * np.pi * (150 + 20 * (i % 6)) * t) + 0.02 * rng.standard_normal(t.size)
        os.makedirs(os.path.join(root, "AudioWAV"), exist_ok=True)
        sf.write(os.path.join(root, "AudioWAV", f"{clip}.wav"), y.astype(np.float32), 16000, subtype="PCM_16")
        folder = os.path.join(root, "Image-01-FPS", clip)
        os.makedirs(folder, exist_ok=True)
        for f in range(3):
            img = rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
            Image.fromarray(img).save(os.path.join(folder, f"frame_{f:05d}.jpg"), quality=90)
        rows["test" if i % 10 == 9 else "train"].append(f"{clip},{label}\n")
    for split, lines in rows.items():
        with open(os.path.join(root, f"{split}.csv"), "w") as fh:
            fh.writelines(lines)


def rate(dataset, batch: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers)
    start = time.perf_counter()
    n = 0
    for inputs, labels in loader:
        n += len(labels)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--root", default=None, help="data_root (synthetic: generated when omitted)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--samples", type=int, default=256, help="training samples per pass")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--repeats", type=int, default=3, help="passes per path")
    p.add_argument("--image-size", type=int, default=None, help="default: the data set's config default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="cremad only: write N CREMA-D-like clips into a temporary folder and use it")
    args = p.parse_args()
    if args.generate:
        import tempfile

        if args.dataset != "cremad":
            p.error("--generate needs --dataset cremad")
        import atexit
        import shutil

        tmp = tempfile.mkdtemp(prefix="bench-cremad-")
        atexit.register(shutil.rmtree, tmp, True)
        generate_cremad(tmp, args.generate)
        args.root = tmp
        args.cache_dir = args.cache_dir or os.path.join(tmp, ".cache")
    torch.set_num_threads(args.threads)
    overrides = {"dataset": args.dataset, "data_root": args.root, "cache_dir": args.cache_dir}
    overrides["image_size"] = args.image_size or (28 if args.dataset == "avmnist" else 32)
    if args.dataset == "avmnist":
        overrides["frames"] = 1
    cfg = from_dict(overrides)
    data = build_datasets(types.SimpleNamespace(**cfg.to_dict(), prepare_workers=os.cpu_count(), progress=True))
    train = data.train
    store = train.spectrograms
    indices = list(range(min(args.samples, len(train))))
    cached = Subset(train, indices)
    live_train = type(train).__new__(type(train))
    live_train.__dict__.update(train.__dict__)
    live_train.spectrograms = LiveSpectrograms(train.records, store.params)
    live = Subset(live_train, indices)
    # same tensors either way
    a, b = cached[0][0]["audio"], live[0][0]["audio"]
    assert torch.equal(a, b), "cached and on-the-fly spectrograms differ"
    rate(cached, args.batch, args.workers)  # warm-up: page cache, librosa's lazy imports
    rate(live, args.batch, args.workers)
    rates = {"cached": [], "live": []}
    for _ in range(args.repeats):
        rates["cached"].append(rate(cached, args.batch, args.workers))
        rates["live"].append(rate(live, args.batch, args.workers))
    c, lv = statistics.median(rates["cached"]), statistics.median(rates["live"])
    # the spectrogram alone (no frames, no collation): what the cache itself saves
    import numpy as np

    clip_ids = [train.records[i].clip_id for i in indices]
    spec_rates = {"cached": [], "live": []}
    for _ in range(args.repeats):
        for name, source in (("cached", store), ("live", live_train.spectrograms)):
            start = time.perf_counter()
            for clip in clip_ids:
                np.array(source.load(clip), dtype=np.float32)
            spec_rates[name].append(len(clip_ids) / (time.perf_counter() - start))
    sc, sl = statistics.median(spec_rates["cached"]), statistics.median(spec_rates["live"])
    shape = tuple(a.shape)
    print(f"data set {args.dataset}: {len(indices)} training samples per pass, batch {args.batch}, "
          f"{args.workers} loader workers, spectrogram {shape} ({store.params})")
    print(f"  cached (memory-mapped .npy): {c:8.1f} samples/s   passes {[round(x, 1) for x in rates['cached']]}")
    print(f"  on the fly (librosa)       : {lv:8.1f} samples/s   passes {[round(x, 1) for x in rates['live']]}")
    print(f"  ratio cached / on the fly  : {c / lv:.2f}x   (whole samples: spectrogram + frames)")
    print(f"  spectrogram alone: cached {sc:.0f}/s, on the fly {sl:.0f}/s, ratio {sc / sl:.1f}x")


if __name__ == "__main__":
    main()
