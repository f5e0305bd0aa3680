"""DGL: disentangled gradient learning.

Wei, Luo and Luo, "Boosting Multimodal Learning via Disentangled Gradient
Learning", ICCV 2025, arXiv 2507.10213 (reference [30] and a Table I row of
the BMLR paper). The public code (shicaiwei123/ICCV2025-GDL, ``main_dgl.py``
and ``models/fusion_modules.py``) was read for the details. No code was
copied from it.

DGL cuts the gradient that the multimodal loss sends back to each modality
encoder and replaces it with the gradient of that modality's unimodal loss.
It also removes the unimodal losses' gradient from the fusion module:

    L = L^0(fusion(sg(z)), y) + alpha_dgl * sum_u L^u(unimodal^u, y)

Here ``sg`` stops the gradient, and the unimodal logits use the fusion's
decision layer with its parameters detached. So the encoders learn only from
``L^u`` and the fused head only from ``L^0``. This is done in one forward and
one backward pass by detaching. (The original runs two backward passes and
sets the fusion gradients to None between them, which comes to the same
gradients.)

Where we had to choose:

* **Unimodal heads.** DGL does not add separate classifiers. For concat and
  sum, the public code runs the fusion's own decision layer with the other
  modality's features set to zero: ``fc_out([z^a; 0]) = W^a z^a + b``, the
  full bias. We do the same for any decomposable fusion: the fused head, with
  its parameters detached (``torch.func.functional_call``), applied to the
  features with every other modality zeroed. ``unimodal_bias="split"``
  instead uses the project's equation 3 logits, ``W^u z^u + b/|M|``. Film
  and gated fusions have no such split. DGL's code uses improvised
  "self-interaction" paths through the shared head for them, and those do not
  carry over to our FiLM/gated modules. So, as in the rest of the project,
  each modality uses its separate unimodal head (part of its branch), which
  is trained with its encoder by ``L^u``.
* **Evaluation.** ``predict`` reports the unimodal logits that were trained
  (the full bias by default), as DGL's ``valid`` does, so the unimodal
  accuracies describe the same classifiers.
* **alpha_dgl** weights the unimodal losses. The default 4.0 is the public
  code's default; its CREMA-D scripts use 4 and 5. Because the encoders see
  only ``L^u``, alpha acts as an encoder learning-rate multiplier under SGD
  (the original's optimizer). Under Adam it cancels, up to epsilon.
* **grad_clip.** The public code clips the global gradient norm of all model
  parameters at 40 before every step. We do the same in ``after_backward``
  (the gradients are already unscaled there). Set it to 0 to turn clipping
  off.

How DGL differs from ``only_tpo`` (BMLR's Table V ablation, which the BMLR
paper says was inspired by DGL). The gradient routing is the same. The
differences are:

1. ``alpha_dgl`` weights the unimodal losses (only_tpo uses 1);
2. the unimodal logits carry the full bias ``b`` (only_tpo uses ``b/|M|``);
3. the gradient norm is clipped at 40.

With ``alpha_dgl=1``, ``unimodal_bias="split"`` and ``grad_clip=0``, DGL
gives the same loss and gradients as only_tpo. The test suite checks this.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call

from bmlr.methods.args import require
from bmlr.methods.base import METHODS, Method, StepResult, detached, hard_cross_entropy

UNIMODAL_BIAS = ("full", "split")


def alone_logits(fusion, features: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per modality, the fused head with detached parameters applied to ``z^u`` alone (others zero).

    For concat and sum this is ``W^u z^u + b``. Gradients reach only the features.
    """
    state = {name: p.detach() for name, p in fusion.named_parameters()}
    state.update(dict(fusion.named_buffers()))
    out = {}
    for u in fusion.modalities:
        alone = {w: z if w == u else torch.zeros_like(z) for w, z in features.items()}
        out[u] = functional_call(fusion, state, (alone,))
    return out


def dgl_unimodal_logits(fusion, features: dict[str, Tensor], bias: str = "full") -> dict[str, Tensor]:
    """The unimodal logits whose loss trains the encoders under DGL (the head gets no gradient)."""
    if bias not in UNIMODAL_BIAS:
        raise ValueError(f"unimodal_bias must be one of {UNIMODAL_BIAS}, got {bias!r}")
    if fusion.separate_unimodal_heads:
        return fusion.unimodal_logits(features)  # branch heads, trained with their encoder
    if bias == "full":
        return alone_logits(fusion, features)
    return fusion.unimodal_logits(features, detach_head=True)


@METHODS.register("dgl")
class DGL(Method):
    """Encoders learn only from their unimodal losses, and the fused head only from L^0 on detached features."""

    reads = ()

    @dataclass(frozen=True)
    class Args:
        """The ``method_args`` of dgl.

        Args:
            alpha_dgl: weight of the unimodal losses, > 0 (the public code's default 4).
            unimodal_bias: ``"full"`` (``W^u z^u + b``, as DGL) or ``"split"`` (``b/|M|``, equation 3).
            grad_clip: global gradient-norm clip before every step, >= 0 (0 = off).
        """

        alpha_dgl: float = 4.0
        unimodal_bias: str = "full"
        grad_clip: float = 40.0

        def __post_init__(self) -> None:
            require(self.unimodal_bias in UNIMODAL_BIAS, "unimodal_bias", f"one of {UNIMODAL_BIAS}",
                    self.unimodal_bias)
            require(self.alpha_dgl > 0, "alpha_dgl", "> 0", self.alpha_dgl)
            require(self.grad_clip >= 0, "grad_clip", ">= 0 (0 = off)", self.grad_clip)

    def training_step(self, model, inputs, labels) -> StepResult:
        features = model.encode(inputs)
        fused = model.fusion(detached(features))  # L^0 reaches only the fusion module
        unimodal = dgl_unimodal_logits(model.fusion, features, self.args.unimodal_bias)  # L^u: encoders only
        alpha = self.args.alpha_dgl
        losses = {"fused": hard_cross_entropy(fused, labels)}
        losses.update({u: alpha * hard_cross_entropy(z, labels) for u, z in unimodal.items()})
        return StepResult(sum(losses.values()), fused.detach(), {u: z.detach() for u, z in unimodal.items()},
                          {}, losses)

    def predict(self, model, inputs):
        """Fused logits, plus the unimodal logits that were trained (full bias by default, as DGL evaluates them)."""
        features = model.encode(inputs)
        return model.fusion(features), dgl_unimodal_logits(model.fusion, features, self.args.unimodal_bias)

    def after_backward(self, model) -> None:
        clip = self.args.grad_clip
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip, norm_type=2.0)
