"""The best trial's model on a sample of validation clips, for the report's t-SNE figures (the
paper's Figures 1 and 3): the sample the trial saved, `trials/trial_<id>/val_sample.pt` (a staged
study: in its stage's folder), written by a trial that trains to its last epoch
(:mod:`bmlr.tuning.val_sample`): at its best validation epoch, for at most
:data:`~bmlr.tuning.val_sample.MAX_CLIPS` validation clips (a fixed random sample), each
modality's feature, the fused feature (what the decision layer reads, `Fusion.fused_features`)
and each modality's unimodal logits (what BMLR reshapes from).

A study keeps no weights (a trial's Trainer state is deleted when it ends) and the report trains
nothing: where the winner saved no sample (a scheduler stopped it early, or the study predates
the file), the figures are not drawn and the page says why and how to get them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bmlr.config import load_config
from bmlr.tuning.report.study_view import Context
from bmlr.tuning.store import TRIALS_DIR
from bmlr.tuning.val_sample import val_sample_path

__all__ = ["Unavailable", "ValidationSample", "best_model_sample"]


class Unavailable(RuntimeError):
    """A figure cannot be drawn; the message says why (the report prints it in its place)."""


@dataclass
class ValidationSample:
    """The best trial's model's view of a fixed sample of validation clips."""

    labels: torch.Tensor                # [N] long
    features: dict[str, torch.Tensor]   # modality -> [N, d_u]
    fused: torch.Tensor                 # [N, D], the decision layer's input
    unimodal: dict[str, torch.Tensor]   # modality -> [N, C] logits
    class_names: list[str]
    config: dict[str, Any]              # the best trial's configuration, best.yaml (alpha, beta, method, fusion...)
    best_epoch: int
    val_acc: float                      # the model's validation accuracy at that epoch
    n_val: int                          # validation clips in all


def _saved(ctx: Context) -> Path | None:
    """The best trial's saved sample, in the study folder or its stages' (None: there is none)."""
    for folder in [ctx.study.dir, *ctx.study.stage_dirs]:
        path = val_sample_path(folder / TRIALS_DIR, ctx.best_id)
        if path.is_file():
            return path
    return None


def _why_none(ctx: Context) -> str:
    """Why the winner has no sample, and how to get one."""
    trained, budget = ctx.best.get("epochs"), ctx.study.trial_epochs()
    epochs = f"; this one trained {int(trained)} of {int(budget)} epochs" if trained and budget else ""
    return (f"trial {ctx.best_id} saved no validation sample (`{TRIALS_DIR}/trial_{ctx.best_id}/val_sample.pt`: a "
            f"trial saves one when it trains to its last epoch{epochs}, and studies from before the file have "
            "none). A study keeps no model weights and the report trains nothing, so there is no model to embed. "
            "To draw them, run the study so that its winner trains to the end: `--scheduler none` trains every "
            "trial to its last epoch (as a surface study does)")


def best_model_sample(ctx: Context) -> ValidationSample:
    """The best trial's own model on the validation sample it saved; Unavailable says why
    where there is none."""
    best_yaml = ctx.study.store.best_path
    if not best_yaml.is_file():
        raise Unavailable(f"the study has no `best.yaml` ({best_yaml}) to read the best configuration from")
    path = _saved(ctx)
    if path is None:
        raise Unavailable(_why_none(ctx))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file: the figures are missing, the page says why
        raise Unavailable(f"{path} is unreadable ({type(err).__name__}: {err})") from None
    return ValidationSample(data["labels"], data["features"], data["fused"], data["unimodal"],
                            list(data["class_names"]), load_config(best_yaml).to_dict(), int(data["best_epoch"]),
                            float(data["val_acc"]), int(data["n_val"]))
