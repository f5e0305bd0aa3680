"""The training loop: build data, model, method and optimizer from a Config, then
train with `Trainer.fit`, the one loop every caller uses (the production CLI
`bmlr.train`, the Ray Tune trainable, the study report's baseline run, the
benchmarks). This module knows nothing of Ray.

Read top down, one level per method:

    fit(max_epochs, on_epoch)      epochs: from the current one up to the budget
      step_epoch()                 one epoch: train, validate, keep the best epoch
        train_epoch()              every training batch, then the LR schedule
          train_step(inputs, labels)   to_device, forward, backward, optimizer_step

`forward` is where a method differs (`Method.training_step`: BMLR's label
reshaping, or a comparison method); everything else is plain supervised training.

Two numbers of epochs, never confused: `cfg.epochs` is the schedule's horizon
(the cosine schedule's length, AUG's check cadence), the run a configuration
describes; `fit(max_epochs)` is a budget, how far this call trains (a tuning
trial stops early at `--max-epochs`, on the same schedule `best.yaml` trains).
"""
from __future__ import annotations

import copy
import math
import random
from contextlib import nullcontext
from typing import Callable, ContextManager

import numpy as np
import torch
from torch.utils.data import DataLoader

from bmlr.config import Config, ConfigError
from bmlr.data import DataSplits, build_datasets
from bmlr.methods import METHODS, StepResult
from bmlr.metrics import classification_metrics
from bmlr.models import MultimodalModel, build_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"key 'device' has value {name!r}, but CUDA is not available on this machine; use "
                          f"device: auto (CUDA where there is one) or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def encoder_spec(cfg: Config, kind: str, shape: tuple) -> tuple[str, dict]:
    """Which encoder reads which kind of input (the paper: ResNet-18 for spectrograms
    and frames, a Transformer for sequence features; an MLP for feature vectors)."""
    blocks = (cfg.model_depth,) * 4
    if kind == "spectrogram":
        return "resnet_audio", {"in_channels": shape[0], "base_width": cfg.model_width, "blocks": blocks}
    if kind == "frames":
        return "resnet_visual", {"base_width": cfg.model_width, "blocks": blocks}
    if kind == "sequence":
        return "transformer", {"d_in": shape[-1], "d_model": cfg.model_width, "layers": cfg.model_depth,
                               "max_len": max(shape[0], 1)}
    if kind == "vector":
        return "mlp", {"d_in": shape[-1], "hidden": cfg.model_width, "layers": cfg.model_depth}
    raise ValueError(f"no encoder for input kind {kind!r}")


def build_model_for(cfg: Config, data: DataSplits) -> MultimodalModel:
    encoders = {u: encoder_spec(cfg, spec.kind, tuple(spec.shape)) for u, spec in data.modalities.items()}
    return build_model(encoders, cfg.fusion, data.num_classes)


def loader_workers(cfg: Config) -> int:
    """Data-loader workers: `cfg.num_workers`, or for -1 one per CPU of this process beyond the
    first (at most 8). The CPUs are `cfg.threads`, else torch's thread count, which a Ray trial
    sets to its --cpus-per-trial: a trial's loader is sized from the trial's CPUs."""
    if cfg.num_workers >= 0:
        return cfg.num_workers
    cpus = cfg.threads or torch.get_num_threads()
    return max(0, min(8, cpus - 1))


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer):
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None


class Trainer:
    """Owns one seed's model, method, optimizer and epoch counter; `fit` trains it.
    `state_dict` / `load_state_dict` hold everything a run needs to continue exactly
    (weights, optimizer, schedule, best epoch, history, random states)."""

    def __init__(self, cfg: Config, seed: int, data: DataSplits | None = None,
                 device: torch.device | None = None, progress: bool = False):
        self.cfg, self.seed, self.progress = cfg, seed, progress
        self.device = device or resolve_device(cfg.device)
        if cfg.threads:  # on a shared CPU, fewer threads than cores avoids oversubscription stalls
            torch.set_num_threads(cfg.threads)
        seed_everything(seed)
        self.data = data if data is not None else build_datasets(cfg)
        self.model = build_model_for(cfg, self.data).to(self.device)
        if cfg.channels_last:  # 4-D parameters in NHWC; convolutions then run (and return) NHWC
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.compile:  # in place: parameter names, state dicts and checkpoints stay the same
            for encoder in self.model.encoders.values():
                encoder.compile()
        self.num_workers = loader_workers(cfg)
        self.method = METHODS.get(cfg.method)(cfg)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.method.setup(self.model, self.optimizer)
        use_cuda = self.device.type == "cuda"
        self.amp_dtype = None
        if use_cuda and cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch = 0  # epochs completed
        self.best_epoch = -1
        self.best_val: dict[str, float] = {}
        self.best_model_state: dict | None = None
        self.history: list[dict[str, float]] = []

    # --- the training loop, top down -------------------------------------------------------
    def fit(self, max_epochs: int | None = None,
            on_epoch: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        """THE training loop: train from the current epoch (0 for a new Trainer, the saved one
        after `load_state_dict`) until `max_epochs` epochs are done, calling `on_epoch(metrics)`
        after each (the metrics of `step_epoch`: training and validation, never test).
        Returns the whole history, restored epochs included.

        `max_epochs` is a budget (default `cfg.epochs`): a trial that stops early trains the
        first epochs of the same run. It may not exceed `cfg.epochs`, the schedule's horizon:
        past it a cosine schedule would climb back up and AUG's cadence would no longer fit."""
        budget = self.cfg.epochs if max_epochs is None else int(max_epochs)
        if budget > self.cfg.epochs:
            raise ValueError(f"max_epochs {budget} exceeds the {self.cfg.epochs} epochs of the schedule "
                             f"(cfg.epochs); train a configuration with epochs >= {budget} instead")
        while self.epoch < budget:
            metrics = self.step_epoch()
            if on_epoch is not None:
                on_epoch(metrics)
        return list(self.history)

    def step_epoch(self) -> dict[str, float]:
        """Train one epoch, evaluate on validation, track the best epoch. Never reads test."""
        metrics = self.train_epoch()
        val = self.evaluate("val")
        self.epoch += 1
        metrics.update({f"val_{k}": v for k, v in val.items()})
        metrics["epoch"] = self.epoch
        if self.best_epoch < 0 or val["acc"] > self.best_val["acc"]:
            self.best_epoch, self.best_val = self.epoch, val
            self.best_model_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        metrics["best_val_acc"] = self.best_val["acc"]
        self.history.append(metrics)
        return metrics

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training split, then one step of the learning-rate schedule.
        Returns the mean training loss and the method's counts summed over the epoch (e.g.
        `reshaped/audio`, the paper's Figure 3a)."""
        self.model.train()
        self.method.on_epoch_start(self.model, self.epoch)
        totals: dict[str, float] = {}
        seen, loss_sum = 0, 0.0
        batches = self.loader("train")
        if self.progress:
            from tqdm import tqdm
            batches = tqdm(batches, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", leave=False)
        for inputs, labels in batches:
            result = self.train_step(inputs, labels)
            n = len(labels)
            seen += n
            loss_sum += result.loss.item() * n
            for key, value in result.stats.items():
                totals[key] = totals.get(key, 0.0) + value
        if self.scheduler is not None:
            self.scheduler.step()
        return {"train_loss": loss_sum / max(seen, 1), **totals}

    def train_step(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> StepResult:
        """One training step on a batch as the loader yields it."""
        inputs, labels = self.to_device(inputs, labels)
        result = self.forward(inputs, labels)
        self.backward(result.loss)
        self.optimizer_step()
        return result

    # --- a training step's pieces, public so that a benchmark can time each one --------
    def to_device(self, inputs: dict[str, torch.Tensor],
                  labels: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """A batch moved to the Trainer's device (asynchronously from pinned memory on CUDA)."""
        nb = self.device.type == "cuda"
        moved = {u: x.to(self.device, non_blocking=nb) for u, x in inputs.items()}
        return moved, labels.to(self.device, non_blocking=nb)

    def autocast(self) -> ContextManager:
        """Mixed precision on CUDA with `cfg.amp` (bf16 where supported, else fp16); else nothing."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def forward(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> StepResult:
        """The method's loss on one batch already on the device: the one method-specific call
        (`Method.training_step`, e.g. BMLR's label reshaping). A non-finite loss raises
        FloatingPointError naming the settings that led to it, before any weight changes."""
        with self.autocast():
            result = self.method.training_step(self.model, inputs, labels)
        if not torch.isfinite(result.loss):
            raise FloatingPointError(
                f"training loss became {result.loss.item()} at epoch {self.epoch + 1} "
                f"(method {self.cfg.method}, lr {self.cfg.lr}, alpha {self.cfg.alpha}, beta {self.cfg.beta})")
        return result

    def backward(self, loss: torch.Tensor) -> None:
        """Fresh gradients of `loss` (scaled for fp16, then unscaled), then the method's
        gradient hook (`Method.after_backward`, e.g. OGM-GE's modulation)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        self.method.after_backward(self.model)

    def optimizer_step(self) -> None:
        """The optimizer's update (skipped by the fp16 scaler on overflow)."""
        self.scaler.step(self.optimizer)
        self.scaler.update()

    # --- data and evaluation ---------------------------------------------------------------
    def loader(self, split: str) -> DataLoader:
        """The DataLoader of one split (`train`, `val`, `test`); only training shuffles."""
        dataset = getattr(self.data, split)
        train = split == "train"
        # the shuffle order depends only on (seed, epoch), so a resumed run sees the same batches
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch) if train else None
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=train, generator=generator,
                          num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    @torch.no_grad()
    def predict(self, split: str):
        """Fused logits, unimodal logits and labels of a whole split (float32, CPU)."""
        self.model.eval()
        fused, unimodal, all_labels = [], {}, []
        for inputs, labels in self.loader(split):
            inputs, labels = self.to_device(inputs, labels)
            with self.autocast():
                f, uni = self.method.predict(self.model, inputs)
            fused.append(f.float().cpu())
            for u, z in uni.items():
                unimodal.setdefault(u, []).append(z.float().cpu())
            all_labels.append(labels.cpu())
        return (torch.cat(fused), {u: torch.cat(z) for u, z in unimodal.items()}, torch.cat(all_labels))

    def evaluate(self, split: str) -> dict[str, float]:
        """Accuracy, macro-F1, per-modality accuracy, imbalance ratio and loss on one split."""
        fused, unimodal, labels = self.predict(split)
        metrics = classification_metrics(fused, unimodal, labels, self.data.num_classes)
        metrics["loss"] = torch.nn.functional.cross_entropy(fused, labels).item()
        return metrics

    def load_best(self) -> None:
        """The weights of the best validation epoch so far, back into the model."""
        if self.best_model_state is not None:
            self.model.load_state_dict(self.best_model_state)

    # --- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
            "best_val": self.best_val,
            "best_model_state": self.best_model_state,
            "history": self.history,
            "rng": {"python": random.getstate(), "numpy": numpy_rng_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.best_epoch, self.best_val = state["best_epoch"], state["best_val"]
        self.best_model_state = state["best_model_state"]
        self.history = state["history"]
        rng = state["rng"]
        random.setstate(rng["python"])
        set_numpy_rng_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def numpy_rng_state() -> tuple:
    """NumPy's global random state in plain types (a list, not an array), so that a state file
    loads with ``torch.load(weights_only=True)``: restoring a trial unpickles no object."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, keys.tolist(), int(pos), int(has_gauss), float(cached)


def set_numpy_rng_state(state: tuple) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)
