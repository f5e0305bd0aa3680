"""The Ray Tune trainable: a thin adapter over `bmlr.engine.Trainer`.

One trial = one configuration trained with one seed. Every epoch it calls
`Trainer.step_epoch()` (train, then validation; never test), reports the flat
metrics with `ray.tune.report` (the selection metric is `val_acc`) and saves a
checkpoint with `Trainer.state_dict()` (model, optimizer, scheduler, epoch, best
epoch, history and every random state). A trial that is retried after a failure or
resumed after an interrupted study restores that checkpoint and continues with the
next epoch; because the Trainer's shuffling depends only on (seed, epoch) and the
random states are restored, the continued trial sees the same batches it would
have seen without the interruption.

The data are not shipped to the trial: the driver builds the preprocessed cache
once before any trial starts (`bmlr.data.build_datasets`), and every trial calls
`build_datasets(cfg)` itself, which only reads that cache.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

CHECKPOINT_FILE = "trainer.pt"
METRIC = "val_acc"  # validation multimodal accuracy of the current epoch
MODE = "max"
TIME_ATTR = "epoch"  # ASHA's time axis: our own epoch counter, correct after a restore too


def report_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The Trainer's epoch metrics as finite floats. Non-finite values (the imbalance
    ratio is infinite while a modality has 0 accuracy) are left out of that epoch's
    report; `val_acc` is always present."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        value = float(value)
        if math.isfinite(value):
            out[key] = value
    out["epoch"] = int(metrics["epoch"])
    if METRIC not in out:
        raise FloatingPointError(f"{METRIC} is not finite: {metrics.get(METRIC)!r}")
    return out


def train_trial(config: dict[str, Any], base: dict[str, Any], threads: int = 1) -> None:
    """Function trainable. `config` holds the sampled keys, `base` everything else
    (from `tune.with_parameters`, a small dict: no data, no model)."""
    import torch
    from ray import tune

    from bmlr.config import from_dict
    from bmlr.engine import Trainer

    torch.set_num_threads(max(1, int(threads)))
    cfg = from_dict({**base, **config}, source="trial configuration")
    trainer = Trainer(cfg, seed=cfg.seeds[0])  # build_datasets(cfg) reads the driver's cache

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        trainer.load_state_dict(state)

    while trainer.epoch < cfg.epochs:
        metrics = report_metrics(trainer.step_epoch())
        with tempfile.TemporaryDirectory(prefix="bmlr-ckpt-") as folder:
            torch.save(trainer.state_dict(), Path(folder) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def trial_dirname(trial) -> str:
    """Short trial folder names (Ray's default embeds every parameter)."""
    return f"trial_{trial.trial_id}"
