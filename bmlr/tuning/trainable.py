"""The Ray Tune trainable: a thin adapter over `bmlr.engine.Trainer`.

One trial = one configuration trained with one seed. Every epoch it calls
`Trainer.step_epoch()` (train, then validation; never test), reports the flat
metrics with `ray.tune.report` (the selection metric is `val_acc`) and then saves
`Trainer.state_dict()` (model, optimizer, scheduler, epoch, best epoch, history and
every random state) to `<study>/state/trial_<id>.pt`, written atomically. A trial
that Ray retries after a failure, or that a resumed study starts again, loads that
file and continues with the next epoch; the Trainer's shuffling depends only on
(seed, epoch) and the random states are restored, so it sees the same batches it
would have seen without the interruption.

Why not Ray's own checkpoints: Ray's experiment snapshot (what `--resume` reads) can
lag behind the trial and reference a checkpoint that `num_to_keep` has already
deleted, so a study whose driver was killed could not restore that trial. The state
file is always the latest finished epoch, by construction. It lives beside Ray's
storage and has the same requirement on multi-node clusters (a shared file system).
The driver deletes it when the trial ends.

The data are not shipped to the trial: the driver builds the preprocessed cache
once before any trial starts (`bmlr.data.build_datasets`), and every trial calls
`build_datasets(cfg)` itself, which only reads that cache.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

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


def state_path(state_dir: str | Path, trial_id: str) -> Path:
    return Path(state_dir) / f"trial_{trial_id}.pt"


def save_state(state: dict, path: Path) -> None:
    """torch.save to a temporary file, then rename: a killed trial never leaves half a file."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_trial(config: dict[str, Any], base: dict[str, Any], state_dir: str, threads: int = 1) -> None:
    """Function trainable. `config` holds the sampled keys, `base` everything else
    (from `tune.with_parameters`, a small dict: no data, no model)."""
    import torch
    from ray import tune

    from bmlr.config import from_dict
    from bmlr.engine import Trainer

    torch.set_num_threads(max(1, int(threads)))
    cfg = from_dict({**base, **config}, source="trial configuration")
    trainer = Trainer(cfg, seed=cfg.seeds[0])  # build_datasets(cfg) reads the driver's cache
    path = state_path(state_dir, tune.get_context().get_trial_id())
    if path.is_file():  # a retried or resumed trial: continue after its last finished epoch
        trainer.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))

    while trainer.epoch < cfg.epochs:
        metrics = report_metrics(trainer.step_epoch())
        # report first: if the trial dies before the save, the epoch is redone and re-reported
        # (MLflow skips epochs it has), rather than saved but never reported
        tune.report(metrics)
        save_state(trainer.state_dict(), path)


def trial_dirname(trial) -> str:
    """Short trial folder names (Ray's default embeds every parameter)."""
    return f"trial_{trial.trial_id}"
