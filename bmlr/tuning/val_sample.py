"""A trained model's view of a fixed sample of validation clips: each modality's feature, the
fused feature (what the decision layer reads, `Fusion.fused_features`) and each modality's
unimodal logits (what BMLR reshapes from), for at most :data:`MAX_CLIPS` clips drawn with a
fixed seed. The study report's t-SNE figures (the paper's Figures 1 and 3) draw it.

A trial that trains all its epochs saves the view at its best validation epoch
(`trials/trial_<id>/val_sample.pt`, :func:`save_val_sample`), so the report reads the winner's
own model instead of training its configuration again; the report retrains only where that
file is missing (the winner stopped early, or a study from before the file existed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bmlr.fileio import atomic_path

__all__ = ["MAX_CLIPS", "SAMPLE_SEED", "FILE", "sample_validation", "described_sample", "val_sample_path",
           "save_val_sample"]

MAX_CLIPS = 1000  # t-SNE's cost grows with the square of the points; a sample shows the structure
SAMPLE_SEED = 0
FILE = "val_sample.pt"


@torch.no_grad()
def sample_validation(trainer) -> dict[str, Any]:
    """Features, fused features and unimodal logits of the sampled validation clips, with the
    trainer's current weights."""
    model = trainer.model.eval()
    labels, features, fused, unimodal = [], {}, [], {}
    for inputs, y in trainer.loader("val"):
        inputs, y = trainer.to_device(inputs, y)
        z = model.encode(inputs)
        fused.append(model.fusion.fused_features(z).float().cpu())
        for u, logits in model.fusion.unimodal_logits(z).items():
            unimodal.setdefault(u, []).append(logits.float().cpu())
            features.setdefault(u, []).append(z[u].float().cpu())
        labels.append(y.cpu())
    n = sum(len(y) for y in labels)
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(SAMPLE_SEED))[:MAX_CLIPS].sort().values
    return {"labels": torch.cat(labels)[keep], "fused": torch.cat(fused)[keep], "n_val": n,
            "features": {u: torch.cat(v)[keep] for u, v in features.items()},
            "unimodal": {u: torch.cat(v)[keep] for u, v in unimodal.items()}}


def described_sample(trainer) -> dict[str, Any]:
    """:func:`sample_validation` at the trainer's best validation epoch (its weights are loaded),
    with the class names, that epoch and its validation accuracy."""
    trainer.load_best()
    return {**sample_validation(trainer), "class_names": list(trainer.data.class_names),
            "best_epoch": trainer.best_epoch, "val_acc": float(trainer.best_val["acc"])}


def val_sample_path(extras_dir: str | Path, trial_id: str) -> Path:
    return Path(extras_dir) / f"trial_{trial_id}" / FILE


def save_val_sample(trainer, path: Path) -> None:
    """The best epoch's view, saved atomically (a trial calls it after its last epoch, before
    that epoch's report, since a scheduler's stop at the report ends the trial). The trainer's
    weights and the random states are as they were before."""
    current = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    devices = [trainer.device.index or 0] if trainer.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        data = described_sample(trainer)
    trainer.model.load_state_dict(current)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
