"""AGM: adaptive gradient modulation from Shapley-style mono-modal responses.

Li, Li, Hu, Lei, Li and Zhou, "Boosting Multi-modal Model Performance with Adaptive
Gradient Modulation", ICCV 2023 (reference [14] and a Table I row of the BMLR
paper). The authors' code (lihong2303/AGM_ICCV2023, read in a fork's copy,
Lingy12/AGM_ICCV2023: its README, ``utils/config.py`` and the per-data-set training
loops) and BalanceBenchmark's re-implementation (GeWu-Lab,
``balancemm/trainer/AGM_trainer.py``) were read for the details. No code was copied
from either.

On each training batch:

1. **Mono-modal responses.** ``v(S)`` is the model's output with every modality
   outside ``S`` removed, ``v({}) = 0``. Each modality's response is its Shapley
   value ``phi^u = sum_{S not containing u} |S|! (n - |S| - 1)! / n! (v(S + u) - v(S))``.
   With two modalities, ``phi^a = (v(a, v) - v(v) + v(a)) / 2``, and
   ``sum_u phi^u = v(all)``, the fused output, always.
2. **Scores.** ``s^u`` is the batch mean of ``-log softmax(phi^u)[y]``
   (probabilities floored at 1e-8), a loss: lower is stronger.
3. **Ratios.** ``r^u = exp(n/(n-1) * (mean_w s^w - s^u))``; with two modalities
   ``r^a = exp(s^v - s^a)``, as in the authors' code. The same formula on running
   averages ``S^u`` of the scores gives the target ``R^u``. ``S^u`` is the mean of
   ``s^u`` over every batch so far (``S <- S (t-1)/t + s/t``, starting at 0), updated
   after the coefficients are taken.
4. **Coefficients.** ``k^u = exp(alpha * min(R^u - r^u, 10))``: a modality that is
   now stronger than its running average is slowed, a weaker one sped up.
5. **Modulation.** The loss is ``CE(sum_u phi^u, y)``, equal to the fused loss,
   but the gradient reaching each ``phi^u`` is multiplied by ``k^u`` (the authors
   put a backward hook on each response; here each response enters as
   ``k phi + (1 - k) sg(phi)``, the same gradient without hooks). Outside the
   modulation window ``k = 1`` and the loss and gradients are the fused loss's.

Where we had to choose (each can be changed in ``method_args``):

* **Removing a modality.** The authors feed zeros as that modality's input and run
  the whole network again (in eval mode). Here its features are set to zero and
  only the fusion runs again (the encoders run once). For concat and sum this makes
  ``phi^u = W^u z^u + b/n`` exactly, the project's equation 3 logits, so ``k^u``
  scales the gradient of encoder ``u`` and of its block of the decision layer. For
  film and gated the responses come from the fused head with zeroed features (their
  separate unimodal heads are not trained by AGM) and are what ``predict`` reports.
* **Score sign.** BalanceBenchmark's n-modality version uses ``exp(s^u - mean)``,
  the opposite sign of the authors' two-modality code; we follow the authors.
* **Three or more modalities** are supported (Shapley values over every subset:
  ``2^n - 1`` fusion passes per batch). One modality raises ``ValueError``: AGM
  compares modalities.
* **Defaults.** ``alpha = 1.0`` and the window of epochs 0 to 20 are the defaults
  of the authors' ``utils/config.py`` (their README's AV-MNIST command sets
  ``--alpha 2.5``; BalanceBenchmark uses 0.1 and epochs 10 to 80). The cap 10 on
  ``R - r`` is the authors'. Their optimizer (SGD) is not a method argument.

Stats per batch: ``agm_coeff/u``, ``k^u`` times the batch size (1 outside the window).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bmlr.methods.args import require
from bmlr.methods.base import METHODS, Method, StepResult, hard_cross_entropy

#: the authors' cap on ``R^u - r^u`` inside the exponent
GAP_CAP = 10.0


def coalition_outputs(fusion, features: dict[str, Tensor]) -> dict[frozenset, Tensor]:
    """``v(S)`` for every non-empty subset ``S`` of the modalities: the fusion applied to the
    features with every modality outside ``S`` set to zero."""
    names = list(fusion.modalities)
    out = {}
    for size in range(1, len(names) + 1):
        for subset in itertools.combinations(names, size):
            kept = {u: z if u in subset else torch.zeros_like(z) for u, z in features.items()}
            out[frozenset(subset)] = fusion(kept)
    return out


def shapley_responses(values: dict[frozenset, Tensor], modalities: list[str]) -> dict[str, Tensor]:
    """``phi^u = sum_{S not containing u} |S|! (n-|S|-1)! / n! (v(S+u) - v(S))``, with ``v({}) = 0``."""
    n = len(modalities)
    out = {}
    for u in modalities:
        others = [w for w in modalities if w != u]
        total = None
        for size in range(0, n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                s = frozenset(subset)
                gain = values[s | {u}] - (values[s] if s else 0.0)
                total = weight * gain if total is None else total + weight * gain
        out[u] = total
    return out


def response_scores(responses: dict[str, Tensor], labels: Tensor) -> dict[str, float]:
    """``s^u``: batch mean of ``-log max(softmax(phi^u)[y], 1e-8)`` (no gradient)."""
    with torch.no_grad():
        out = {}
        for u, z in responses.items():
            p = torch.softmax(z.detach().float(), dim=-1).gather(1, labels[:, None]).clamp(min=1e-8)
            out[u] = float(-p.log().mean())
        return out


def ratios(scores: dict[str, float]) -> dict[str, float]:
    """``r^u = exp(n/(n-1) * (mean_w s^w - s^u))`` (two modalities: ``exp(s^other - s^u)``)."""
    n = len(scores)
    if n < 2:
        raise ValueError("agm needs at least two modalities")
    mean = sum(scores.values()) / n
    return {u: math.exp(n / (n - 1) * (mean - s)) for u, s in scores.items()}


def agm_coefficients(scores: dict[str, float], running: dict[str, float], alpha: float) -> dict[str, float]:
    """``k^u = exp(alpha * min(R^u - r^u, 10))``: ``r`` from this batch's scores, ``R`` from the running ones."""
    now, target = ratios(scores), ratios(running)
    return {u: math.exp(alpha * min(target[u] - now[u], GAP_CAP)) for u in scores}


def modulated(response: Tensor, k: float) -> Tensor:
    """``response`` in value, with its gradient multiplied by ``k``."""
    return response if k == 1.0 else k * response + (1.0 - k) * response.detach()


@METHODS.register("agm")
class AGM(Method):
    """Fused CE through Shapley mono-modal responses whose gradients are scaled by k^u."""

    reads = ()
    reading = ("`alpha_agm` 1.0 from the authors' config (their README shows 2.5); the optimizer's momentum and weight "
               "decay of their runs are not published")

    @dataclass(frozen=True)
    class Args:
        """The ``method_args`` of agm (see the module docstring).

        Args:
            alpha_agm: modulation strength in ``k = exp(alpha * min(R - r, 10))``, >= 0.
            modulation_starts: first epoch (from 0) of the modulation window.
            modulation_ends: last epoch of the window (inclusive), >= modulation_starts.
        """

        alpha_agm: float = 1.0
        modulation_starts: int = 0
        modulation_ends: int = 20

        def __post_init__(self) -> None:
            require(self.alpha_agm >= 0, "alpha_agm", ">= 0", self.alpha_agm)
            require(self.modulation_ends >= self.modulation_starts, "modulation_ends",
                    f">= modulation_starts ({self.modulation_starts})", self.modulation_ends)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.epoch = 0
        self.iteration = 0  # training batches seen, for the running mean of the scores
        self.running: dict[str, float] = {}
        self.last_coefficients: dict[str, float] | None = None

    def setup(self, model, optimizer) -> None:
        if len(model.modalities) < 2:
            raise ValueError(f"method 'agm' needs at least two modalities, got {list(model.modalities)}")

    def on_epoch_start(self, model, epoch: int) -> None:
        self.epoch = int(epoch)

    def in_window(self) -> bool:
        return self.args.modulation_starts <= self.epoch <= self.args.modulation_ends

    def responses(self, model, inputs) -> tuple[Tensor, dict[str, Tensor]]:
        """The fused output ``v(all)`` and the Shapley responses ``phi^u``."""
        values = coalition_outputs(model.fusion, model.encode(inputs))
        return values[frozenset(model.modalities)], shapley_responses(values, list(model.modalities))

    def training_step(self, model, inputs, labels) -> StepResult:
        _, phi = self.responses(model, inputs)
        scores = response_scores(phi, labels)
        running = {u: self.running.get(u, 0.0) for u in scores}
        coeffs = agm_coefficients(scores, running, self.args.alpha_agm)
        if torch.is_grad_enabled():
            self.iteration += 1
            t = self.iteration
            self.running = {u: running[u] * (t - 1) / t + s / t for u, s in scores.items()}
        applied = coeffs if self.in_window() else {u: 1.0 for u in coeffs}
        self.last_coefficients = applied
        fused = sum(modulated(z, applied[u]) for u, z in phi.items())
        n = float(len(labels))
        stats = {f"agm_coeff/{u}": k * n for u, k in applied.items()}
        losses = {"fused": hard_cross_entropy(fused, labels)}
        return StepResult(losses["fused"], fused.detach(), {u: z.detach() for u, z in phi.items()}, stats, losses)

    def predict(self, model, inputs):
        """Fused logits and the Shapley mono-modal responses (concat/sum: equation 3 logits)."""
        fused, phi = self.responses(model, inputs)
        return fused, phi

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "running": dict(self.running)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state.get("iteration", 0))
        self.running = dict(state.get("running", {}))
