"""BMLR and the paper's ablations, as one parameterised method.

Ma et al., "Balancing Multimodal Learning through Label Space Reshaping",
arXiv 2605.28869. Every variant optimises

    L = L^0(fused, y) + sum_u L^u(unimodal^u, target^u)          (equations 9-10)

and differs in two switches:

* ``rule``: how target^u is built: ``None`` = the one-hot label, otherwise a
  rule of `bmlr.reshaping.compute_reshaping` ("bmlr" = equations 3-8).
* ``targeted``: Targeted Parameter Optimization (equation 11). Each encoder is
  updated only by its own L^u and the decision layer (W, b and the fusion's
  layers) only by L^0. This is done in ONE forward and ONE backward pass by
  detaching: L^0 is computed from detached features, and the unimodal logits
  of L^u from detached decision weights (``fusion.unimodal_logits(...,
  detach_head=True)``). FiLM and gated fusions give each modality its own
  unimodal head, which belongs to that modality's branch and learns from L^u.
  Without ``targeted`` all losses reach all parameters (joint optimisation).

Reshaped targets come from the same forward pass on the current mini-batch,
detached (the practical reading of Algorithm 1, which writes the reshaping as
a pass over the data before the updates; see IMPLEMENTATION-NOTES 4).

| name              | rule    | targeted | paper                           |
|-------------------|---------|----------|---------------------------------|
| uniform_baseline  | one-hot | no       | Table I "Uniform-Baseline", eq. 9 (w^u = 1) |
| only_tpo          | one-hot | yes      | Table V "Only-TPO"              |
| bmlr              | bmlr    | yes      | BMLR (eqs. 3-11)                |
| only_reshape      | bmlr    | no       | Table V "Only-Reshape"          |
| uni_distill       | distill | yes (*)  | Table V "Uni-Distill"           |
| vanilla_reshape   | vanilla | yes (*)  | Table V "Vanilla-Reshape"       |
| uni_reshaping     | uniform | yes (*)  | Table IV "Uni-Reshaping" (not LFM itself) |

(*) Uni-Distill, Vanilla-Reshape and Uni-Reshaping are ambiguous in the paper: each
row's default is our reading, and its ``method_args`` offer the literal ones (see
`UniDistill`, `VanillaReshape`, `UniReshaping` and `bmlr.reshaping`). A result of a
default row is a result about that reading, not about "the paper's" ablation.

Every row that reshapes takes ``method_args.pairing`` (three modalities only, see
`bmlr.reshaping`): "per_sample" (default), "dataset_order" (the order of the
modalities' mean true-class probability over the last training epoch, kept by a
`RunningConfidence` in the checkpoint) or "strongest_weakest".
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import Any

from bmlr.methods.args import require
from bmlr.methods.base import METHODS, Method, StepResult, detached, hard_cross_entropy, soft_cross_entropy
from bmlr.reshaping import PAIRINGS, UNIFORM_GATES, UNIFORM_SHARES, VANILLA_TARGETS, Readings, \
    RunningConfidence, compute_reshaping


@dataclass(frozen=True)
class ReshapeArgs:
    """The ``method_args`` every reshaping row takes.

    Args:
        pairing: which modalities are paired when there are three, one of
            ``bmlr.reshaping.PAIRINGS`` (see that module; two modalities ignore it).
    """

    pairing: str = "per_sample"

    def __post_init__(self) -> None:
        require(self.pairing in PAIRINGS, "pairing", f"one of {PAIRINGS}", self.pairing)


class LabelTargetMethod(Method):
    """One row of the table above: ``rule`` (None = one-hot targets) and ``targeted`` (TPO).
    Each row says in ``reads`` which of ``alpha`` (the temperature, equation 5) and ``beta``
    (the threshold, equation 7) its rule uses; the one-hot rows read neither."""

    rule: str | None = None
    targeted: bool = False
    reads = ()

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.confidence = RunningConfidence()  # data-set-level confidence, for pairing "dataset_order"

    def training_step(self, model, inputs, labels) -> StepResult:
        features = model.encode(inputs)
        if self.targeted:
            fused = model.fusion(detached(features))  # L^0 reaches only the decision layer
            unimodal = model.fusion.unimodal_logits(features, detach_head=True)  # L^u reaches only encoder u
        else:
            fused = model.fusion(features)
            unimodal = model.fusion.unimodal_logits(features)

        losses = {"fused": hard_cross_entropy(fused, labels)}
        stats: dict[str, float] = {}
        if self.rule is None:
            losses.update({u: hard_cross_entropy(z, labels) for u, z in unimodal.items()})
        else:
            reshaping = compute_reshaping(labels, unimodal, self.cfg.alpha, self.cfg.beta, rule=self.rule,
                                          **self.pairing_kwargs(labels, unimodal), **self.rule_kwargs())
            losses.update({u: soft_cross_entropy(z, reshaping.labels[u]) for u, z in unimodal.items()})
            for u in unimodal:
                stats[f"reshaped/{u}"] = float(reshaping.reshaped_count[u])
                stats[f"wrong_top/{u}"] = float(reshaping.wrong_top_count[u])
        return StepResult(sum(losses.values()), fused.detach(), {u: z.detach() for u, z in unimodal.items()},
                          stats, losses)

    def rule_kwargs(self) -> dict:
        """Extra arguments of `compute_reshaping` for this method's rule."""
        return {}

    def pairing_kwargs(self, labels, unimodal) -> dict:
        """`pairing` and, for "dataset_order", the modality order by data-set confidence (the
        last epoch's, or this epoch's so far in the first one, this batch included)."""
        pairing = self.args.pairing
        if pairing != "dataset_order":
            return {"pairing": pairing}
        self.confidence.update(labels, unimodal)
        return {"pairing": pairing, "order": self.confidence.order()}

    def on_epoch_start(self, model, epoch: int) -> None:
        self.confidence.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        return {"confidence": self.confidence.state_dict()} if self.rule is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "confidence" in state:
            self.confidence.load_state_dict(state["confidence"])


@METHODS.register("uniform_baseline")
class UniformBaseline(LabelTargetMethod):
    """Multimodal + unimodal one-hot CE, all parameters jointly (equation 9, w^u = 1)."""
    rule, targeted = None, False


@METHODS.register("only_tpo")
class OnlyTPO(LabelTargetMethod):
    """One-hot unimodal targets with targeted parameter optimization (Table V)."""
    rule, targeted = None, True


@METHODS.register("bmlr")
class BMLR(LabelTargetMethod):
    """Label reshaping (equations 3-8) + targeted parameter optimization (equation 11)."""
    rule, targeted, reads = "bmlr", True, ("alpha", "beta")
    Args = ReshapeArgs


@METHODS.register("only_reshape")
class OnlyReshape(LabelTargetMethod):
    """Reshaped labels with joint optimization (Table V)."""
    rule, targeted, reads = "bmlr", False, ("alpha", "beta")
    Args = ReshapeArgs


@METHODS.register("uni_distill")
class UniDistill(LabelTargetMethod):
    """Plain cross-modal distillation without the imbalance-aware designs (Table V): each
    modality's target mixes its one-hot label with the partner modality's softmax at T = 1,
    ``w y + (1 - w) softmax(z^partner)``, for every sample, with a fixed w; TPO is kept.

    The paper says only that Uni-Distill "removes all imbalance-aware designs and uses only
    cross-modal prediction logits as supervision signals", and presents it with Vanilla-Reshape
    as a variant of the reshaping module (equation 8, xi d + (1 - xi) y). Our reading: the
    imbalance-aware parts (the lambda-dependent xi and T, the beta trigger) go, the partner's
    plain prediction replaces d, and the label term stays, with the fixed weight
    ``label_weight`` = 0.5 (no published value). Reasonable people read it differently, so:

    * ``label_weight: 0``: targets are the partner's softmax alone (the most literal reading).
      With TPO the encoders then never see a label; trained from scratch they collapse to near
      chance (AV-MNIST, 5 epochs: 23.9 %, where the paper reports 55-74 % on its data sets).
    * ``joint: true``: drop targeted parameter optimization too, so the multimodal loss also
      trains the encoders (as in Only-Reshape); combine with ``label_weight: 0`` for
      "partner's prediction alone, joint optimisation".
    """
    # the partner's plain softmax: no threshold, no temperature
    rule, targeted, reads = "distill", True, ()
    reading = ("the target keeps the label at weight `label_weight` 0.5 beside the partner's softmax, with TPO "
               "(`label_weight: 0`: the partner's prediction alone; `joint: true`: no TPO)")

    @dataclass(frozen=True)
    class Args(ReshapeArgs):
        """The ``method_args`` of uni_distill.

        Args:
            label_weight: share ``w`` of the one-hot label in the target, in [0, 1].
            joint: drop targeted parameter optimization (the multimodal loss trains the encoders too).
            pairing: see `ReshapeArgs`.
        """

        label_weight: float = 0.5
        joint: bool = False

        def __post_init__(self) -> None:
            super().__post_init__()
            require(0.0 <= self.label_weight <= 1.0, "label_weight", "a number in [0, 1]", self.label_weight)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.targeted = not self.args.joint

    def rule_kwargs(self) -> dict:
        return {"label_weight": self.args.label_weight}


@METHODS.register("vanilla_reshape")
class VanillaReshape(LabelTargetMethod):
    """Reshaped target without the one-hot component of equation 8 (Table V); TPO is kept.

    The paper: Vanilla-Reshape "preserves the imbalance-aware design but removes the original
    supervision signal in Equation 8". Equation 8 without its ``(1 - xi) I`` term is
    ``xi D y = xi d``, which is not a distribution and is zero where xi = 0 (the weaker
    modality, and wherever lambda >= 1/beta). ``target`` picks the reading:

    * ``"d_else_label"`` (default, the project's original reading): d where xi > 0 (the
      partner's tempered prediction replaces equation 8), the one-hot y where xi = 0 (a
      fallback the paper does not mention);
    * ``"xi_d"`` (literal): ``xi d``; a sample with xi = 0 gets the zero target, so it adds no
      unimodal loss, and a reshaped one is weighted by xi;
    * ``"d"``: d for every sample, no fallback to y (the beta gate then no longer applies).

    With three modalities, the one without a partner keeps y in every reading.
    """
    rule, targeted, reads = "vanilla", True, ("alpha", "beta")
    reading = ("equation 8 without its one-hot term is not a distribution; ours: d where xi > 0, else the label "
               "(`target: d_else_label`; `xi_d` is the literal reading, `d` drops the fallback)")

    @dataclass(frozen=True)
    class Args(ReshapeArgs):
        """The ``method_args`` of vanilla_reshape.

        Args:
            target: the reading, one of ``bmlr.reshaping.VANILLA_TARGETS`` (see the class doc).
            pairing: see `ReshapeArgs`.
        """

        target: str = "d_else_label"

        def __post_init__(self) -> None:
            super().__post_init__()
            require(self.target in VANILLA_TARGETS, "target", f"one of {VANILLA_TARGETS}", self.target)

    def rule_kwargs(self) -> dict:
        return {"readings": Readings(vanilla_target=self.args.target)}


@METHODS.register("uni_reshaping")
class UniReshaping(LabelTargetMethod):
    """Uniform smoothing in place of BMLR's d (Table IV), by default at BMLR's intensity xi and
    with TPO.

    The paper calls it "the Uniform Reshaping (Uni-Reshaping) method mentioned in LFM [20],
    which distributes a small equal probability across all non-target classes" and says no
    more (LFM: Yang et al., "Facilitating Multimodal Classification via Dynamically Learning
    Modality Gap", NeurIPS 2024; its code was not read here). Three choices are ours, each a
    ``method_args`` key:

    * ``target_share``: ``"all_classes"`` (default) puts ``xi / C`` on every class, the target
      included (classic label smoothing); ``"non_target"`` puts ``xi / (C - 1)`` on each
      non-target class and ``1 - xi`` on the target (the paper's words).
    * ``gate``: ``"beta"`` (default) keeps BMLR's intensity xi of equation 7 (lambda-dependent,
      zero outside ``1 < lambda < 1/beta``); ``"none"`` uses the constant ``smoothing`` for every
      sample and modality (plain label smoothing, nothing imbalance-aware).
    * ``tpo``: ``True`` (default) keeps targeted parameter optimization (equation 11);
      ``False`` optimises all losses jointly.

    The default row is therefore "BMLR with d replaced by a uniform spread", not LFM.
    """
    rule, targeted, reads = "uniform", True, ("beta",)  # the uniform target needs no temperature
    reading = ("LFM's uniform reshaping as BMLR with d replaced by xi / C on every class, gated by beta, with TPO "
               "(`target_share: non_target`, `gate: none`, `tpo: false` give the other readings); not LFM itself")

    @dataclass(frozen=True)
    class Args(ReshapeArgs):
        """The ``method_args`` of uni_reshaping (see the class doc).

        Args:
            target_share: one of ``bmlr.reshaping.UNIFORM_SHARES``.
            gate: one of ``bmlr.reshaping.UNIFORM_GATES``.
            smoothing: the constant intensity of ``gate = "none"``, in [0, 1].
            tpo: keep targeted parameter optimization.
            pairing: see `ReshapeArgs`.
        """

        target_share: str = "all_classes"
        gate: str = "beta"
        smoothing: float = 0.1
        tpo: bool = True

        def __post_init__(self) -> None:
            super().__post_init__()
            require(self.target_share in UNIFORM_SHARES, "target_share", f"one of {UNIFORM_SHARES}",
                    self.target_share)
            require(self.gate in UNIFORM_GATES, "gate", f"one of {UNIFORM_GATES}", self.gate)
            require(0.0 <= self.smoothing <= 1.0, "smoothing", "a number in [0, 1]", self.smoothing)

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.targeted = self.args.tpo

    def rule_kwargs(self) -> dict:
        return {"readings": Readings(uniform_share=self.args.target_share, uniform_gate=self.args.gate,
                                     smoothing=self.args.smoothing)}
