"""The best trial's model on a sample of validation clips, for the report's t-SNE figures (the
paper's Figures 1 and 3): the trial's own (`trials/trial_<id>/val_sample.pt`, written by a trial
that trains to its end, :mod:`bmlr.tuning.val_sample`), else the model retrained once.

A trial keeps no weights: its Trainer state (`state/trial_<id>.pt`) is deleted when the trial
ends. Where the winner left no sample (it was stopped early, or the study predates the file), the
report trains `best.yaml`'s configuration again, with the trial's seed and for
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
from bmlr.tuning.store import TRIALS_DIR
from bmlr.tuning.val_sample import MAX_CLIPS, described_sample, val_sample_path

__all__ = ["CACHE_FILE", "MAX_CLIPS", "Unavailable", "ValidationSample", "best_model_sample"]

CACHE_FILE = "best_model_val.pt"


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
    source: str = "retrained with the trial's seed"  # or "the trial's own model" (its val_sample.pt)


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
        return described_sample(trainer)
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


def _trials_own(ctx: Context) -> dict[str, Any] | None:
    path = val_sample_path(ctx.study.dir / TRIALS_DIR, ctx.best_id)
    try:
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    except Exception as err:  # a damaged file: retrain instead, and say so
        ctx.log(f"report: {path} is unreadable ({type(err).__name__}: {err}); retraining the best model")
        return None


def best_model_sample(ctx: Context, train: bool) -> ValidationSample:
    """The best trial's own model on the validation sample where it saved one, else the
    retrained model from the cache or (with `train`) trained here; Unavailable says why where
    none is possible."""
    cfg, budget = replay_config(ctx)
    own = _trials_own(ctx)
    if own is not None:
        return _as_sample(own, cfg, "the trial's own model")
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
    return _as_sample(data, cfg, "retrained with the trial's seed")


def _as_sample(data: dict[str, Any], cfg: Config, source: str) -> ValidationSample:
    return ValidationSample(data["labels"], data["features"], data["fused"], data["unimodal"],
                            list(data["class_names"]), cfg.to_dict(), int(data["best_epoch"]),
                            float(data["val_acc"]), int(data["n_val"]), source)
