"""Balanced multimodal label-space reshaping (BMLR, equations 3-8).

Ma et al., "Balancing Multimodal Learning through Label Space Reshaping",
arXiv 2605.28869, Section III-B. For a sample with label y and unimodal
predictions p^u = softmax(logits^u) (equation 3), modality u and its
complementary modality w give

    lambda^u = y.p^u / y.p^w                          (equation 4)
    d^u      = softmax(logits^w / T), T = alpha * lambda^w = alpha / lambda^u   (equation 5)
    xi^u     = 1 - 1/lambda^u  if 1 < lambda^u < 1/beta, else 0               (equation 7)
    y~^u     = xi^u d^u + (1 - xi^u) y                (equations 6 and 8)

The temperature uses the OTHER modality's lambda, as written, so the dominant
modality's target gets sharper as the imbalance grows.

Choices:

* Log space. log lambda^u = log p^u_y - log p^w_y from log_softmax, never a
  division of probabilities, so an underflowed confidence gives no inf/nan.
  The condition 1 < lambda < 1/beta is tested exactly as
  0 < log lambda < -log beta (-log 0 = +inf; lambda == 1 gives xi = 0).
  Only the temperature factor exp(log lambda) uses log lambda clamped to
  [-LOG_LAMBDA_CLAMP, LOG_LAMBDA_CLAMP] = [-30, 30] (lambda in about
  [9e-14, 1e13]); beyond that the target is already a one-hot-like argmax.
* Inputs are the unimodal logits including the bias share b/|M|; that
  convention belongs to the fusion (bmlr.models.fusion), not to this module.
  They are detached and computed in float32 (float64 if any input is float64).
* Three modalities (Section IV-F: "focus on the strongest and weakest
  modalities ... keeping the intermediate modality unchanged"): per sample the
  modalities are ordered by confidence y.p^u (stable: ties keep modality
  order); the strongest and the weakest are each paired with the intermediate
  one, which keeps its one-hot label (xi = 0, partner = itself). Consequence:
  the weakest has lambda <= 1 against the intermediate, so it is never
  reshaped; only the strongest modality is ever smoothed. Two modalities are
  the case partner = (1, 0). One vectorised path serves both.
* Mini-batch use: callers pass the detached logits of the current forward
  pass (the practical reading of Algorithm 1); nothing here keeps state.

Rules (the ablations of Tables IV and V):
    "bmlr"     xi d + (1 - xi) y                        (equation 8)
    "vanilla"  d where xi > 0, else y                   (Vanilla-Reshape)
    "uniform"  xi / C + (1 - xi) y                      (Uni-Reshaping, LFM)
    "distill"  w y + (1 - w) softmax(partner logits), T = 1, for every sample
               whose modality has a partner; intensity reported as 1 - w there
               (Uni-Distill; w = `label_weight`: 0 here, the partner's prediction
               alone; the uni_distill method passes its own, default 0.5)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

RULES = ("bmlr", "vanilla", "uniform", "distill")
LOG_LAMBDA_CLAMP = 30.0


@dataclass
class Reshaping:
    labels: dict[str, Tensor]        # [N, C] reshaped label distributions, no grad
    intensity: dict[str, Tensor]     # xi^u, [N]
    reshaped_count: dict[str, int]   # samples with xi^u > 0 (Figure 3a)
    wrong_top_count: dict[str, int]  # reshaped samples whose target's top class is not the label
    partner: dict[str, Tensor]       # [N] long: index of the complementary modality (own index if none)


def reshape_labels(targets: Tensor, unimodal_logits: dict[str, Tensor], alpha: float,
                   beta: float) -> dict[str, Tensor]:
    """Reshaped label distributions of equation 8, modality -> [N, C]."""
    return compute_reshaping(targets, unimodal_logits, alpha, beta, rule="bmlr").labels


def _finite(name: str, value, expected: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {expected}, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def _validate(targets, unimodal_logits, alpha, beta, rule) -> tuple[float, float]:
    alpha = _finite("alpha", alpha, "a finite number > 0")
    if alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    beta = _finite("beta", beta, "a finite number in [0, 1]")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be a finite number in [0, 1], got {beta!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if not isinstance(unimodal_logits, dict) or not 2 <= len(unimodal_logits) <= 3:
        count = len(unimodal_logits) if isinstance(unimodal_logits, dict) else type(unimodal_logits).__name__
        raise ValueError(f"unimodal_logits must be a dict of 2 or 3 modalities, got {count}")
    shapes = {u: tuple(z.shape) for u, z in unimodal_logits.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or first[1] < 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"unimodal_logits must all have the same shape [N, C] with C >= 1, got {shapes}")
    if any(not z.is_floating_point() for z in unimodal_logits.values()):
        dtypes = {u: z.dtype for u, z in unimodal_logits.items()}
        raise ValueError(f"unimodal_logits must be floating point, got {dtypes}")
    if not isinstance(targets, Tensor) or targets.is_floating_point() or targets.is_complex() \
            or targets.dtype == torch.bool or tuple(targets.shape) != first[:1]:
        desc = f"{targets.dtype} {tuple(targets.shape)}" if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be an integer tensor of shape [N] = {first[:1]}, got {desc}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= first[1]):
        raise ValueError(f"targets must lie in [0, C) = [0, {first[1]}), got values in "
                         f"[{int(targets.min())}, {int(targets.max())}]")
    return alpha, beta


@torch.no_grad()
def compute_reshaping(targets: Tensor, unimodal_logits: dict[str, Tensor], alpha: float, beta: float,
                      rule: str = "bmlr", label_weight: float = 0.0) -> Reshaping:
    """Reshaped targets and their statistics for every modality (equations 3-8, see the module doc).
    `label_weight` is the one-hot share of the "distill" rule's target; other rules ignore it."""
    alpha, beta = _validate(targets, unimodal_logits, alpha, beta, rule)
    label_weight = _finite("label_weight", label_weight, "a finite number in [0, 1]")
    if not 0.0 <= label_weight <= 1.0:
        raise ValueError(f"label_weight must be a finite number in [0, 1], got {label_weight!r}")
    names = list(unimodal_logits)
    dtype = torch.float64 if any(z.dtype == torch.float64 for z in unimodal_logits.values()) else torch.float32
    logits = torch.stack([z.detach().to(dtype) for z in unimodal_logits.values()])  # [M, N, C]
    num_mod, n, num_classes = logits.shape
    y = targets.to(logits.device).long()
    onehot = torch.nn.functional.one_hot(y, num_classes).to(dtype)                 # [N, C]

    logp_y = logits.log_softmax(-1).gather(-1, y.expand(num_mod, n)[..., None])[..., 0]  # [M, N]
    if num_mod == 2:
        partner = torch.tensor([[1], [0]], device=logits.device).expand(2, n)
    else:  # pair strongest and weakest with the intermediate; intermediate with itself
        order = torch.sort(logp_y, dim=0, descending=True, stable=True).indices  # [3, N], strongest first
        partner = torch.empty_like(order).scatter_(0, order, order[1].expand(num_mod, n))
    partner_logits = logits.gather(0, partner[..., None].expand(num_mod, n, num_classes))

    log_lam = logp_y - logp_y.gather(0, partner)                                   # log lambda^u, [M, N]
    max_log = math.inf if beta == 0 else -math.log(beta)
    active = (log_lam > 0) & (log_lam < max_log)                                   # 1 < lambda < 1/beta
    xi = torch.where(active, -torch.expm1(-log_lam), torch.zeros_like(log_lam))    # 1 - 1/lambda
    scale = log_lam.clamp(-LOG_LAMBDA_CLAMP, LOG_LAMBDA_CLAMP).exp() / alpha        # 1/T = lambda^u/alpha
    d = (partner_logits * scale[..., None]).softmax(-1)                            # [M, N, C]

    if rule == "bmlr":
        labels = xi[..., None] * d + (1 - xi[..., None]) * onehot
    elif rule == "vanilla":
        labels = torch.where(active[..., None], d, onehot)
    elif rule == "uniform":
        labels = xi[..., None] / num_classes + (1 - xi[..., None]) * onehot
    else:  # distill
        has_partner = partner != torch.arange(num_mod, device=logits.device)[:, None]
        distilled = label_weight * onehot + (1 - label_weight) * partner_logits.softmax(-1)
        labels = torch.where(has_partner[..., None], distilled, onehot)
        xi = has_partner.to(dtype) * (1 - label_weight)

    reshaped = xi > 0
    wrong_top = reshaped & (labels.gather(-1, y.expand(num_mod, n)[..., None])[..., 0] < labels.amax(-1))
    return Reshaping(
        labels={u: labels[m] for m, u in enumerate(names)},
        intensity={u: xi[m] for m, u in enumerate(names)},
        reshaped_count={u: int(reshaped[m].sum()) for m, u in enumerate(names)},
        wrong_top_count={u: int(wrong_top[m].sum()) for m, u in enumerate(names)},
        partner={u: partner[m].clone() for m, u in enumerate(names)},
    )
