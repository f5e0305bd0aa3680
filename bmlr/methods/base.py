"""The method interface: what a balancing method does to one training batch.

A method turns (model, inputs, labels) into one scalar loss whose single
backward pass gives every parameter group the gradient the method intends.
Methods that must touch gradients after the backward pass (gradient
modulation) override `after_backward`. Trainers know nothing else about them.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from bmlr.methods.args import NoArgs, arg_defaults, parse_args
from bmlr.registry import Registry

__all__ = ["METHODS", "METHOD_SPECIFIC_KEYS", "METHOD_READS", "Method", "StepResult", "method_defaults",
           "resolved_method_args", "soft_cross_entropy", "hard_cross_entropy", "detached", "probe_unimodal_logits"]

METHODS: Registry[type["Method"]] = Registry("method")

#: Config keys that only some methods read (the label-reshaping family's alpha and beta); each
#: method says which of them it reads in ``Method.reads``, and a method's search space drops the
#: others, so no trial budget goes to a knob without effect.
METHOD_SPECIFIC_KEYS = ("alpha", "beta")


def method_defaults(method: str) -> dict[str, Any]:
    """The ``method_args`` defaults of ``method`` (its authors' values), by argument name."""
    return METHODS.get(method).defaults()


def resolved_method_args(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """The `method_args` a run of `method` trains with: the method's defaults, then `given`.
    A run records these (results.json), so that a later change of a default is not mistaken
    for the same run (`tune.py compare --reuse`)."""
    return {**method_defaults(method), **given}


class MethodReads(Mapping):
    """``{method name: the METHOD_SPECIFIC_KEYS it reads}`` for every registered method: a
    read-only view of each class's ``reads`` (a method registered later appears too)."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return METHODS.get(name).reads

    def __iter__(self) -> Iterator[str]:
        return iter(METHODS.names())

    def __len__(self) -> int:
        return len(METHODS.names())


METHOD_READS = MethodReads()


@dataclass
class StepResult:
    loss: Tensor  # scalar, the one tensor the trainer backpropagates
    fused_logits: Tensor  # detached, [B, C]
    unimodal_logits: dict[str, Tensor]  # detached, modality -> [B, C]
    stats: dict[str, float] = field(default_factory=dict)  # summed over the batch, e.g. "reshaped/audio"
    losses: dict[str, Tensor] = field(default_factory=dict)  # the parts of `loss`: "fused", one per modality


class Method:
    """Base class. A subclass is registered by name with ``@METHODS.register(name)`` and says:

    * ``reads``: which of ``METHOD_SPECIFIC_KEYS`` (Config ``alpha``, ``beta``) it reads; a
      method that does not say is taken to read them all;
    * ``Args``: a frozen dataclass of its ``method_args``, with defaults and checks
      (:mod:`bmlr.methods.args`); ``self.args`` is the instance built from ``cfg.method_args``;
    * ``reading``: where its paper or code is ambiguous, the reading trained by default and the
      ``method_args`` that give the others (comparison tables print it under their rows).
    """

    reads: tuple[str, ...] = METHOD_SPECIFIC_KEYS
    Args: type = NoArgs
    # where the method's source is ambiguous: the reading we train by default and the method_args
    # that give the others (printed under comparison tables); empty where there is no choice
    reading: str = ""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.args = self.parse_args(cfg.method_args, cfg.method)

    @classmethod
    def parse_args(cls, given: dict[str, Any], method: str = "") -> Any:
        """``given`` (a config's ``method_args``) as this method's ``Args``; ``ValueError``
        naming the first unknown or invalid key."""
        return parse_args(cls.Args, given, method or cls.__name__)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{argument: default}`` of this method's ``Args``."""
        return arg_defaults(cls.Args)

    def setup(self, model, optimizer) -> None:
        """Called once after the optimizer is built (methods that add learners add them here)."""

    def training_step(self, model, inputs: dict[str, Tensor], labels: Tensor) -> StepResult:
        raise NotImplementedError

    def predict(self, model, inputs: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Fused and unimodal logits at evaluation time."""
        return model(inputs)

    def state_dict(self) -> dict[str, Any]:
        """Method state that a checkpoint must keep (added learners, running statistics)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def after_backward(self, model) -> None:
        """Hook between backward and optimizer step (gradient modulation methods)."""

    def on_epoch_start(self, model, epoch: int) -> None:
        """Hook at the start of each training epoch (methods with schedules)."""


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of -sum_c target_c log softmax(logits)_c (equation 10)."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def hard_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), labels)


def detached(features: dict[str, Tensor]) -> dict[str, Tensor]:
    return {u: z.detach() for u, z in features.items()}


def probe_unimodal_logits(model, features: dict[str, Tensor], labels: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Unimodal logits for monitoring, for methods that train no unimodal path.

    Concat and sum read them off the decision layer (equation 3), which costs
    nothing and needs no loss. FiLM and gated have separate unimodal heads; they
    are trained here as linear probes on detached features, so they report each
    modality's accuracy without changing what the encoders or the fused head learn.
    """
    fusion = model.fusion
    if not fusion.separate_unimodal_heads:
        with torch.no_grad():
            return fusion.unimodal_logits(detached(features)), labels.new_zeros((), dtype=torch.float32)
    logits = fusion.unimodal_logits(detached(features))
    loss = sum(hard_cross_entropy(z, labels) for z in logits.values())
    return logits, loss
