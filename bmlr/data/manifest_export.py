"""Write a built-in data set as a manifest, so the two paths can be checked against each other.

    python -m bmlr.data.manifest_export --dataset avmnist --root ../shared/data --out DIR
            [--cache-dir DIR] [--val-fraction 0.1] [--split-seed 0]

The data set is built as training builds it (same ``val_fraction`` and ``split_seed``) and
written in its own order with an explicit ``split`` column (the built-in's train / val / test),
so ``dataset: manifest`` on the result reads the same samples in the same order. Audio files
and frame folders are referenced (absolute paths); images that live only inside a file (the
MNIST idx arrays) are written as PNG, sequence features as one ``.npy`` per sample (with
``scale: none``, as the built-in reads them). Supported:
the audio-visual sets (cremad, ks, ave, synthetic), avmnist, mosi and mosei.
"""
from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from bmlr.data.avmnist import AVMNISTDataset
from bmlr.data.base import AudioVisualDataset
from bmlr.data.cache import atomic_save_npy
from bmlr.data.mosi import SequenceDataset
from bmlr.data.registry import build_datasets
from bmlr.data.types import DataError, DataSplits
from bmlr.fileio import atomic_path, atomic_write_text, write_csv

__all__ = ["export_manifest", "main"]

SPLITS = ("train", "val", "test")


def _audio_params(dataset) -> dict:
    p = dataset.spectrograms.params
    return {"kind": "audio", "sample_rate": p.sample_rate, "duration_s": p.duration_s, "n_fft": p.n_fft,
            "hop_length": p.hop_length, "tile": p.tile}


def _write_png(path: Path, image: np.ndarray) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8), "L").save(tmp, format="PNG")
    return str(path.relative_to(path.parents[1]))


def _rows_avmnist(ds: AVMNISTDataset, split: str, out: Path) -> list[dict]:
    rows = []
    for i, r in enumerate(ds.records):
        image = _write_png(out / "images" / f"{r.clip_id}.png", ds.images[ds.image_index[i]])
        rows.append({"id": r.clip_id, "label": None, "split": split, "audio": str(Path(r.audio_path).resolve()),
                     "visual": image, "_label": r.label})
    return rows


def _rows_audio_visual(ds: AudioVisualDataset, split: str, out: Path) -> list[dict]:
    return [{"id": r.clip_id, "label": None, "split": split, "audio": str(Path(r.audio_path).resolve()),
             "visual": str(Path(r.frame_paths[0]).resolve().parent), "_label": r.label} for r in ds.records]


def _rows_sequence(ds: SequenceDataset, split: str, out: Path) -> list[dict]:
    rows = []
    for i, label in enumerate(ds.labels):
        row: dict[str, Any] = {"id": f"{split}-{i:06d}", "label": None, "split": split}
        for m, x in ds.arrays.items():
            atomic_save_npy(out / "features" / m / f"{row['id']}.npy", x[i].numpy())
            row[m] = f"features/{m}/{row['id']}.npy"
        rows.append({**row, "_label": label})
    return rows


def _modalities(data: DataSplits) -> dict:
    train = data.train
    if isinstance(train, AVMNISTDataset):  # one digit image, never augmented
        return {"audio": _audio_params(train), "visual": {"kind": "image", "augment": False}}
    if isinstance(train, AudioVisualDataset):
        return {"audio": _audio_params(train), "visual": {"kind": "frames"}}
    # the built-in MOSI / MOSEI hand the model their features unscaled: so does the export
    return {m: {"kind": "features", "scale": "none"} for m in data.modalities}


def export_manifest(dataset: str, root: str, out: str | Path, *, cache_dir: str | None = None,
                    val_fraction: float = 0.1, split_seed: int = 0) -> dict:
    """Build ``dataset`` from ``root`` and write ``out/manifest.csv``, ``modalities.yaml`` and
    ``classes.txt``; returns the data set's info and the number of rows."""
    import yaml

    cfg = types.SimpleNamespace(dataset=dataset, data_root=str(root), cache_dir=cache_dir, frames=1, image_size=28,
                                val_fraction=float(val_fraction), split_seed=int(split_seed), skip_bad=False,
                                num_workers=0, progress=False)
    data = build_datasets(cfg)
    writers = ((AVMNISTDataset, _rows_avmnist), (AudioVisualDataset, _rows_audio_visual),
               (SequenceDataset, _rows_sequence))
    writer = next((w for cls, w in writers if isinstance(data.train, cls)), None)
    if writer is None:
        raise DataError(f"export of data set {dataset!r} ({type(data.train).__name__}) is not supported")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for split in SPLITS for row in writer(getattr(data, split), split, out)]
    for row in rows:
        row["label"] = data.class_names[row.pop("_label")]
    write_csv(rows, out / "manifest.csv")
    atomic_write_text(out / "modalities.yaml", f"# exported from {dataset} at {root}\n"
                      + yaml.safe_dump(_modalities(data), sort_keys=False))
    atomic_write_text(out / "classes.txt", "".join(f"{name}\n" for name in data.class_names))
    return {"rows": len(rows), "out": str(out), "info": data.info}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bmlr.data.manifest_export",
                                     description="Write a built-in data set as a manifest (docs/data.md).")
    parser.add_argument("--dataset", required=True, help="built-in data set (avmnist, cremad, ks, ave, mosi, ...)")
    parser.add_argument("--root", required=True, help="its data_root")
    parser.add_argument("--out", required=True, help="folder to write manifest.csv, modalities.yaml, classes.txt")
    parser.add_argument("--cache-dir", default=None, help="spectrogram cache (default: $BMLR_CACHE or ~/.cache/bmlr)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="as the config's val_fraction")
    parser.add_argument("--split-seed", type=int, default=0, help="as the config's split_seed")
    args = parser.parse_args(argv)
    try:
        result = export_manifest(args.dataset, args.root, args.out, cache_dir=args.cache_dir,
                                 val_fraction=args.val_fraction, split_seed=args.split_seed)
    except (DataError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result['rows']} rows to {result['out']}/manifest.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
