"""The Ray Tune trainable: a thin adapter over `bmlr.engine.Trainer.fit`.

One trial = one configuration trained with one seed, on the schedule of the production
run (`cfg.epochs`, the horizon: the cosine schedule, AUG's cadence) for at most the
study's budget (`max_epochs`, ASHA's `max_t`): a trial is the first epochs of the run
`best.yaml` then trains. After every epoch (train, then validation; never test) it
reports the flat metrics with `ray.tune.report` (the selection metric is `val_acc`) and
then saves `Trainer.state_dict()` (model, optimizer, scheduler, epoch, best epoch,
history and every random state) to `<study>/state/trial_<id>.pt`, written atomically.
Before the report it writes the trial's whole history (every epoch, those trained before a
restore included) to `<study>/trials/trial_<id>/history.json`: the study's record of the
trial's epochs (Ray's result.json only holds what was reported since the last restore).
A trial that Ray retries after a failure, or that a resumed study starts again, loads
that file and continues with the next epoch; the Trainer's shuffling depends only on
(seed, epoch) and the random states are restored, so it sees the same batches it would
have seen without the interruption. Ray marks the last report `done` when the function
returns.

Why not Ray's own checkpoints: Ray's experiment snapshot (what `--resume` reads) can
lag behind the trial and reference a checkpoint that `num_to_keep` has already
deleted, so a study whose driver was killed could not restore that trial. The state
file is always the latest finished epoch, by construction. It lives beside Ray's
storage and has the same requirement on multi-node clusters (a shared file system).
The driver deletes it when the trial ends.

On object storage (``--storage s3://...``, :mod:`bmlr.tuning.remote`) the trial writes these
files in a temporary folder of its node and uploads each one as it is written; a retried
trial, on any node, downloads its state file first.

The data are not shipped to the trial: the driver builds the preprocessed cache
once before any trial starts (`bmlr.data.build_datasets`), and every trial calls
`build_datasets(cfg)` itself, which only reads that cache.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from bmlr.fileio import atomic_torch_save, atomic_write_text
from bmlr.tuning.ray_backend import METRIC
from bmlr.tuning.scores import DEFAULT_RULE, VAL_ACC, ScoreRule
from bmlr.tuning.store import history_path, write_history
from bmlr.tuning.val_sample import save_val_sample, val_sample_path


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
    if VAL_ACC not in out:
        raise FloatingPointError(f"{VAL_ACC} is not finite: {metrics.get(VAL_ACC)!r}")
    return out


def state_path(state_dir: str | Path, trial_id: str) -> Path:
    return Path(state_dir) / f"trial_{trial_id}.pt"


def save_state(state: dict, path: Path) -> None:
    """torch.save, atomically: a killed trial or a full disk never leaves half a file (and a
    full disk is an OSError, not torch's "unexpected pos")."""
    atomic_torch_save(state, path)


def val_top3_path(extras_dir: str | Path, trial_id: str) -> Path:
    return Path(extras_dir) / f"trial_{trial_id}" / "val_top3.json"


def save_val_top3(trainer, path: Path, k: int = 3) -> None:
    """Per true class, how often each class is among a sample's top-k predictions on the
    **validation** split (the paper's Figure 4), for the fused head and each modality's
    own head, with the current model (called when the epoch is the best so far, so the file
    always holds the best epoch's predictions). The random states are left untouched: an
    extra pass over the data must not change the training that follows."""
    import torch

    from bmlr.metrics import top_k_by_class

    devices = [trainer.device.index or 0] if trainer.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        fused, unimodal, labels = trainer.predict("val")
    num_classes = trainer.data.num_classes
    heads = {"multimodal": fused, **unimodal}
    data = {"epoch": trainer.epoch, "k": k, "split": "val", "class_names": list(trainer.data.class_names),
            "support": torch.bincount(labels, minlength=num_classes).tolist(),
            "top_k": {name: top_k_by_class(logits, labels, num_classes, k).tolist() for name, logits in heads.items()},
            "accuracy": {name: float((logits.argmax(1) == labels).float().mean()) for name, logits in heads.items()}}
    atomic_write_text(path, json.dumps(data))


def train_trial(config: dict[str, Any], base: dict[str, Any], state_dir: str, threads: int = 1,
                extras_dir: str | None = None, max_epochs: int | None = None, rule: ScoreRule = DEFAULT_RULE,
                mirror=None) -> None:
    """Function trainable. `config` holds the sampled keys, `base` everything else (from
    `tune.with_parameters`, a small dict: no data, no model), its `epochs` the production
    run's (the schedule's horizon). The trial trains `max_epochs` epochs of that run (None:
    all of them; a budget beyond the production epochs stretches the horizon to it, since a
    schedule must not run past its end). With `extras_dir`, the trial's whole history is kept
    in `<extras_dir>/trial_<id>/history.json` (written before each report) and the validation
    top-3 counts of the best epoch so far in `<extras_dir>/trial_<id>/val_top3.json` (for the
    study report's Figure 4), and a trial that trains to its end saves its best epoch's view of a
    validation sample (`val_sample.pt`, :mod:`bmlr.tuning.val_sample`). Each report carries :data:`METRIC`, the trial's score by ``rule``
    (:mod:`bmlr.tuning.scores`) over the epochs trained so far. ``mirror``
    (:class:`bmlr.tuning.remote.Mirror`): the study folder is on object storage; the trial's
    files are written in a temporary folder of this node, uploaded, and the folder removed."""
    if mirror is None:
        return _train(config, base, state_dir, threads, extras_dir, max_epochs, rule)
    with tempfile.TemporaryDirectory(prefix="bmlr-trial-") as scratch:
        _train(config, base, str(mirror.here(state_dir, scratch)), threads,
               extras_dir and str(mirror.here(extras_dir, scratch)), max_epochs, rule, mirror)


def _train(config: dict[str, Any], base: dict[str, Any], state_dir: str, threads: int, extras_dir: str | None,
           max_epochs: int | None, rule: ScoreRule, mirror=None) -> None:
    import torch
    from ray import tune

    from bmlr.config import from_dict
    from bmlr.engine import Trainer

    torch.set_num_threads(max(1, int(threads)))
    keep = mirror.put if mirror is not None else (lambda path: None)
    cfg = from_dict({**base, **config}, source="trial configuration")
    budget = cfg.epochs if max_epochs is None else int(max_epochs)
    cfg.epochs = max(cfg.epochs, budget)
    trainer = Trainer(cfg, seed=cfg.seeds[0])  # build_datasets(cfg) reads the driver's cache
    trial_id = tune.get_context().get_trial_id()
    path = state_path(state_dir, trial_id)
    restored = path.is_file() or (mirror is not None and mirror.get(path))
    if restored:  # a retried or resumed trial: continue after its last finished epoch
        # weights_only: tensors and plain types only, so a state file written by someone else runs no code
        trainer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def after_epoch(metrics: dict[str, float]) -> None:
        reported = report_metrics(metrics)
        accs = [float(h[VAL_ACC]) for h in trainer.history]
        reported[METRIC] = rule.value(accs)
        if extras_dir and trainer.best_epoch == trainer.epoch:  # before the report: ASHA may stop us there
            save_val_top3(trainer, val_top3_path(extras_dir, trial_id))
            keep(val_top3_path(extras_dir, trial_id))
        if extras_dir and trainer.epoch == budget:  # the last epoch (its report ends the trial): for the report
            save_val_sample(trainer, val_sample_path(extras_dir, trial_id))
            keep(val_sample_path(extras_dir, trial_id))
        if extras_dir:  # every epoch, restored ones included: Ray's result.json starts at the restore
            keep(write_history(history_path(extras_dir, trial_id), [{**report_metrics(m), METRIC: rule.value(accs[:i])}
                                                                    for i, m in enumerate(trainer.history, 1)]))
        # report first: if the trial dies before the save, the epoch is redone and re-reported
        # (MLflow skips epochs it has), rather than saved but never reported
        tune.report(reported)
        save_state(trainer.state_dict(), path)
        keep(path)

    trainer.fit(budget, on_epoch=after_epoch)

