"""OGM-GE: on-the-fly gradient modulation with generalization enhancement.

Peng, Wei, Deng, Wang and Hu, "Balanced Multimodal Learning via On-the-fly
Gradient Modulation", CVPR 2022 (reference [7] and a Table I row of the BMLR
paper). The public code (GeWu-Lab/OGM-GE_CVPR2022, ``main.py``) was read
for the details the paper leaves open. No code was copied from it.

On each training batch:

1. The model trains on the multimodal loss only, ``L^0 = CE(fused, y)``, as
   in the original. Nothing is added for the unimodal paths.
2. Each modality gets a score ``s^u = sum_i softmax(unimodal^u_i)[y_i]``, summed
   over the batch. The unimodal logits are those of equation 3
   (``W^u z^u + b/|M|``) and are read without gradient.
3. Each modality gets a discrepancy ratio ``rho^u``. With two modalities this
   is the paper's ``rho^a = s^a / s^v``.
4. Each modality gets a coefficient ``k^u = 1 - tanh(alpha_ogm * rho^u)`` if
   ``rho^u > 1``, else ``1``.
5. After the backward pass, inside the modulation window, every modulated
   encoder parameter of modality ``u`` gets ``g <- k^u * g + N(0, std(g)^2)``.
   The added noise is the "GE" part. Set ``ge=False`` to get plain OGM.

Where we had to choose (every choice below can be changed in ``method_args``):

* **Coefficient form** (``coeff_form``). The paper's equation 10 and the public
  ``main.py`` (``1 - tanh(alpha * relu(ratio))``, used only when
  ``ratio > 1``) both give ``1 - tanh(alpha * rho)``. That coefficient jumps
  from 1 to ``1 - tanh(alpha)`` as ``rho`` passes 1. The default,
  ``"paper"``, keeps that form. ``"shifted"`` is ``1 - tanh(alpha *
  relu(rho - 1))``, which several re-implementations use and which is
  continuous at ``rho = 1``.
* **More than two modalities.** ``rho^u = s^u / mean_{w != u} s^w``, so each
  modality is compared with the mean of the others. With two modalities this
  is exactly the original ratio. Every modality with ``rho^u > 1`` is
  modulated by its own ``k^u``, so with three or more modalities more than
  one modality can be slowed. With one modality nothing is modulated.
* **Ties.** When ``rho == 1`` exactly, nothing is modulated. The original's
  if/else modulates audio in that case. The difference happens with
  probability zero.
* **Which gradients** (``modulate``). Parameters are taken from
  ``model.parameter_groups()[u]``, minus that modality's fusion branch
  parameters (the separate unimodal heads of film/gated), and never chosen by
  name. The default, ``"conv"``, keeps only the 4-D (convolution) weights,
  like the original's ``len(grad.size()) == 4`` test, so BatchNorm
  parameters and biases are left alone. If a modality's encoder has no 4-D
  weight (the Transformer encoder), all its encoder parameters are modulated,
  so the method is never silently off. ``"all"`` modulates every encoder
  parameter.
* **GE noise.** Each modulated parameter tensor gets its own noise, with the
  standard deviation of its unmodulated gradient (``torch.std``, unbiased)
  plus 1e-8, as in ``main.py``. Like the public code, we add noise to every
  modulated encoder inside the window, including the ones whose ``k = 1``.
  The noise uses torch's global generator, which the Trainer saves in its
  checkpoints.
* **Modulation window.** Epochs count from 0, and both ends are inclusive,
  like ``modulation_starts <= epoch <= modulation_ends`` in ``main.py``.
  Outside the window the method is plain multimodal training.
* **Film/gated fusions.** Their fused logits do not split into one part per
  modality. (The public code reads the scores off ``fc_out`` slices even for
  those fusions, which has no meaning there.) Here the scores come from the
  fusion's separate unimodal heads. Those heads are trained as linear probes
  on detached features (``base.probe_unimodal_logits``), so they change
  neither the encoders nor the fused head.
* **Defaults.** ``alpha_ogm = 0.1``, ``modulation_starts = 0`` and
  ``modulation_ends = 50`` are the README's "default modulation setting" (an
  older README gave alpha 0.5; ``main.py`` makes alpha a required argument).
  The window is the one ``main.py`` uses for its 100 epochs.
* **Optimizer.** The original trains with SGD (momentum 0.9, weight decay
  1e-4, lr 1e-3, StepLR(70, 0.1)). That is not a method argument but a
  Config setting; ``tune.py compare`` applies it to an OGM-GE row
  (``bmlr.methods.protocols``). It matters: ``k`` rescales the dominant
  encoder's gradient, and Adam divides a constant rescaling out (up to its
  epsilon) and a slowly varying one mostly, so under Adam the modulation is
  largely undone and only the GE noise is left.
  ``tests/test_method_protocols.py`` checks both: under SGD the dominant
  encoder's step scales by ``k``, under Adam it does not.

Stats per batch (the Trainer sums them over the epoch):

* ``ogm_modulated/u``: the number of samples in batches where ``k^u < 1``
  inside the window.
* ``ogm_coeff/u``: ``k^u`` times the batch size. Divide the epoch total by
  the number of training samples to get the mean coefficient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bmlr.methods.args import require
from bmlr.methods.base import METHODS, Method, StepResult, hard_cross_entropy, probe_unimodal_logits

COEFF_FORMS = ("paper", "shifted")
MODULATE = ("conv", "all")


def ogm_scores(unimodal_logits: dict[str, Tensor], labels: Tensor) -> dict[str, float]:
    """``s^u = sum_i softmax(logits^u_i)[y_i]`` over the batch (no gradient)."""
    with torch.no_grad():
        return {u: float(torch.softmax(z.detach().float(), dim=-1).gather(1, labels[:, None]).sum())
                for u, z in unimodal_logits.items()}


def ogm_ratios(scores: dict[str, float]) -> dict[str, float]:
    """``rho^u = s^u / mean_{w != u} s^w``. For two modalities this is ``s^a / s^v``."""
    ratios = {}
    for u, s in scores.items():
        others = [scores[w] for w in scores if w != u]
        if not others:
            ratios[u] = 1.0
            continue
        ratios[u] = s / max(sum(others) / len(others), 1e-12)
    return ratios


def ogm_coefficient(ratio: float, alpha: float, form: str = "paper") -> float:
    """``k = 1 - tanh(alpha * rho)`` ("paper") or ``1 - tanh(alpha * (rho - 1))`` ("shifted") if rho > 1, else 1."""
    if form not in COEFF_FORMS:
        raise ValueError(f"coeff_form must be one of {COEFF_FORMS}, got {form!r}")
    if ratio <= 1.0:
        return 1.0
    x = ratio if form == "paper" else ratio - 1.0
    return 1.0 - math.tanh(alpha * x)


def ogm_coefficients(unimodal_logits: dict[str, Tensor], labels: Tensor, alpha: float,
                     form: str = "paper") -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Scores, ratios and coefficients of one batch."""
    scores = ogm_scores(unimodal_logits, labels)
    ratios = ogm_ratios(scores)
    coeffs = {u: ogm_coefficient(r, alpha, form) for u, r in ratios.items()}
    return scores, ratios, coeffs


def modulated_parameters(model, mode: str = "conv") -> dict[str, list]:
    """The encoder parameters of each modality that OGM-GE modulates, chosen by module.

    This is ``parameter_groups()[u]`` minus ``fusion.branch_parameters(u)``. With
    ``mode="conv"`` only the 4-D weights are kept, falling back to every
    encoder parameter of a modality that has none.
    """
    if mode not in MODULATE:
        raise ValueError(f"modulate must be one of {MODULATE}, got {mode!r}")
    groups = model.parameter_groups()
    out = {}
    for u in model.modalities:
        branch = {id(p) for p in model.fusion.branch_parameters(u)}
        encoder = [p for p in groups[u] if id(p) not in branch]
        if mode == "conv":
            conv = [p for p in encoder if p.dim() == 4]
            encoder = conv or encoder
        out[u] = encoder
    return out


@METHODS.register("ogm_ge")
class OGMGE(Method):
    """Multimodal CE. The dominant modality's encoder gradients are scaled by k^u, plus GE noise."""

    reads = ()

    @dataclass(frozen=True)
    class Args:
        """The ``method_args`` of ogm_ge (see the module docstring for each choice).

        Args:
            alpha_ogm: modulation strength in ``k = 1 - tanh(alpha_ogm * rho)``, >= 0.
            modulation_starts: first epoch (from 0) of the modulation window.
            modulation_ends: last epoch of the window (inclusive), >= modulation_starts.
            ge: add the generalization-enhancement noise (False: plain OGM).
            coeff_form: ``"paper"`` (equation 10) or ``"shifted"`` (continuous at rho = 1).
            modulate: ``"conv"`` (4-D encoder weights) or ``"all"`` encoder parameters.
        """

        alpha_ogm: float = 0.1
        modulation_starts: int = 0
        modulation_ends: int = 50
        ge: bool = True
        coeff_form: str = "paper"
        modulate: str = "conv"

        def __post_init__(self) -> None:
            require(self.alpha_ogm >= 0, "alpha_ogm", ">= 0", self.alpha_ogm)
            require(self.coeff_form in COEFF_FORMS, "coeff_form", f"one of {COEFF_FORMS}", self.coeff_form)
            require(self.modulate in MODULATE, "modulate", f"one of {MODULATE}", self.modulate)
            require(self.modulation_ends >= self.modulation_starts, "modulation_ends",
                    f">= modulation_starts ({self.modulation_starts})", self.modulation_ends)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.epoch = 0
        self.last_coefficients: dict[str, float] | None = None  # of the latest batch, inside the window
        self._pending: dict[str, float] | None = None
        self._params_cache: tuple[int, dict[str, list]] | None = None

    def in_window(self) -> bool:
        return self.args.modulation_starts <= self.epoch <= self.args.modulation_ends

    def on_epoch_start(self, model, epoch: int) -> None:
        self.epoch = int(epoch)

    def training_step(self, model, inputs, labels) -> StepResult:
        features = model.encode(inputs)
        fused = model.fusion(features)
        unimodal, probe_loss = probe_unimodal_logits(model, features, labels)
        losses = {"fused": hard_cross_entropy(fused, labels), "probe": probe_loss}

        _, ratios, coeffs = ogm_coefficients(unimodal, labels, self.args.alpha_ogm, self.args.coeff_form)
        active = self.in_window()
        self._pending = coeffs if active else None
        self.last_coefficients = coeffs if active else None
        n = float(len(labels))
        stats: dict[str, float] = {}
        for u, k in coeffs.items():
            k_eff = k if active else 1.0
            stats[f"ogm_coeff/{u}"] = k_eff * n
            stats[f"ogm_modulated/{u}"] = n if k_eff < 1.0 else 0.0
        return StepResult(sum(losses.values()), fused.detach(), {u: z.detach() for u, z in unimodal.items()},
                          stats, losses)

    def _parameters(self, model) -> dict[str, list]:
        if self._params_cache is None or self._params_cache[0] != id(model):
            self._params_cache = (id(model), modulated_parameters(model, self.args.modulate))
        return self._params_cache[1]

    @torch.no_grad()
    def after_backward(self, model) -> None:
        coeffs, self._pending = self._pending, None  # a coefficient is used at most once
        if coeffs is None:
            return
        ge = self.args.ge
        for u, params in self._parameters(model).items():
            k = coeffs.get(u, 1.0)
            if k == 1.0 and not ge:
                continue
            for p in params:
                g = p.grad
                if g is None:
                    continue
                if ge:
                    spread = g.float().std() if g.numel() > 1 else g.new_zeros((), dtype=torch.float32)
                    std = torch.nan_to_num(spread, nan=0.0, posinf=0.0, neginf=0.0) + 1e-8
                    noise = torch.randn_like(g) * std.to(g.dtype)
                    g.mul_(k).add_(noise)
                else:
                    g.mul_(k)
