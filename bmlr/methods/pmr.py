"""PMR: prototypical modal rebalance.

Fan, Xu, Wang, Wang and Guo, "PMR: Prototypical Modal Rebalance for Multimodal
Learning", CVPR 2023 (reference [10] of the BMLR paper). The public code
(fanyunfeng-bit/Modal-Imbalance-PMR, ``main_Prototype_grad.py``) and
BalanceBenchmark's re-implementation by GeWu-Lab (``balancemm/trainer/PMR_trainer.py``,
which adds the entropy regulariser the public code lacks) were read for the details.
No code was copied from either.

Each modality ``u`` keeps one prototype per class, ``c^u_k``, the mean feature
``z^u`` of the class-``k`` training samples. A sample's prototypical distribution is
``p^u(x) = softmax_k(-|z^u(x) - c^u_k|)`` (Euclidean distance), its prototypical
cross-entropy is ``PCE^u = -log p^u_y`` (batch mean) and its score is
``s^u = sum_i p^u_{y_i}`` over the batch. With two modalities the imbalance ratio is
``rho = s^dom / s^slow >= 1``. The loss is

    L = CE(fused, y) + alpha_pmr * r * PCE^slow - mu * r * H(p^dom)   (early epochs for the H term)

with ``r = clip(rho - 1, 0, 1)`` (``coeff_form="ratio"``, as BalanceBenchmark) or
``r = 1`` whenever ``rho > 1`` (``coeff_form="binary"``, as the public code's
``beta = alpha``). ``H`` is the entropy of the dominant modality's prototypical
distribution (batch mean): subtracting it keeps the dominant modality from
converging too early (the paper's prototype-based entropy regularisation), applied in
the first ``entropy_epochs`` epochs of the modulation window. Prototypes are
constants (no gradient), so ``PCE^slow`` reaches only the slow encoder and ``H`` only
the dominant one; the fused head learns from ``CE`` alone.

Where we had to choose (each can be changed in ``method_args``):

* **When prototypes are computed.** The public code recomputes them at the start of
  each epoch from a pass over a tenth of the training set in eval mode, then mixes
  in the previous ones: ``c = (1 - m) c_new + m c_old`` with ``momentum_coef`` m.
  The method interface sees only training batches, so here the class sums of the
  (detached, train-mode) features of every training batch of epoch ``e`` make the
  new prototypes used throughout epoch ``e + 1``, mixed with the old ones the same
  way. In the first epoch, before any epoch has ended, each batch uses the running
  class means of the batches so far (the current one included). Until every class
  has a prototype, the PMR terms are off (plain multimodal training); a class that
  no batch of an epoch contains keeps its old prototype.
* **Coefficient** (``coeff_form``): the paper scales the slow modality's term with
  the imbalance; the public code's script uses a constant ``alpha``. ``"ratio"``
  (default) is BalanceBenchmark's ``alpha * clip(rho - 1, 0, 1)`` (its alpha is our ``alpha_pmr``).
* **Entropy regulariser** (``mu``, ``entropy_epochs``): the public code has none.
  BalanceBenchmark's ``PMR_PER`` weights it by ``mu`` times the slow modality's
  ``r``, for its ``norm_epoch`` first epochs, with no published values; its sum over
  the batch is a mean here (independent of the batch size). ``mu = 0.1`` and
  ``entropy_epochs = 10`` are our choices, not the authors': search ``mu``.
* **Three or more modalities** are supported: ``rho^u = max_w s^w / s^u``; every
  modality with ``rho^u > 1`` gets ``alpha_pmr * r^u * PCE^u``, and the modality with
  the highest score gets the entropy term with weight ``mu * max_u r^u``. With two
  modalities this is the rule above. (BalanceBenchmark switches to OGM-GE's
  modulation with three modalities.) One modality: only the multimodal loss.
* **Defaults.** ``alpha_pmr = 1.0`` (the code's ``--alpha``), ``momentum_coef = 0.2``
  and the window of epochs 0 to 100 are the public code's argument defaults
  (BalanceBenchmark: alpha 0.1, momentum 0.5, epochs 10 to 80).
* **Unimodal logits** for monitoring are read off the decision layer as for the
  baseline (``base.probe_unimodal_logits``); the prototype classifiers are not
  reported.

Stats per batch: ``pmr_coeff/u`` (``alpha_pmr * r^u`` times the batch size) and
``pmr_active`` (the batch size where the PMR terms were on).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bmlr.methods.args import require
from bmlr.methods.base import METHODS, Method, StepResult, hard_cross_entropy, probe_unimodal_logits

COEFF_FORMS = ("ratio", "binary")


def prototype_logits(features: Tensor, prototypes: Tensor) -> Tensor:
    """``[B, C]`` negative Euclidean distances from each feature to each class prototype."""
    return -torch.cdist(features.float(), prototypes.float().to(features.device), p=2)


def prototype_scores(logits: dict[str, Tensor], labels: Tensor) -> dict[str, float]:
    """``s^u = sum_i softmax(-d^u_i)[y_i]`` over the batch (no gradient)."""
    with torch.no_grad():
        return {u: float(torch.softmax(z.detach(), dim=-1).gather(1, labels[:, None]).sum()) for u, z in logits.items()}


def imbalance_coefficients(scores: dict[str, float], form: str = "ratio") -> dict[str, float]:
    """``r^u`` per modality: ``rho^u = max_w s^w / s^u``; ``clip(rho^u - 1, 0, 1)`` ("ratio") or
    ``1 if rho^u > 1 else 0`` ("binary"). The dominant modality gets 0."""
    if form not in COEFF_FORMS:
        raise ValueError(f"coeff_form must be one of {COEFF_FORMS}, got {form!r}")
    top = max(scores.values())
    out = {}
    for u, s in scores.items():
        rho = top / max(s, 1e-12)
        out[u] = min(max(rho - 1.0, 0.0), 1.0) if form == "ratio" else float(rho > 1.0)
    return out


def entropy(logits: Tensor) -> Tensor:
    """Batch mean of ``-sum_k p_k log p_k`` with ``p = softmax(logits)``."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1).mean()


class PrototypeBank:
    """Per-modality class prototypes: the ones in use, and this epoch's class sums."""

    def __init__(self, momentum: float) -> None:
        self.momentum = momentum
        self.prototypes: dict[str, Tensor] = {}  # u -> [C, d]
        self.known: Tensor | None = None  # [C] bool: classes that have a prototype
        self.sums: dict[str, Tensor] = {}
        self.counts: Tensor | None = None

    def add(self, features: dict[str, Tensor], labels: Tensor, num_classes: int) -> None:
        """Add a batch's detached features to this epoch's class sums."""
        if self.counts is None:
            self.counts = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
        self.counts = self.counts.to(labels.device).index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        for u, z in features.items():
            z = z.detach().double()
            base = self.sums.get(u)
            if base is None:
                base = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, device=z.device)
            self.sums[u] = base.to(z.device).index_add_(0, labels, z)

    def running(self) -> dict[str, Tensor] | None:
        """This epoch's class means so far, if every class has been seen (else None)."""
        if self.counts is None or bool((self.counts == 0).any()):
            return None
        return {u: (s / self.counts[:, None]).float() for u, s in self.sums.items()}

    def close_epoch(self) -> None:
        """This epoch's class means become the prototypes, mixed with the old ones by ``momentum``."""
        if self.counts is None:
            return
        seen = self.counts > 0
        for u, s in self.sums.items():
            new = (s / self.counts.clamp(min=1)[:, None]).float()
            old = self.prototypes.get(u)
            if old is None or self.known is None:
                merged = new
            else:
                old = old.to(new.device)
                known = self.known.to(new.device)
                mixed = (1 - self.momentum) * new + self.momentum * old
                merged = torch.where(seen[:, None], torch.where(known[:, None], mixed, new), old)
            self.prototypes[u] = merged
        self.known = seen if self.known is None else (seen | self.known.to(seen.device))
        self.sums, self.counts = {}, None

    def current(self) -> dict[str, Tensor] | None:
        """The prototypes a batch uses: last epoch's, or (first epoch) the running means;
        None until every class has one."""
        if self.known is not None and bool(self.known.all()):
            return self.prototypes
        return self.running()

    def state_dict(self) -> dict[str, Any]:
        def cpu(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().cpu()

        return {"prototypes": {u: cpu(t) for u, t in self.prototypes.items()}, "known": cpu(self.known),
                "sums": {u: cpu(t) for u, t in self.sums.items()}, "counts": cpu(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prototypes, self.known = dict(state["prototypes"]), state["known"]
        self.sums, self.counts = dict(state["sums"]), state["counts"]


@METHODS.register("pmr")
class PMR(Method):
    """Multimodal CE, plus prototypical CE for the slow modality and an entropy bonus for the dominant one."""

    reads = ()
    reading = ("the dominant modality's prototype-entropy bonus (`mu` 0.1 in the first 10 epochs) has no published value; "
               "`alpha_pmr` and the prototype momentum follow the public code")

    @dataclass(frozen=True)
    class Args:
        """The ``method_args`` of pmr (see the module docstring for each choice).

        Args:
            alpha_pmr: weight of the slow modality's prototypical CE, >= 0 (public code default 1.0).
            mu: weight of the dominant modality's prototype entropy, >= 0 (our choice 0.1).
            entropy_epochs: epochs, from modulation_starts, with the entropy term, >= 0.
            momentum_coef: share of the old prototypes when they are updated, in [0, 1).
            modulation_starts: first epoch (from 0) of the PMR terms.
            modulation_ends: last epoch (inclusive), >= modulation_starts.
            coeff_form: ``"ratio"`` (alpha_pmr * clip(rho - 1, 0, 1)) or ``"binary"`` (alpha_pmr if rho > 1).
        """

        alpha_pmr: float = 1.0
        mu: float = 0.1
        entropy_epochs: int = 10
        momentum_coef: float = 0.2
        modulation_starts: int = 0
        modulation_ends: int = 100
        coeff_form: str = "ratio"

        def __post_init__(self) -> None:
            require(self.alpha_pmr >= 0, "alpha_pmr", ">= 0", self.alpha_pmr)
            require(self.mu >= 0, "mu", ">= 0", self.mu)
            require(self.entropy_epochs >= 0, "entropy_epochs", ">= 0", self.entropy_epochs)
            require(0 <= self.momentum_coef < 1, "momentum_coef", "in [0, 1)", self.momentum_coef)
            require(self.coeff_form in COEFF_FORMS, "coeff_form", f"one of {COEFF_FORMS}", self.coeff_form)
            require(self.modulation_ends >= self.modulation_starts, "modulation_ends",
                    f">= modulation_starts ({self.modulation_starts})", self.modulation_ends)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.epoch = 0
        self.bank = PrototypeBank(self.args.momentum_coef)

    def on_epoch_start(self, model, epoch: int) -> None:
        self.epoch = int(epoch)
        self.bank.close_epoch()

    def in_window(self) -> bool:
        return self.args.modulation_starts <= self.epoch <= self.args.modulation_ends

    def training_step(self, model, inputs, labels) -> StepResult:
        features = model.encode(inputs)
        fused = model.fusion(features)
        unimodal, probe_loss = probe_unimodal_logits(model, features, labels)
        losses = {"fused": hard_cross_entropy(fused, labels), "probe": probe_loss}
        n = float(len(labels))
        stats = {"pmr_active": 0.0}
        if torch.is_grad_enabled():
            self.bank.add(features, labels, model.fusion.num_classes)
        prototypes = self.bank.current()
        if prototypes is not None and self.in_window() and len(features) > 1:
            terms, coeffs = self.pmr_terms(features, prototypes, labels)
            losses.update(terms)
            stats["pmr_active"] = n
            stats.update({f"pmr_coeff/{u}": k * n for u, k in coeffs.items()})
        return StepResult(sum(losses.values()), fused.detach(), {u: z.detach() for u, z in unimodal.items()},
                          stats, losses)

    def pmr_terms(self, features: dict[str, Tensor], prototypes: dict[str, Tensor],
                  labels: Tensor) -> tuple[dict[str, Tensor], dict[str, float]]:
        """The loss terms ``{"pce/u": alpha_pmr r^u PCE^u, "entropy/dom": -mu r H}`` and ``{u: alpha_pmr r^u}``."""
        logits = {u: prototype_logits(z, prototypes[u]) for u, z in features.items()}
        scores = prototype_scores(logits, labels)
        ratios = imbalance_coefficients(scores, self.args.coeff_form)
        terms, coeffs = {}, {}
        for u, r in ratios.items():
            coeffs[u] = self.args.alpha_pmr * r
            if coeffs[u] > 0:
                terms[f"pce/{u}"] = coeffs[u] * hard_cross_entropy(logits[u], labels)
        early = self.epoch < self.args.modulation_starts + self.args.entropy_epochs
        weight = self.args.mu * max(ratios.values())
        if early and weight > 0:
            dominant = max(scores, key=scores.get)
            terms[f"entropy/{dominant}"] = -weight * entropy(logits[dominant])
        return terms, coeffs

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "bank" in state:
            self.bank.load_state_dict(state["bank"])
