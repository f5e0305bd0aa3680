"""UDI: unidirectional dynamic interaction (our own construction from an abstract).

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
train, on ``CE(unimodal^anchor, y)`` (every modality on its own CE under
``anchor_by = "confidence"``, see below). The unimodal classifier is the
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
anchor at the same time in phase 2 (one direction: anchor -> others).

**Which modality is the anchor.** The abstract does not say; a strong
anchor guiding a weaker modality is the natural reading. ``anchor`` names it
outright. Otherwise ``anchor_by`` decides:

* ``"order"`` (the behaviour before issue 17): the first modality
  in order: audio for the audio-visual data sets, text for MOSI/MOSEI. On
  AV-MNIST, where vision dominates, that makes the WEAKER modality the
  anchor. Phase 1 trains only it.
* ``"confidence"`` (default): the modality with the highest running confidence,
  chosen at the switch point: phase 1 then trains every modality on its own
  CE (separate encoders and unimodal classifiers, no joint loss, no
  interaction; this departs from "first trains the anchor modality"), a
  `bmlr.reshaping.RunningConfidence` keeps each one's mean true-class
  probability over the last phase-1 epoch, the plateau test watches the
  current leader's loss, and at the switch the leader becomes the anchor
  (the first modality if no epoch was trained). It stays fixed afterwards
  and is kept in ``state_dict``.

"confidence" is the default because it is the reading we would defend (issue 17: the
anchor should be the stronger modality); ``anchor_by: order`` reproduces earlier results.

**The anchor's target in phase 2.** The anchor's unimodal logits are
``W^anchor z^anchor + b/|M|`` for concat/sum, and the fused loss keeps
training ``W`` and ``b`` in phase 2, so a target read off the live head
drifts although the anchor's encoder is frozen. ``anchor_target = "frozen"``
(default) takes a copy of the fusion module (the anchor's head and whatever
it needs) at the switch point and reads the guidance target from it; the
copy has no gradient, is not in the optimizer, and is kept in
``state_dict``. ``"live"`` is the behaviour before issue 17 (it is also
what ``freeze_anchor = False`` uses, the anchor then training on).

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

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmlr.methods.args import require
from bmlr.methods.base import METHODS, Method, StepResult, detached, hard_cross_entropy
from bmlr.reshaping import RunningConfidence

CONSISTENCY = ("kl", "cosine")
ANCHOR_BY = ("order", "confidence")
ANCHOR_TARGETS = ("frozen", "live")


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
    reading = ("the anchor is the modality with the higher running confidence (`anchor_by: confidence`; `order`: the "
               "first modality) and its target is frozen at the switch; no published anchor rule")

    @dataclass(frozen=True)
    class Args:
        """The ``method_args`` of udi (see the module docstring for each choice).

        Args:
            anchor: the anchor modality (None: chosen by ``anchor_by``).
            anchor_by: how the anchor is chosen when ``anchor`` is None, one of ``ANCHOR_BY``:
                "order" (the first modality) or "confidence" (the most confident at the switch).
            anchor_target: the guidance target in phase 2, one of ``ANCHOR_TARGETS``: "frozen" (a
                copy of the fusion taken at the switch) or "live" (the model's own, drifting, head).
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
        anchor_by: str = "confidence"
        anchor_target: str = "frozen"
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
            require(self.anchor_by in ANCHOR_BY, "anchor_by", f"one of {ANCHOR_BY}", self.anchor_by)
            require(self.anchor_target in ANCHOR_TARGETS, "anchor_target", f"one of {ANCHOR_TARGETS}",
                    self.anchor_target)
            require(self.anchor_epochs >= 0, "anchor_epochs", ">= 0", self.anchor_epochs)
            require(self.plateau_patience >= 0, "plateau_patience", ">= 0", self.plateau_patience)
            require(self.temperature > 0, "temperature", "> 0", self.temperature)
            require(self.consistency_weight >= 0, "consistency_weight", ">= 0", self.consistency_weight)
            require(self.guided_ce_weight >= 0, "guided_ce_weight", ">= 0", self.guided_ce_weight)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.phase = 1
        self.switch_epoch: int | None = None
        self.anchor: str | None = None  # fixed at the switch to phase 2
        self.histories: dict[str, list[float]] = {}  # epoch-mean training loss per modality in phase 1
        self.confidence = RunningConfidence()  # mean true-class probability per modality in phase 1
        self._loss_sums: dict[str, float] = {}
        self._loss_n = 0
        self._frozen: nn.Module | None = None  # the fusion as it was at the switch ("frozen" target)
        self._frozen_state: dict[str, Any] | None = None  # a checkpoint's copy, built on first use

    @property
    def history(self) -> list[float]:
        """The phase-1 loss history of the anchor (or of the first modality trained)."""
        if self.anchor is not None:
            return self.histories.get(self.anchor, [])
        return next(iter(self.histories.values()), [])

    def anchor_of(self, model) -> str:
        """The anchor: the one chosen at the switch, else the named one, else the candidate so far."""
        if self.anchor is not None:
            return self.anchor
        anchor = self.args.anchor
        if anchor is None:
            order = self.confidence.order() if self.args.anchor_by == "confidence" else None
            anchor = order[0] if order else model.modalities[0]
        if anchor not in model.modalities:
            raise ValueError(f"udi: anchor {anchor!r} is not one of {model.modalities}")
        return anchor

    def phase_one_modalities(self, model) -> list[str]:
        """Who trains in phase 1: every modality while the anchor is still to be chosen by
        confidence, else the anchor alone."""
        if self.args.anchor is None and self.args.anchor_by == "confidence":
            return list(model.modalities)
        return [self.anchor_of(model)]

    # --- schedule ---------------------------------------------------------------------
    def on_epoch_start(self, model, epoch: int) -> None:
        if self.phase == 1:
            if self._loss_n > 0:
                for u, total in self._loss_sums.items():
                    self.histories.setdefault(u, []).append(total / self._loss_n)
            self._loss_sums, self._loss_n = {}, 0
            self.confidence.end_epoch()
            candidate = self.anchor_of(model)
            if epoch >= self.args.anchor_epochs or plateaued(
                    self.histories.get(candidate, []), self.args.plateau_patience, self.args.plateau_min_delta):
                self.phase, self.switch_epoch, self.anchor = 2, int(epoch), candidate
                if self.frozen_target():
                    self._frozen = self._snapshot(model)
        if self.phase == 2 and self.args.freeze_anchor:
            model.encoders[self.anchor_of(model)].eval()

    def frozen_target(self) -> bool:
        """Whether phase 2 guides with the fusion copy taken at the switch (a frozen anchor only)."""
        return self.args.freeze_anchor and self.args.anchor_target == "frozen"

    @staticmethod
    def _snapshot(model, state: dict[str, Any] | None = None) -> nn.Module:
        frozen = copy.deepcopy(model.fusion)
        if state is not None:
            frozen.load_state_dict(state)
        frozen.requires_grad_(False)
        return frozen.eval()

    def anchor_logits(self, model, features: dict[str, Tensor]) -> Tensor:
        """The anchor's unimodal logits used as the guidance target (detached): from the copy of
        the fusion taken at the switch ("frozen"), or from the model's own head ("live")."""
        anchor = self.anchor_of(model)
        if not self.frozen_target():
            return model.fusion.unimodal_logits(detached(features), detach_head=True)[anchor].detach()
        if self._frozen is None:  # a checkpoint's copy, or (older checkpoints) a copy taken now
            self._frozen = self._snapshot(model, self._frozen_state)
        with torch.no_grad():
            return self._frozen.unimodal_logits(detached(features))[anchor]

    # --- training -----------------------------------------------------------------------
    def training_step(self, model, inputs, labels) -> StepResult:
        if self.phase == 1:
            return self._anchor_step(model, inputs, labels)
        return self._guided_step(model, inputs, labels)

    def _anchor_step(self, model, inputs, labels) -> StepResult:
        trained = self.phase_one_modalities(model)
        z = {u: model.encoders[u](inputs[u]) for u in trained}
        some = next(iter(z.values()))
        features = {u: z[u] if u in z else some.new_zeros(some.shape[0], model.fusion.feature_dims[u])
                    for u in model.modalities}
        unimodal = model.fusion.unimodal_logits(features)  # head attached: trains W^u / u's own head
        losses = {u: hard_cross_entropy(unimodal[u], labels) for u in trained}
        for u, loss in losses.items():
            self._loss_sums[u] = self._loss_sums.get(u, 0.0) + float(loss.detach()) * len(labels)
        self._loss_n += len(labels)
        self.confidence.update(labels, {u: unimodal[u] for u in trained})
        with torch.no_grad():
            fused = model.fusion(detached(features))
        return StepResult(sum(losses.values()), fused.detach(), {u: unimodal[u].detach() for u in trained},
                          {"udi_phase": 1.0 * len(labels)}, losses)

    def _guided_step(self, model, inputs, labels) -> StepResult:
        anchor = self.anchor_of(model)
        frozen = self.args.freeze_anchor
        features = {}
        for u in model.modalities:
            with torch.no_grad() if (frozen and u == anchor) else nullcontext():
                features[u] = model.encoders[u](inputs[u])
        fused = model.fusion(detached(features))  # the head learns on detached features
        unimodal = model.fusion.unimodal_logits(features, detach_head=True)
        anchor_logits = self.anchor_logits(model, features)
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
        frozen = self._frozen.state_dict() if self._frozen is not None else self._frozen_state
        return {"phase": self.phase, "switch_epoch": self.switch_epoch, "anchor": self.anchor,
                "histories": {u: list(h) for u, h in self.histories.items()},
                "loss_sums": dict(self._loss_sums), "loss_n": self._loss_n,
                "confidence": self.confidence.state_dict(), "frozen_fusion": frozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase = int(state.get("phase", 1))
        self.switch_epoch = state.get("switch_epoch")
        self.anchor = state.get("anchor")
        self.histories = {str(u): [float(x) for x in h] for u, h in state.get("histories", {}).items()}
        self._loss_sums = {str(u): float(x) for u, x in state.get("loss_sums", {}).items()}
        self._loss_n = int(state.get("loss_n", 0))
        self.confidence.load_state_dict(state.get("confidence", {}))
        self._frozen, self._frozen_state = None, state.get("frozen_fusion")
