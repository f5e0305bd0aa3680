"""AUG: sustained boosting with adaptive classifier assignment.

Jiang, Huang and Yang, "Rethinking Multimodal Learning from the Perspective of
Mitigating Classification Ability Disproportion", NeurIPS 2025, arXiv
2502.20120 (abstract in ``shared/papers``). The public code
(njustkmg/NeurIPS25-AUG: ``train_CREMAD.py``, ``model/AudioVideo.py``) was
read for the details. No code was copied from it.

Each modality ``u`` predicts with an additive ensemble:

    F_u = f_u + w * sum_k h_{u,k}(z^u)

Here ``f_u`` is the modality's base classifier (the unimodal logits of
equation 3) and ``h_{u,k}`` are boosting learners added over training.
Training uses unimodal losses only (AUG has no joint loss):

* a modality with no learner: ``L_u = CE(F_u, y)``;
* with ``K >= 1`` learners, ``prev = F_u - w h_{u,K}`` is the ensemble before
  the newest learner, and the loss is
  ``L_u = CE(F_u, y) + CE(prev, y) + softCE(w h_{u,K}, (1 - r * p_prev[y]) * onehot(y))``.
  The last term is the sustained-boosting residual: the newest learner fits
  the label minus ``r`` times the part the ensemble already gets right
  (``p_prev[y]`` is detached), so well-classified samples weigh less. As an
  identity, ``softCE(h, (1 - r p) y) = CE(h, y) - r * softCE(h, p*y)``, which
  is the public code's
  ``criterion(add_fea, y) - 0.5 * criterion(add_fea, y * softmax(o_fea))``.

Adaptive classifier assignment: during each epoch the method adds up
``s_u = sum softmax(F_u)[y]`` over the training batches. At a check (see
below), a new learner is given to the weaker modality if the score ratio
leaves the band ``target_ratio +- band``.

Where we had to choose:

* **Learners.** Each learner is a small classifier head,
  ``Linear(d_u, learner_hidden) -> ReLU -> Linear(learner_hidden, C)``. The
  first layer uses Xavier-normal weights and zero bias, as in the original,
  and ``learner_hidden`` is 256 as there. The original sends every learner
  through the modality-shared output layer ``fc_out``. Our decision layers
  are modality-specific blocks (concat/sum) or cross-modal (film/gated), so
  each learner has its own output layer. ``learner_weight`` is the
  original's ``w`` (default 1).
* **Base classifier ``f_u``.** It is ``fusion.unimodal_logits(features)``
  with the head attached: the ``W^u`` block with ``b/|M|`` for concat/sum,
  or the separate unimodal head for film/gated. It is trained by ``L_u``,
  like the original's shared ``fc_out``.
* **Fused prediction.** ``fused = sum_u m_u * F_u``. The weights ``m_u``
  default to 1; ``merge_weights`` takes a list in modality order. The
  original uses late fusion, ``0.4 * out_a + 0.6 * out_v`` for CREMA-D
  (``merge_alpha``). With unit weights and concat/sum, this is the model's
  own fused logits (which split exactly) plus every learner's output. For
  film/gated the fusion's cross-modal layers get no loss and are not used:
  AUG is a late-fusion method.
* **One backward per batch.** The original alternates an audio step and a
  visual step on every batch. We take one step on ``sum_u L_u`` (the
  project's contract). The modalities share only the decision layer's bias
  (``b/|M|``, concat/sum).
* **When to check.** The original checks after epoch ``e`` if ``e == 0`` or
  ``(e + 1) % check == 0``, with ``check = epochs // 10`` (1 for 10 epochs or
  fewer). ``check_every = 0`` (the default) uses that rule with
  ``cfg.epochs``; a positive value sets ``check`` directly. The check runs in
  ``on_epoch_start`` of the next epoch, on the scores of the epoch just
  trained, after that epoch was evaluated, as in the original.
* **Which modality is weaker.** With two modalities, ``ratio = s_1 / s_2`` in
  modality order. If ``ratio > target_ratio + band`` the second modality gets
  a learner; if ``ratio < target_ratio - band`` the first does. This is
  exactly the original (``lam`` = 1, band 0.01). With more modalities, the
  modality with the lowest ``s_u / mean_{w != u} s_w`` gets a learner if that
  ratio is below ``1 - band``. ``target_ratio`` must then be 1.
* **Optimizer: are the learners trained?** (``train_learner_hidden``) In the
  public code (``train_CREMAD.py``, ``model/AudioVideo.py``) the optimizer is
  built over ``model.parameters()`` before the loop, and ``add_layer``
  creates each new layer afterwards, so the new layers never join it: each
  learner's hidden layer keeps its Xavier init for good (a fixed random
  projection), while its output goes through the shared ``fc_out``, which
  does train; gradients still reach the encoder through the frozen layer.
  The abstract describes "a sustained boosting algorithm ... simultaneously
  optimizing the classification and residual errors", i.e. learners that
  learn, so we read the public code's omission as a bug and fix it by
  default (``train_learner_hidden = True``): a learner joins the optimizer
  with ``optimizer.add_param_group`` when it is activated, copying the
  hyperparameters of group 0, including the current lr. This changes the
  method; ``train_learner_hidden = False`` reproduces the public code: the
  hidden layer's parameters get ``requires_grad = False`` and only the
  learner's own output layer (our stand-in for the shared ``fc_out``) joins
  the optimizer. With ``schedule="step"`` or ``"none"`` a learner's lr
  follows the others exactly. torch's ``CosineAnnealingLR`` only updates the
  groups it was built with, so under ``schedule="cosine"`` a learner keeps
  the lr it joined with.
* **Checkpoints and best-model restore.** ``max_learners`` slots per
  modality are built in ``setup``. They live in an ``nn.Module`` attached at
  ``model.fusion.aug_learners``, with a buffer ``active`` that holds the
  number of active learners per modality. So ``model.state_dict()`` always
  has the same keys. A checkpoint or the Trainer's best-model copy carries
  both the learners and their count, and ``load_best`` gets back the
  ensemble of the best epoch with no help from the method. Attaching the
  learners to the fusion module keeps ``model.parameter_groups()`` a
  partition; the learners fall in the ``"head"`` group. The method's own
  ``state_dict`` holds the order in which learners joined the optimizer,
  plus the running scores. ``Trainer.load_state_dict`` loads the model, then
  the method, then the optimizer, so the method re-adds the param groups in
  their original order before the optimizer state is loaded. Slots that are
  not active get no gradient and are not in the optimizer. Once all
  ``max_learners`` slots of a modality are used, it gets no more learners.
  The default of 10 is never reached under the original schedule, which
  checks at most about 11 times. To load a saved AUG model outside the
  Trainer, build the method and call ``setup`` before ``load_state_dict``.

Stats per batch: ``aug_score/u`` is the batch part of ``s_u``; the epoch
total is the score used for the assignment.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmlr.methods.args import require
from bmlr.methods.base import METHODS, Method, StepResult, hard_cross_entropy, soft_cross_entropy

ATTRIBUTE = "aug_learners"


def _make_learner(in_dim: int, hidden: int, num_classes: int) -> nn.Sequential:
    first = nn.Linear(in_dim, hidden)
    nn.init.xavier_normal_(first.weight)
    nn.init.zeros_(first.bias)
    return nn.Sequential(first, nn.ReLU(), nn.Linear(hidden, num_classes))


class BoostingLearners(nn.Module):
    """``slots`` learners per modality; the buffer ``active[i]`` says how many of modality i's are in use."""

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_classes: int,
                 slots: int, hidden: int):
        super().__init__()
        self.modalities = list(modalities)
        self.learners = nn.ModuleDict({
            u: nn.ModuleList([_make_learner(feature_dims[u], hidden, num_classes) for _ in range(slots)])
            for u in self.modalities
        })
        self.register_buffer("active", torch.zeros(len(self.modalities), dtype=torch.long))

    def counts(self) -> dict[str, int]:
        return dict(zip(self.modalities, (int(c) for c in self.active.tolist())))

    def outputs(self, u: str, z: Tensor, count: int) -> list[Tensor]:
        return [self.learners[u][k](z) for k in range(count)]


def boosting_loss(base: Tensor, learner_outputs: list[Tensor], labels: Tensor,
                  residual_weight: float) -> tuple[Tensor, Tensor]:
    """``(L_u, F_u)`` for one modality, where ``learner_outputs`` are the learners' weighted outputs, oldest first."""
    ensemble = base + sum(learner_outputs) if learner_outputs else base
    loss = hard_cross_entropy(ensemble, labels)
    if learner_outputs:
        newest = learner_outputs[-1]
        prev = base + sum(learner_outputs[:-1]) if len(learner_outputs) > 1 else base
        with torch.no_grad():
            p_prev = torch.softmax(prev.detach().float(), dim=-1).gather(1, labels[:, None])  # [B, 1]
            residual = F.one_hot(labels, base.shape[-1]).float() * (1.0 - residual_weight * p_prev)
        loss = loss + hard_cross_entropy(prev, labels) + soft_cross_entropy(newest, residual)
    return loss, ensemble


def weak_modality(scores: dict[str, float], target_ratio: float = 1.0, band: float = 0.01) -> str | None:
    """The modality that gets the next learner, or None while the scores are inside the band."""
    mods = list(scores)
    if len(mods) < 2:
        return None
    if len(mods) == 2:
        a, b = mods
        ratio = scores[a] / max(scores[b], 1e-12)
        if ratio > target_ratio + band:
            return b
        if ratio < target_ratio - band:
            return a
        return None
    ratios = {}
    for u in mods:
        others = [scores[w] for w in mods if w != u]
        ratios[u] = scores[u] / max(sum(others) / len(others), 1e-12)
    weakest = min(mods, key=lambda u: ratios[u])
    return weakest if ratios[weakest] < 1.0 - band else None


def _weights(w: Any) -> tuple[float, ...] | dict[str, float] | None:
    """``merge_weights`` with every weight a float (tuple for a list); ValueError otherwise."""
    values = list(w.values()) if isinstance(w, dict) else w
    numbers = isinstance(values, (list, tuple)) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)
    require(w is None or numbers, "merge_weights",
            "a list of numbers in modality order, a mapping modality -> number, or null", w)
    if w is None:
        return None
    if isinstance(w, dict):
        return {str(u): float(x) for u, x in w.items()}
    return tuple(float(x) for x in w)


@METHODS.register("aug")
class AUG(Method):
    """Sustained boosting: the weaker modality gets extra classifier heads, each fitting the ensemble's residual."""

    reads = ()
    reading = ("the boosting learners' hidden layers are trained (`train_learner_hidden: true`); the public code's "
               "optimizer leaves them out")

    @dataclass(frozen=True)
    class Args:
        """The ``method_args`` of aug (see the module docstring for each choice).

        Args:
            learner_hidden: hidden width of each boosting learner, >= 1 (the original's 256).
            learner_weight: ``w``, the weight of the learners' outputs in the ensemble.
            residual_weight: ``r`` of the sustained-boosting residual target.
            target_ratio: the score ratio the assignment aims at, > 0 (two modalities only).
            band: no learner is added while the ratio is within ``target_ratio +- band``, >= 0.
            check_every: epochs between assignment checks, >= 0 (0: the original's rule).
            max_learners: learner slots per modality, >= 0.
            merge_weights: ``m_u`` of the fused prediction: a list in modality order or a
                mapping modality -> weight (None: all 1).
            train_learner_hidden: train each learner's hidden layer (False: it keeps its
                initial weights, as in the public code; see the module docstring).
        """

        learner_hidden: int = 256
        learner_weight: float = 1.0
        residual_weight: float = 0.5
        target_ratio: float = 1.0
        band: float = 0.01
        check_every: int = 0
        max_learners: int = 10
        merge_weights: tuple[float, ...] | dict[str, float] | None = None  # a list is kept as a tuple
        train_learner_hidden: bool = True

        def __post_init__(self) -> None:
            require(self.learner_hidden >= 1, "learner_hidden", ">= 1", self.learner_hidden)
            require(self.max_learners >= 0, "max_learners", ">= 0", self.max_learners)
            require(self.check_every >= 0, "check_every", ">= 0", self.check_every)
            require(self.band >= 0, "band", ">= 0", self.band)
            require(self.target_ratio > 0, "target_ratio", "> 0", self.target_ratio)
            object.__setattr__(self, "merge_weights", _weights(self.merge_weights))

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        every = self.args.check_every
        self.check_every = every if every > 0 else (max(1, int(cfg.epochs) // 10) if cfg.epochs > 10 else 1)
        self.model = None
        self.optimizer = None
        self.joined: list[tuple[str, int]] = []  # (modality, slot) in the order they joined the optimizer
        self.scores: dict[str, float] = {}
        self.score_batches = 0

    # --- setup and learner bookkeeping ------------------------------------------------
    def setup(self, model, optimizer) -> None:
        mods = list(model.modalities)
        if len(mods) > 2 and self.args.target_ratio != 1.0:
            raise ValueError("aug: target_ratio applies to two modalities only; use 1.0 with more")
        self._merge = self._merge_weights(mods)
        if not hasattr(model.fusion, ATTRIBUTE):
            param = next(model.parameters())
            learners = BoostingLearners(mods, model.fusion.feature_dims, model.fusion.num_classes,
                                        self.args.max_learners, self.args.learner_hidden)
            setattr(model.fusion, ATTRIBUTE, learners.to(device=param.device, dtype=param.dtype))
        if not self.args.train_learner_hidden:  # the public code: hidden layers never reach the optimizer
            for slots in self.learners_of(model).learners.values():
                for learner in slots:
                    learner[0].requires_grad_(False)
        self.model, self.optimizer = model, optimizer
        self.scores = {u: 0.0 for u in mods}

    def _merge_weights(self, mods: list[str]) -> dict[str, float]:
        w = self.args.merge_weights
        if w is None:
            return {u: 1.0 for u in mods}
        if isinstance(w, dict):
            if set(w) != set(mods):
                raise ValueError(f"merge_weights keys {sorted(w)} must be the modalities {mods}")
            return {u: w[u] for u in mods}
        if len(w) != len(mods):
            raise ValueError(f"merge_weights needs {len(mods)} numbers (modality order {mods}), got {list(w)!r}")
        return dict(zip(mods, w))

    @staticmethod
    def learners_of(model) -> BoostingLearners:
        learners = getattr(model.fusion, ATTRIBUTE, None)
        if learners is None:
            raise RuntimeError("aug: call method.setup(model, optimizer) before training or predicting")
        return learners

    def _join_optimizer(self, u: str, k: int) -> None:
        module = self.learners_of(self.model).learners[u][k]
        group: dict[str, Any] = {key: v for key, v in self.optimizer.param_groups[0].items() if key != "params"}
        group["params"] = [q for q in module.parameters() if q.requires_grad]
        self.optimizer.add_param_group(group)
        self.joined.append((u, k))

    def add_learner(self, u: str) -> bool:
        """Activate the next learner slot of modality ``u`` and add it to the optimizer. False when full."""
        if self.model is None:
            raise RuntimeError("aug: setup(model, optimizer) was not called")
        learners = self.learners_of(self.model)
        k = learners.counts()[u]
        if k >= self.args.max_learners:
            return False
        self._join_optimizer(u, k)
        learners.active[learners.modalities.index(u)] += 1
        return True

    def is_check_epoch(self, epoch: int) -> bool:
        """Whether a learner may be added after (0-based) ``epoch`` (the original's rule)."""
        return epoch == 0 or (epoch + 1) % self.check_every == 0

    def on_epoch_start(self, model, epoch: int) -> None:
        if epoch > 0 and self.score_batches > 0 and self.is_check_epoch(epoch - 1):
            u = weak_modality(self.scores, self.args.target_ratio, self.args.band)
            if u is not None:
                self.add_learner(u)
        self.scores = {u: 0.0 for u in model.modalities}
        self.score_batches = 0

    # --- training and prediction --------------------------------------------------------
    def _ensembles(self, model, inputs, labels=None):
        features = model.encode(inputs)
        base = model.fusion.unimodal_logits(features)
        learners = self.learners_of(model)
        counts = learners.counts()
        w = self.args.learner_weight
        losses, ensembles = {}, {}
        for u in model.modalities:
            outs = [w * h for h in learners.outputs(u, features[u], counts[u])]
            if labels is None:
                ensembles[u] = base[u] + sum(outs) if outs else base[u]
            else:
                losses[u], ensembles[u] = boosting_loss(base[u], outs, labels, self.args.residual_weight)
        fused = sum(self._merge[u] * ensembles[u] for u in model.modalities)
        return fused, ensembles, losses

    def training_step(self, model, inputs, labels) -> StepResult:
        fused, ensembles, losses = self._ensembles(model, inputs, labels)
        stats = {}
        with torch.no_grad():
            for u, z in ensembles.items():
                s = float(torch.softmax(z.detach().float(), dim=-1).gather(1, labels[:, None]).sum())
                self.scores[u] = self.scores.get(u, 0.0) + s
                stats[f"aug_score/{u}"] = s
        self.score_batches += 1
        return StepResult(sum(losses.values()), fused.detach(), {u: z.detach() for u, z in ensembles.items()},
                          stats, losses)

    def predict(self, model, inputs):
        fused, ensembles, _ = self._ensembles(model, inputs)
        return fused, ensembles

    # --- checkpoint state -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"joined": [list(j) for j in self.joined], "scores": dict(self.scores),
                "score_batches": self.score_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.model is None:
            raise RuntimeError("aug: setup(model, optimizer) must run before load_state_dict")
        joined = [(str(u), int(k)) for u, k in state.get("joined", [])]
        if self.joined != joined[:len(self.joined)]:
            raise RuntimeError(f"aug: learners {self.joined} already joined do not match the checkpoint's {joined}")
        for u, k in joined[len(self.joined):]:
            self._join_optimizer(u, k)
        learners = self.learners_of(self.model)
        with torch.no_grad():  # the count follows the join order whether or not the model was loaded first
            for i, u in enumerate(learners.modalities):
                learners.active[i] = sum(1 for v, _ in joined if v == u)
        self.scores = {u: float(s) for u, s in state.get("scores", {}).items()}
        self.score_batches = int(state.get("score_batches", 0))
