"""MMPareto: Pareto-integrated gradients of the multimodal and the unimodal losses.

Wei and Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal
Assistance", ICML 2024 (reference [12] and a Table I row of the BMLR paper). The
public code (GeWu-Lab/MMPareto_ICML2024, ``code/MMPareto.py`` and
``code/min_norm_solvers.py``) was read for the details the paper leaves open. No
code was copied from it.

The model trains on ``L = L^0 + sum_u L^u``: the multimodal cross-entropy plus one
cross-entropy per modality. For the parameters a modality's encoder shares between
the two tasks (``L^0`` and ``L^u``), the two gradients are combined per modality:

1. ``g_mm = dL^0/d theta^u`` and ``g_u = dL^u/d theta^u``, each as one vector over
   all of that encoder's parameters (``theta^u``).
2. If ``cos(g_mm, g_u) > 0`` (no conflict): weights ``(1/2, 1/2)``. Otherwise
   the two-task min-norm (MGDA) weights ``(c, 1 - c)`` with
   ``c = (g_u.g_u - g_mm.g_u) / |g_mm - g_u|^2``, which minimises
   ``|c g_mm + (1 - c) g_u|``. Like ``min_norm_solvers.py``, ``c`` is kept in
   ``[0.001, 0.999]`` (its edge cases) and two zero gradients get ``(1/2, 1/2)``.
3. Per parameter tensor, ``new = 2 (c g_mm + (1 - c) g_u)`` (so without conflict
   ``new`` is the plain sum ``g_mm + g_u``). The magnitude rescaling of the public
   code then keeps the larger of the two norms: with ``sum = g_mm + g_u`` (the
   gradient of ``L`` there), the tensor's gradient becomes
   ``gamma * new * max(1, |sum| / |new|)``, with ``gamma = 1.5``.

Every other parameter (the fused head, the separate unimodal heads) keeps the
plain gradient of ``L``, as in the public code, where parameters named ``head``
are skipped.

Where we had to choose (each can be changed in ``method_args``):

* **Unimodal logits.** The public code has a separate linear head per modality.
  Here, as in the rest of the project, concat and sum read them off the decision
  layer (equation 3, ``W^u z^u + b/|M|``), so ``L^u`` also trains the fused
  head's block ``W^u``; film and gated use their separate unimodal heads, as the
  public code does.
* **Rescaling** (``rescale``, ``gamma``): the public code's ``gamma = 1.5`` and
  its per-tensor norm rule are the defaults. ``rescale=False`` sets the tensor's
  gradient to ``gamma * new``. ``gamma`` multiplies every encoder gradient, so
  under Adam it cancels (Adam divides a constant scale out); the public code
  trains with SGD (see ``bmlr.methods.protocols``).
* **Cost.** The two gradients are taken with ``torch.autograd.grad`` in
  ``training_step`` (one extra backward pass for ``L^0`` and one per modality),
  then the Trainer's backward gives the gradient of ``L`` and ``after_backward``
  replaces the encoders' part. The public code runs three backward passes plus
  one for the sum; the gradients are the same.
* **Three or more modalities** are supported: each encoder solves its own
  two-task problem (``L^0`` against its own ``L^u``); no other unimodal loss
  reaches it. With one modality the method is joint training of ``L^0 + L^u``
  with the same rule.
* **Mixed precision.** The two gradients are taken from the unscaled loss; in
  fp16 a tiny gradient may underflow there (bf16, the default on recent GPUs, and
  CPU training are unaffected).

Stats per batch (summed over the epoch by the Trainer): ``pareto_conflict/u``, the
number of samples in batches where modality ``u``'s two gradients conflicted;
``pareto_weight_mm/u``, ``c`` times the batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bmlr.methods.args import require
from bmlr.methods.base import METHODS, Method, StepResult, hard_cross_entropy

#: the edges of the public min-norm solver's analytic two-vector solution
MIN_WEIGHT, MAX_WEIGHT = 0.001, 0.999


def min_norm_weight(g1g1: float, g1g2: float, g2g2: float) -> float:
    """``c`` minimising ``|c g1 + (1 - c) g2|`` over ``c`` in ``[0.001, 0.999]``, from the dot
    products (the analytic two-task MGDA solution); ``0.5`` if both vectors are zero."""
    if g1g1 <= 0.0 and g2g2 <= 0.0:
        return 0.5
    if g1g2 >= g1g1:
        return MAX_WEIGHT
    if g1g2 >= g2g2:
        return MIN_WEIGHT
    c = (g2g2 - g1g2) / (g1g1 + g2g2 - 2.0 * g1g2)
    return min(max(c, MIN_WEIGHT), MAX_WEIGHT)


def pareto_weights(g_mm: list[Tensor], g_uni: list[Tensor]) -> tuple[float, float, bool]:
    """``(weight of L^0, weight of L^u, conflict)`` for one encoder's two gradients (lists of
    per-tensor gradients): ``(1/2, 1/2)`` unless their cosine is <= 0, then min-norm weights."""
    g1g1 = float(sum((a.double() * a.double()).sum() for a in g_mm))
    g2g2 = float(sum((b.double() * b.double()).sum() for b in g_uni))
    g1g2 = float(sum((a.double() * b.double()).sum() for a, b in zip(g_mm, g_uni)))
    norm = math.sqrt(g1g1 * g2g2)
    cos = g1g2 / norm if norm > 0 else 0.0
    if cos > 0:
        return 0.5, 0.5, False
    c = min_norm_weight(g1g1, g1g2, g2g2)
    return c, 1.0 - c, True


def combined_gradient(g_mm: Tensor, g_uni: Tensor, total: Tensor, weights: tuple[float, float],
                      gamma: float, rescale: bool) -> Tensor:
    """One parameter tensor's MMPareto gradient: ``new = 2 (w0 g_mm + w1 g_uni)``, times
    ``gamma``, and (``rescale``) times ``max(1, |total| / |new|)``, ``total`` being the
    gradient of the summed loss there."""
    new = 2.0 * (weights[0] * g_mm + weights[1] * g_uni)
    if rescale:
        new_norm = float(new.norm())
        if new_norm > 0:
            new = new * max(1.0, float(total.norm()) / new_norm)
    return gamma * new


def encoder_parameters(model) -> dict[str, list]:
    """Each modality's encoder parameters (its group minus its fusion branch head), by module."""
    groups = model.parameter_groups()
    out = {}
    for u in model.modalities:
        branch = {id(p) for p in model.fusion.branch_parameters(u)}
        out[u] = [p for p in groups[u] if id(p) not in branch and p.requires_grad]
    return out


def gradients(loss: Tensor, params: list) -> list[Tensor]:
    """``d loss / d p`` for each of ``params`` (zeros where ``loss`` does not reach ``p``)."""
    out = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, out)]


@METHODS.register("mmpareto")
class MMPareto(Method):
    """``L^0 + sum_u L^u``; each encoder's two gradients are combined with Pareto weights when they conflict."""

    reads = ()

    @dataclass(frozen=True)
    class Args:
        """The ``method_args`` of mmpareto (see the module docstring).

        Args:
            gamma: factor on every combined encoder gradient, > 0 (the public code's 1.5).
            rescale: keep ``max(|sum|, |new|)`` per tensor, as the public code (False: ``gamma * new``).
        """

        gamma: float = 1.5
        rescale: bool = True

        def __post_init__(self) -> None:
            require(self.gamma > 0, "gamma", "> 0", self.gamma)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self._pending: dict[str, tuple[list[Tensor], list[Tensor], tuple[float, float]]] | None = None
        self._params_cache: tuple[int, dict[str, list]] | None = None

    def _encoders(self, model) -> dict[str, list]:
        if self._params_cache is None or self._params_cache[0] != id(model):
            self._params_cache = (id(model), encoder_parameters(model))
        return self._params_cache[1]

    def training_step(self, model, inputs, labels) -> StepResult:
        features = model.encode(inputs)
        fused = model.fusion(features)
        unimodal = model.fusion.unimodal_logits(features)
        losses = {"fused": hard_cross_entropy(fused, labels)}
        losses.update({u: hard_cross_entropy(z, labels) for u, z in unimodal.items()})
        pending, stats = {}, {}
        n = float(len(labels))
        if torch.is_grad_enabled():
            encoders = self._encoders(model)
            every = [p for u in model.modalities for p in encoders[u]]
            from_fused = dict(zip(map(id, every), gradients(losses["fused"], every)))
            for u in model.modalities:
                g_mm = [from_fused[id(p)] for p in encoders[u]]
                g_uni = gradients(losses[u], encoders[u])
                w_mm, w_uni, conflict = pareto_weights(g_mm, g_uni)
                pending[u] = (g_mm, g_uni, (w_mm, w_uni))
                stats[f"pareto_conflict/{u}"] = n if conflict else 0.0
                stats[f"pareto_weight_mm/{u}"] = w_mm * n
        self._pending = pending or None
        return StepResult(sum(losses.values()), fused.detach(), {u: z.detach() for u, z in unimodal.items()},
                          stats, losses)

    @torch.no_grad()
    def after_backward(self, model) -> None:
        pending, self._pending = self._pending, None  # the gradients of one batch are used once
        if pending is None:
            return
        encoders = self._encoders(model)
        for u, (g_mm, g_uni, weights) in pending.items():
            for p, a, b in zip(encoders[u], g_mm, g_uni):
                total = p.grad if p.grad is not None else torch.zeros_like(p)
                p.grad = combined_gradient(a, b, total, weights, self.args.gamma, self.args.rescale).to(p.dtype)
