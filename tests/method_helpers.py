"""Helpers the method tests share: a tiny two-modality model and gradients that keep unused
parameters (as zeros) so that lists of them line up."""
from __future__ import annotations

import math

import torch

from bmlr.models import build_model

C = 5
L3 = math.log(3.0)  # softmax([ln 3, 0]) = [0.75, 0.25]


def tiny_model(fusion: str = "concat", seed: int = 0):
    torch.manual_seed(seed)
    encoders = {
        "audio": ("resnet_audio", {"in_channels": 1, "base_width": 4, "blocks": (1, 1, 1, 1)}),
        "visual": ("resnet_visual", {"base_width": 4, "blocks": (1, 1, 1, 1)}),
    }
    return build_model(encoders, fusion, C)


def grads(loss, params):
    out = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, out)]
