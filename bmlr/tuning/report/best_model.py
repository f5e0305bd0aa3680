"""The best trial's model, retrained once for the report's t-SNE figures (the paper's
Figures 1 and 3), and what it gives on a sample of validation clips.

A trial keeps no weights: its Trainer state (`state/trial_<id>.pt`) is deleted when the trial
ends, and the per-epoch records (`history.json`, `val_top3.json`) hold numbers, not features or
logits. So the report trains `best.yaml`'s configuration again, with the trial's seed and for
as many epochs as a trial could train (the budget of the baseline counterpart,
:func:`bmlr.tuning.report.baseline.counterpart_config`), takes the weights of its best
validation epoch, and keeps for at most :data:`MAX_CLIPS` validation clips (a fixed random
sample) each modality's feature, the fused feature (what the decision layer reads,
`Fusion.fused_features`) and each modality's unimodal logits (what BMLR reshapes from). That is
one trial's cost, paid once: the result is cached in `report/best_model_val.pt` with the
configuration that made it, and a fast report (`--fast`, `--report fast`) uses the cache but
never trains. On CPU the retrained run repeats the trial (same seed, same batches); the
section prints both validation accuracies so a difference shows.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bmlr.config import Config, from_dict, load_config
from bmlr.fileio import atomic_path
from bmlr.tuning.report.baseline import counterpart_config
from bmlr.tuning.report.study_view import Context

__all__ = ["CACHE_FILE", "MAX_CLIPS", "Unavailable", "ValidationSample", "best_model_sample"]

CACHE_FILE = "best_model_val.pt"
MAX_CLIPS = 1000  # t-SNE's cost grows with the square of the points; a sample shows the structure
SAMPLE_SEED = 0


class Unavailable(RuntimeError):
    """A figure cannot be drawn; the message says why (the report prints it in its place)."""


@dataclass
class ValidationSample:
    """The retrained best model's view of a fixed sample of validation clips."""

    labels: torch.Tensor                # [N] long
    features: dict[str, torch.Tensor]   # modality -> [N, d_u]
    fused: torch.Tensor                 # [N, D], the decision layer's input
    unimodal: dict[str, torch.Tensor]   # modality -> [N, C] logits
    class_names: list[str]
    config: dict[str, Any]              # the retrained configuration (alpha, beta, method, fusion...)
    best_epoch: int
    val_acc: float                      # the retrained run's best validation accuracy
    n_val: int                          # validation clips in all


def replay_config(ctx: Context) -> tuple[Config, int]:
    """`best.yaml` with the best trial's seed, and the budget a trial trained."""
    planned = counterpart_config(ctx.study, ctx.best)
    if planned is None:
        raise Unavailable(f"the study has no `best.yaml` ({ctx.study.store.best_path}) to retrain")
    counterpart, budget = planned
    cfg = load_config(ctx.study.store.best_path).to_dict()
    cfg.update(seeds=list(counterpart.seeds), epochs=counterpart.epochs, name=None)
    return from_dict(cfg, source="the report's retrained best model"), budget


def _cache_key(cfg: Config, budget: int) -> str:
    return json.dumps({**cfg.to_dict(), "max_epochs": budget, "max_clips": MAX_CLIPS}, sort_keys=True, default=str)


@torch.no_grad()
def _sample(trainer) -> dict[str, Any]:
    """Features, fused features and unimodal logits of the sampled validation clips."""
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


def _train(cfg: Config, budget: int) -> dict[str, Any]:
    """Train `cfg` for `budget` epochs (validation only, at most 4 threads unless it sets its
    own), back to its best epoch, and sample the validation split."""
    from bmlr.engine import Trainer

    threads_before = torch.get_num_threads()
    try:
        if not cfg.threads:
            torch.set_num_threads(max(1, min(4, threads_before)))
        trainer = Trainer(cfg, seed=cfg.seeds[0])
        trainer.fit(budget)
        trainer.load_best()
        return {**_sample(trainer), "class_names": list(trainer.data.class_names),
                "best_epoch": trainer.best_epoch, "val_acc": float(trainer.best_val["acc"])}
    finally:
        torch.set_num_threads(threads_before)


def _cached(path: Path, key: str, ctx: Context) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged cache is retrained, and the log says so
        ctx.log(f"report: {path} is unreadable ({type(err).__name__}: {err}); retraining the best model")
        return None
    return data if data.get("key") == key else None


def best_model_sample(ctx: Context, train: bool) -> ValidationSample:
    """The retrained best model on the validation sample, from the cache or (with `train`)
    trained here; Unavailable says why where neither is possible."""
    cfg, budget = replay_config(ctx)
    key, path = _cache_key(cfg, budget), ctx.out / CACHE_FILE
    data = _cached(path, key, ctx)
    if data is None:
        if not train:
            raise Unavailable("a study keeps no model weights, so these figures retrain the best trial's "
                              "configuration once (one trial's cost); a fast report (`--fast`, `--report fast`) "
                              "does not. Run `tune.py report --study ...` without `--fast` to draw them")
        ctx.log(f"report: retraining trial {ctx.best_id}'s configuration for the t-SNE figures (method "
                f"{cfg.method}, {budget} epochs, seed {cfg.seeds[0]}; --fast skips it)")
        start = time.time()
        data = {**_train(cfg, budget), "key": key, "seconds": time.time() - start}
        ctx.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:  # a killed report never leaves half a cache
            torch.save(data, tmp)
    return ValidationSample(data["labels"], data["features"], data["fused"], data["unimodal"],
                            list(data["class_names"]), cfg.to_dict(), int(data["best_epoch"]),
                            float(data["val_acc"]), int(data["n_val"]))
