"""UDI: unidirectional dynamic interaction.

Wang, Zhang, Liang, Qian and Hu, "Balanced Multimodal Learning: An
Unidirectional Dynamic Interaction Perspective", arXiv 2509.02281 (abstract
in ``shared/papers``). No code is public, and only the abstract was
available. This module is our reading of the abstract, and every concrete
rule below is our choice. The abstract says:

  * UDI drops the multimodal joint loss for a "proactive, sequential"
    scheme;
  * it "first trains the anchor modality to convergence";
  * then "uses its learned representations to guide the other modality via
    unsupervised loss";
  * "dynamic adjustment of modality interactions" adapts how strongly the
    modalities interact.

Our reading:

**Phase 1 (anchor).** Only the anchor's encoder and its unimodal classifier
train, on ``CE(unimodal^anchor, y)``. The unimodal classifier is the
``W^anchor`` block and ``b/|M|`` of the decision layer for concat/sum, or
the anchor's separate head for film/gated. The other encoders are not even
run, so their weights and BatchNorm statistics stay untouched. The fusion
checks every modality, so their feature slots are filled with zeros; zeros
do not change the anchor's unimodal logits for any of our fusions.

**Switching phases.** Phase 1 ends at the start of epoch ``e`` if
``e >= anchor_epochs``, or earlier if the anchor's epoch-mean training loss
has plateaued: ``plateau_patience`` epochs in a row without beating the best
loss so far by a relative ``plateau_min_delta``. ``plateau_patience = 0``
turns the plateau test off. "Convergence" is read as the training loss
plateauing, with a hard cap. A ResNet's training loss on CREMA-D keeps
falling for a long time, so the cap usually decides. The switch happens in
``on_epoch_start``. The phase, the switch epoch, the loss history and the
loss sums of the epoch in progress are in ``state_dict``, so resuming from a
checkpoint lands in the same phase and keeps the same plateau test.

**Phase 2 (guided).** The anchor is frozen: its features are computed
without gradient, and its encoder is put in eval mode at each epoch start,
so BatchNorm statistics are frozen too. Set ``freeze_anchor = False`` to keep
training it on its own CE instead. Each other modality ``u`` is trained on

    L_u = guided_ce_weight * CE(unimodal^u, y) + lambda_u * D(anchor -> u)

* ``D``, the unsupervised guidance loss, uses no labels. The default
  ``consistency = "kl"`` is ``T^2 * KL(softmax(anchor/T) || softmax(u/T))``
  between the frozen anchor's unimodal logits and modality ``u``'s.
  ``"cosine"`` is ``1 - cos(z^u, z^anchor)`` on the encoder features, the
  literal "representations" reading, which needs equal feature sizes.
* ``lambda_u`` is the dynamic weight:
  ``consistency_weight * clamp(1 - s_u / s_anchor, 0, 1)``, where ``s`` is
  the batch-mean true-class probability of each unimodal classifier,
  detached. Guidance is strong while ``u`` lags the anchor and fades to zero
  once ``u`` has caught up. The labels enter only this weight, never ``D``.
* The supervised CE on ``u`` keeps the guided modality learning the task.
  The abstract does not say it has one; set ``guided_ce_weight = 0`` for
  pure guidance.
* The unimodal logits use detached decision weights, so ``L_u`` reaches only
  encoder ``u`` (and its separate head for film/gated). The fusion head
  learns from ``CE(fusion(sg(z)), y)`` on detached features. A prediction
  needs a trained fused head, and because no gradient of this loss reaches
  an encoder, it brings back no joint-loss competition.

With more than two modalities, every non-anchor modality is guided by the
anchor at the same time in phase 2 (one direction: anchor -> others). The
anchor defaults to the first modality in order (``anchor = None``). That is
audio for the audio-visual data sets, where audio usually dominates, and
text for MOSI/MOSEI.

**Prediction.** ``predict`` is the model's own (fused, unimodal) logits in
both phases, so best-model restore, which brings back only the weights,
always evaluates what was validated. In phase 1 the fused head of film/gated
is untrained. For concat/sum the anchor's block is trained, so the fused
prediction is roughly the anchor's.

**Defaults.** They are our choices, not published values: ``anchor_epochs =
30`` (of the paper-default 70 epochs), ``plateau_patience = 3``,
``plateau_min_delta = 0.01``, ``consistency_weight = 1``, ``temperature = 1``.

Stats per batch: ``udi_phase`` (the phase times the batch size),
``udi_lambda/u`` (the dynamic weight times the batch size), in phase 2.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bmlr.methods.args import require
from bmlr.methods.base import METHODS, Method, StepResult, detached, hard_cross_entropy

CONSISTENCY = ("kl", "cosine")


def dynamic_weight(anchor_logits: Tensor, guided_logits: Tensor, labels: Tensor, scale: float) -> float:
    """``scale * clamp(1 - s_u / s_anchor, 0, 1)``, where ``s`` is the batch-mean true-class probability."""
    with torch.no_grad():
        s_a = torch.softmax(anchor_logits.detach().float(), -1).gather(1, labels[:, None]).mean()
        s_u = torch.softmax(guided_logits.detach().float(), -1).gather(1, labels[:, None]).mean()
        return float(scale * torch.clamp(1.0 - s_u / s_a.clamp_min(1e-12), 0.0, 1.0))


def kl_consistency(anchor_logits: Tensor, guided_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 * KL(softmax(anchor/T) || softmax(guided/T))``, batch mean. The anchor is a fixed target."""
    t = float(temperature)
    target = torch.log_softmax(anchor_logits.detach().float() / t, dim=-1)
    log_q = torch.log_softmax(guided_logits.float() / t, dim=-1)
    return F.kl_div(log_q, target, reduction="batchmean", log_target=True) * t * t


def cosine_consistency(anchor_features: Tensor, guided_features: Tensor) -> Tensor:
    if anchor_features.shape[-1] != guided_features.shape[-1]:
        raise ValueError("udi: consistency='cosine' needs equal feature sizes; "
                         f"got {anchor_features.shape[-1]} and {guided_features.shape[-1]} (use 'kl')")
    cos = F.cosine_similarity(guided_features.float(), anchor_features.detach().float(), dim=-1)
    return (1.0 - cos).mean()


def plateaued(history: list[float], patience: int, min_delta: float) -> bool:
    """True when the last ``patience`` epochs did not beat the earlier best by a relative ``min_delta``."""
    if patience <= 0 or len(history) <= patience:
        return False
    best = min(history[:-patience])
    return all(h > best * (1.0 - min_delta) for h in history[-patience:])


@METHODS.register("udi")
class UDI(Method):
    """Anchor modality first (phase 1), then the others guided by it through an unsupervised loss (phase 2)."""

    reads = ()

    @dataclass(frozen=True)
    class Args:
        """The ``method_args`` of udi (see the module docstring for each choice).

        Args:
            anchor: the anchor modality (None: the first in order).
            anchor_epochs: the latest epoch at which phase 2 starts, >= 0.
            plateau_patience: epochs without a relative improvement that end phase 1, >= 0 (0: off).
            plateau_min_delta: the relative improvement of the anchor's loss that counts.
            consistency: the guidance loss, ``"kl"`` (logits) or ``"cosine"`` (features).
            consistency_weight: scale of the dynamic weight ``lambda_u``, >= 0.
            temperature: ``T`` of the KL guidance, > 0.
            guided_ce_weight: weight of a guided modality's own CE, >= 0 (0: pure guidance).
            freeze_anchor: freeze the anchor in phase 2 (False: keep training it on its CE).
        """

        anchor: str | None = None
        anchor_epochs: int = 30
        plateau_patience: int = 3
        plateau_min_delta: float = 0.01
        consistency: str = "kl"
        consistency_weight: float = 1.0
        temperature: float = 1.0
        guided_ce_weight: float = 1.0
        freeze_anchor: bool = True

        def __post_init__(self) -> None:
            require(self.consistency in CONSISTENCY, "consistency", f"one of {CONSISTENCY}", self.consistency)
            require(self.anchor_epochs >= 0, "anchor_epochs", ">= 0", self.anchor_epochs)
            require(self.plateau_patience >= 0, "plateau_patience", ">= 0", self.plateau_patience)
            require(self.temperature > 0, "temperature", "> 0", self.temperature)
            require(self.consistency_weight >= 0, "consistency_weight", ">= 0", self.consistency_weight)
            require(self.guided_ce_weight >= 0, "guided_ce_weight", ">= 0", self.guided_ce_weight)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.phase = 1
        self.switch_epoch: int | None = None
        self.history: list[float] = []  # anchor's epoch-mean training loss in phase 1
        self._loss_sum = 0.0
        self._loss_n = 0

    def anchor_of(self, model) -> str:
        anchor = self.args.anchor or model.modalities[0]
        if anchor not in model.modalities:
            raise ValueError(f"udi: anchor {anchor!r} is not one of {model.modalities}")
        return anchor

    # --- schedule ---------------------------------------------------------------------
    def on_epoch_start(self, model, epoch: int) -> None:
        if self.phase == 1:
            if self._loss_n > 0:
                self.history.append(self._loss_sum / self._loss_n)
            self._loss_sum, self._loss_n = 0.0, 0
            if epoch >= self.args.anchor_epochs or plateaued(
                    self.history, self.args.plateau_patience, self.args.plateau_min_delta):
                self.phase, self.switch_epoch = 2, int(epoch)
        if self.phase == 2 and self.args.freeze_anchor:
            model.encoders[self.anchor_of(model)].eval()

    # --- training -----------------------------------------------------------------------
    def training_step(self, model, inputs, labels) -> StepResult:
        if self.phase == 1:
            return self._anchor_step(model, inputs, labels)
        return self._guided_step(model, inputs, labels)

    def _anchor_step(self, model, inputs, labels) -> StepResult:
        anchor = self.anchor_of(model)
        z = model.encoders[anchor](inputs[anchor])
        features = {u: z if u == anchor else z.new_zeros(z.shape[0], model.fusion.feature_dims[u])
                    for u in model.modalities}
        logits = model.fusion.unimodal_logits(features)[anchor]  # head attached: trains W^anchor / its own head
        loss = hard_cross_entropy(logits, labels)
        self._loss_sum += float(loss.detach()) * len(labels)
        self._loss_n += len(labels)
        with torch.no_grad():
            fused = model.fusion(detached(features))
        return StepResult(loss, fused.detach(), {anchor: logits.detach()},
                          {"udi_phase": 1.0 * len(labels)}, {anchor: loss})

    def _guided_step(self, model, inputs, labels) -> StepResult:
        anchor = self.anchor_of(model)
        frozen = self.args.freeze_anchor
        features = {}
        for u in model.modalities:
            with torch.no_grad() if (frozen and u == anchor) else nullcontext():
                features[u] = model.encoders[u](inputs[u])
        fused = model.fusion(detached(features))  # the head learns on detached features
        unimodal = model.fusion.unimodal_logits(features, detach_head=True)
        anchor_logits = unimodal[anchor].detach()
        losses = {"fused": hard_cross_entropy(fused, labels)}
        stats = {"udi_phase": 2.0 * len(labels)}
        if not frozen:
            losses[anchor] = hard_cross_entropy(unimodal[anchor], labels)
        scale, kind = self.args.consistency_weight, self.args.consistency
        for u in model.modalities:
            if u == anchor:
                continue
            lam = dynamic_weight(anchor_logits, unimodal[u], labels, scale)
            if kind == "kl":
                guide = kl_consistency(anchor_logits, unimodal[u], self.args.temperature)
            else:
                guide = cosine_consistency(features[anchor], features[u])
            losses[u] = self.args.guided_ce_weight * hard_cross_entropy(unimodal[u], labels) + lam * guide
            stats[f"udi_lambda/{u}"] = lam * len(labels)
        return StepResult(sum(losses.values()), fused.detach(), {u: z.detach() for u, z in unimodal.items()},
                          stats, losses)

    # --- checkpoint state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "switch_epoch": self.switch_epoch, "history": list(self.history),
                "loss_sum": self._loss_sum, "loss_n": self._loss_n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase = int(state.get("phase", 1))
        self.switch_epoch = state.get("switch_epoch")
        self.history = [float(h) for h in state.get("history", [])]
        self._loss_sum = float(state.get("loss_sum", 0.0))
        self._loss_n = int(state.get("loss_n", 0))
