"""Baseline: the multimodal cross-entropy only (the paper's Table I "Baseline")."""
from __future__ import annotations

from bmlr.methods.base import METHODS, Method, StepResult, hard_cross_entropy, probe_unimodal_logits


@METHODS.register("baseline")
class Baseline(Method):
    """Joint training with L^0 only; every parameter sees the fused loss."""

    reads = ()

    def training_step(self, model, inputs, labels) -> StepResult:
        features = model.encode(inputs)
        fused = model.fusion(features)
        unimodal, probe_loss = probe_unimodal_logits(model, features, labels)
        losses = {"fused": hard_cross_entropy(fused, labels), "probe": probe_loss}
        return StepResult(sum(losses.values()), fused.detach(), {u: z.detach() for u, z in unimodal.items()},
                          losses=losses)
