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
* Three modalities (Section IV-F: "we focus on the strongest and weakest
  modalities during label space reshaping, while keeping the intermediate
  modality unchanged. This design aligns the mapping difficulty of the strong
  and weak modalities with that of the intermediate modality"). The paper
  does not say whether "strongest" is decided per sample or for the data set,
  so `pairing` offers three readings (two modalities: always each other):

  - "per_sample" (default, the code before issue 17): per sample the
    modalities are ordered by confidence y.p^u (stable: ties keep modality
    order); the strongest and the weakest are each paired with the
    intermediate one, which keeps its one-hot label (xi = 0, partner =
    itself). Consequence: the weakest has lambda <= 1 against the
    intermediate, so under equation 7 it is never reshaped; only each
    sample's strongest modality is ever smoothed, never "aligned" upward.
  - "dataset_order": the same pairing, but strongest / intermediate / weakest
    is one order for the whole batch, the modalities' data-set-level
    confidence (`order`, strongest first; the method passes the mean y.p^u of
    the last training epoch, see `RunningConfidence`; without one, the
    batch's mean y.p^u). lambda stays per sample, so the data-set-weakest
    modality IS reshaped on the samples where it beats the intermediate one,
    and the data-set-intermediate modality never is.
  - "strongest_weakest": per sample, the strongest and the weakest are each
    other's partner and the intermediate keeps its one-hot label: the
    strongest is smoothed toward the weakest's prediction (the largest
    lambda, so the beta gate cuts it off first).
* Mini-batch use: callers pass the detached logits of the current forward
  pass (the practical reading of Algorithm 1); `compute_reshaping` keeps no
  state (the data-set-level `order` comes from the caller).

Rules (the ablations of Tables IV and V):
    "bmlr"     xi d + (1 - xi) y                        (equation 8)
    "vanilla"  Vanilla-Reshape, `Readings.vanilla_target`:
               "d_else_label" (default) d where xi > 0, else y;
               "xi_d"  xi d: equation 8 with its (1 - xi) I term deleted,
                       unnormalised; xi = 0 gives the zero target, so that
                       sample adds no unimodal loss;
               "d"     d for every sample (no fallback to y)
               (in every reading, a modality without a partner, the
               intermediate of three, keeps y)
    "uniform"  Uni-Reshaping, eps u + (1 - eps) y where the intensity eps is
               xi (`Readings.uniform_gate` "beta", default) or the constant
               `Readings.smoothing` for every sample ("none", plain label
               smoothing, every modality) and u is 1/C on every class (`uniform_share`
               "all_classes", default: classic label smoothing) or 1/(C-1)
               on every non-target class ("non_target": the paper's words,
               "distributes a small equal probability across all non-target
               classes"; with C = 1 the target stays one-hot)
    "distill"  w y + (1 - w) softmax(partner logits), T = 1, for every sample
               whose modality has a partner; intensity reported as 1 - w there
               (Uni-Distill; w = `label_weight`: 0 here, the partner's prediction
               alone; the uni_distill method passes its own, default 0.5)

The paper describes Vanilla-Reshape only as "preserves the imbalance-aware
design but removes the original supervision signal in Equation 8" and
Uni-Reshaping only as the "Uniform Reshaping (Uni-Reshaping) method mentioned
in LFM [20], which distributes a small equal probability across all
non-target classes"; the defaults above are our readings, the others the
literal ones (`Readings`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RULES", "PAIRINGS", "VANILLA_TARGETS", "UNIFORM_SHARES", "UNIFORM_GATES", "LOG_LAMBDA_CLAMP",
           "Readings", "Reshaping", "RunningConfidence", "compute_reshaping", "reshape_labels"]

RULES = ("bmlr", "vanilla", "uniform", "distill")
PAIRINGS = ("per_sample", "dataset_order", "strongest_weakest")
VANILLA_TARGETS = ("d_else_label", "xi_d", "d")
UNIFORM_SHARES = ("all_classes", "non_target")
UNIFORM_GATES = ("beta", "none")
LOG_LAMBDA_CLAMP = 30.0


@dataclass(frozen=True)
class Readings:
    """Which reading of an ablation the paper leaves open (module doc, "Rules"); the defaults
    are the project's original readings.

    Args:
        vanilla_target: the "vanilla" rule's target, one of ``VANILLA_TARGETS``.
        uniform_share: where the "uniform" rule puts the smoothed mass, one of ``UNIFORM_SHARES``.
        uniform_gate: the "uniform" rule's intensity, xi ("beta") or ``smoothing`` ("none").
        smoothing: the constant intensity of ``uniform_gate = "none"``, in [0, 1].
    """

    vanilla_target: str = "d_else_label"
    uniform_share: str = "all_classes"
    uniform_gate: str = "beta"
    smoothing: float = 0.1

    def __post_init__(self) -> None:
        for name, value, choices in (("vanilla_target", self.vanilla_target, VANILLA_TARGETS),
                                     ("uniform_share", self.uniform_share, UNIFORM_SHARES),
                                     ("uniform_gate", self.uniform_gate, UNIFORM_GATES)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        smoothing = _finite("smoothing", self.smoothing, "a finite number in [0, 1]")
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"smoothing must be a finite number in [0, 1], got {self.smoothing!r}")


@dataclass
class Reshaping:
    labels: dict[str, Tensor]        # [N, C] reshaped label distributions, no grad
    intensity: dict[str, Tensor]     # xi^u, [N]
    reshaped_count: dict[str, int]   # samples with xi^u > 0 (Figure 3a)
    wrong_top_count: dict[str, int]  # reshaped samples whose target's top class is not the label
    partner: dict[str, Tensor]       # [N] long: index of the complementary modality (own index if none)


class RunningConfidence:
    """Each modality's data-set-level confidence: the mean true-class probability y.p^u over
    the training samples of the last completed epoch (`end_epoch` closes one), or of the
    epoch so far while none has completed. Used for `pairing="dataset_order"` and by UDI to
    pick its anchor. Kept in checkpoints through `state_dict`."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self._sums: dict[str, float] = {}
        self._count = 0

    @torch.no_grad()
    def update(self, targets: Tensor, unimodal_logits: dict[str, Tensor]) -> None:
        """Add one batch's true-class probabilities."""
        y = targets.long()[:, None]
        for u, z in unimodal_logits.items():
            p_y = z.detach().float().softmax(-1).gather(1, y.to(z.device))
            self._sums[u] = self._sums.get(u, 0.0) + float(p_y.sum())
        self._count += int(targets.shape[0])

    def end_epoch(self) -> None:
        """Make the epoch so far the last completed one (no-op for an epoch without batches)."""
        if self._count:
            self.last = {u: s / self._count for u, s in self._sums.items()}
        self._sums, self._count = {}, 0

    def current(self) -> dict[str, float]:
        """Last completed epoch's means, else the epoch so far's, else empty."""
        if self.last:
            return dict(self.last)
        return {u: s / self._count for u, s in self._sums.items()} if self._count else {}

    def order(self) -> list[str] | None:
        """Modalities from the most to the least confident (ties keep their order), or None."""
        conf = self.current()
        return sorted(conf, key=lambda u: -conf[u]) if conf else None

    def state_dict(self) -> dict:
        return {"last": dict(self.last), "sums": dict(self._sums), "count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self.last = {str(u): float(v) for u, v in state.get("last", {}).items()}
        self._sums = {str(u): float(v) for u, v in state.get("sums", {}).items()}
        self._count = int(state.get("count", 0))


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
                      rule: str = "bmlr", label_weight: float = 0.0, readings: Readings | None = None,
                      pairing: str = "per_sample", order: Sequence[str] | None = None) -> Reshaping:
    """Reshaped targets and their statistics for every modality (equations 3-8, see the module doc).
    `label_weight` is the one-hot share of the "distill" rule's target, `readings` the reading of
    the "vanilla" and "uniform" rules; other rules ignore them. `pairing` and `order` (modality
    names, most confident first, for "dataset_order") matter for three modalities only."""
    alpha, beta = _validate(targets, unimodal_logits, alpha, beta, rule)
    label_weight = _finite("label_weight", label_weight, "a finite number in [0, 1]")
    if not 0.0 <= label_weight <= 1.0:
        raise ValueError(f"label_weight must be a finite number in [0, 1], got {label_weight!r}")
    readings = readings or Readings()
    names = list(unimodal_logits)
    dtype = torch.float64 if any(z.dtype == torch.float64 for z in unimodal_logits.values()) else torch.float32
    logits = torch.stack([z.detach().to(dtype) for z in unimodal_logits.values()])  # [M, N, C]
    num_mod, n, num_classes = logits.shape
    y = targets.to(logits.device).long()
    onehot = torch.nn.functional.one_hot(y, num_classes).to(dtype)                 # [N, C]

    logp_y = logits.log_softmax(-1).gather(-1, y.expand(num_mod, n)[..., None])[..., 0]  # [M, N]
    partner = _partners(logp_y, names, pairing, order)
    partner_logits = logits.gather(0, partner[..., None].expand(num_mod, n, num_classes))

    log_lam = logp_y - logp_y.gather(0, partner)                                   # log lambda^u, [M, N]
    max_log = math.inf if beta == 0 else -math.log(beta)
    active = (log_lam > 0) & (log_lam < max_log)                                   # 1 < lambda < 1/beta
    xi = torch.where(active, -torch.expm1(-log_lam), torch.zeros_like(log_lam))    # 1 - 1/lambda
    scale = log_lam.clamp(-LOG_LAMBDA_CLAMP, LOG_LAMBDA_CLAMP).exp() / alpha        # 1/T = lambda^u/alpha
    d = (partner_logits * scale[..., None]).softmax(-1)                            # [M, N, C]

    has_partner = partner != torch.arange(num_mod, device=logits.device)[:, None]  # [M, N]
    if rule == "bmlr":
        labels = xi[..., None] * d + (1 - xi[..., None]) * onehot
    elif rule == "vanilla":
        labels = _vanilla(readings.vanilla_target, xi, active, d, onehot, has_partner)
    elif rule == "uniform":
        xi = xi if readings.uniform_gate == "beta" else torch.full_like(xi, readings.smoothing)
        labels = _uniform(readings.uniform_share, xi, onehot)
    else:  # distill
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


def _partners(logp_y: Tensor, names: list[str], pairing: str, order: Sequence[str] | None) -> Tensor:
    """[M, N] long: each modality's partner index per sample (its own index: no partner)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    num_mod, n = logp_y.shape
    device = logp_y.device
    if num_mod == 2:
        return torch.tensor([[1], [0]], device=device).expand(2, n)
    if pairing == "dataset_order":
        if order is None:  # the batch's mean confidence stands in for the data set's
            ranks = torch.sort(logp_y.exp().mean(1), descending=True, stable=True).indices
        else:
            if sorted(order) != sorted(names):
                raise ValueError(f"order must list the modalities {names} once each, got {list(order)!r}")
            ranks = torch.tensor([names.index(u) for u in order], device=device)
        ranked = ranks[:, None].expand(num_mod, n)
    else:
        ranked = torch.sort(logp_y, dim=0, descending=True, stable=True).indices  # [3, N], strongest first
    if pairing == "strongest_weakest":
        source = ranked.flip(0)  # strongest <-> weakest, the intermediate with itself
    else:
        source = ranked[1].expand(num_mod, n)  # strongest and weakest with the intermediate
    return torch.empty((num_mod, n), dtype=torch.long, device=device).scatter_(0, ranked, source)


def _vanilla(target: str, xi: Tensor, active: Tensor, d: Tensor, onehot: Tensor, has_partner: Tensor) -> Tensor:
    """Vanilla-Reshape's target under the reading `target` (module doc, "Rules"); a modality
    without a partner (the intermediate of three) keeps its one-hot label in every reading."""
    if target == "d_else_label":
        return torch.where(active[..., None], d, onehot)
    reshaped = xi[..., None] * d if target == "xi_d" else d
    return torch.where(has_partner[..., None], reshaped, onehot)


def _uniform(share: str, eps: Tensor, onehot: Tensor) -> Tensor:
    """Uni-Reshaping's target eps u + (1 - eps) y, u per `share` (module doc, "Rules")."""
    num_classes = onehot.shape[-1]
    if share == "all_classes":
        spread = torch.full_like(onehot, 1.0 / num_classes)
    elif num_classes == 1:
        spread = onehot
    else:
        spread = (1 - onehot) / (num_classes - 1)
    return eps[..., None] * spread + (1 - eps[..., None]) * onehot
