"""Each method's training settings as its authors ran it: optimizer, learning rate, momentum,
weight decay, learning-rate schedule and (OGM-GE) the modulation window.

Why: the project trains every method with the BMLR paper's Adam (Section IV-A2). Adam
divides a constant rescaling of a gradient out exactly and a slowly varying one mostly, so
a method that works by rescaling gradients (OGM-GE's coefficient k, DGL's alpha) is largely
switched off under it (tests/test_method_protocols.py shows the cancellation). A comparison
that is to say how each method does must train each one as its authors did.
`tune.py compare` and the recipes apply these settings to each row
(`bmlr.tuning.compare.spaces`); `--protocol shared` trains every row with the search
space's shared settings instead.

``PROTOCOLS`` maps a method name to a `Protocol`: Config keys (``method_args.<name>`` for a
method's own arguments) and the source they were read from. No code was copied from any of
the sources; each was read for its values only.

The learning rate is relative. The authors' values belong to their models and data (a
full ResNet-18 on CREMA-D); a search space that scales the project's lr for a small CPU model
(configs/avmnist.yaml: Adam 1e-3 instead of the paper's 5e-5) must scale each method's lr
alike, or an SGD row would barely move. So a protocol's ``lr`` is read as a factor of the
paper's Adam lr (`REFERENCE_LR`, 5e-5): the row's lr (its default and, where lr is searched,
its range) is the search space's lr times ``lr / REFERENCE_LR``. On the paper-scale spaces
(CREMA-D, Kinetics-Sounds, AVE: lr 5e-5) that is the authors' lr exactly. `--set lr=...`
fixes a literal value.

Epochs, batch size and the model are not part of a protocol: every row of a comparison has
the same budget (docs/comparisons.md lists the authors' epochs next to ours).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["REFERENCE_LR", "OPTIMIZER_KEYS", "Protocol", "PROTOCOLS", "protocol_for", "lr_factor"]

#: the BMLR paper's Adam learning rate (Section IV-A2), Config.lr's default: a protocol's lr
#: is taken relative to it
REFERENCE_LR = 5e-5
#: the Config keys a protocol may set besides ``method_args.<name>``
OPTIMIZER_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "schedule", "step_size", "gamma")


@dataclass(frozen=True)
class Protocol:
    """One method's training settings (`settings`: Config keys) and where they come from."""

    method: str
    source: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""  # what the source leaves open or where we differ

    def __post_init__(self) -> None:
        unknown = [k for k in self.settings if k not in OPTIMIZER_KEYS and not k.startswith("method_args.")]
        if unknown:
            raise ValueError(f"protocol of {self.method!r}: {unknown} are not training settings "
                             f"(expected {OPTIMIZER_KEYS} or method_args.<name>)")
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))


# The SGD recipe the GeWu-Lab family of audio-visual balancing codes shares.
_SGD = {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4}
_STEP70 = {"schedule": "step", "step_size": 70, "gamma": 0.1}
_PAPER = ("Wei et al., 'Boosting Balanced Multimodal Learning via Label-space Reshaping' (BMLR), Section IV-A2: "
          "Adam (0.9, 0.999), lr 5e-5, no schedule = the project's settings")

PROTOCOLS: Mapping[str, Protocol] = MappingProxyType({p.method: p for p in (
    Protocol("baseline", _PAPER),
    Protocol("uniform_baseline", _PAPER),
    Protocol("bmlr", _PAPER),
    Protocol("only_reshape", _PAPER + " (BMLR's ablation, Table V)"),
    Protocol("only_tpo", _PAPER + " (BMLR's ablation, Table V)"),
    Protocol("uni_distill", _PAPER + " (BMLR's ablation, Table V)"),
    Protocol("vanilla_reshape", _PAPER + " (BMLR's ablation, Table V)"),
    Protocol("uni_reshaping", _PAPER + " (BMLR's Table IV)"),
    Protocol("ogm_ge", "Peng et al., CVPR 2022; GeWu-Lab/OGM-GE_CVPR2022 main.py: SGD momentum 0.9, weight decay "
             "1e-4, lr 1e-3, StepLR(70, 0.1), modulation in epochs 0-50 (of 100)",
             {**_SGD, "lr": 1e-3, **_STEP70, "method_args.modulation_starts": 0,
              "method_args.modulation_ends": 50},
             note="100 epochs there: with 70 or fewer the step decay never fires"),
    Protocol("dgl", "Wei, Luo and Luo, ICCV 2025; shicaiwei123/ICCV2025-GDL main_dgl.py and cramed_dgl.sh: SGD "
             "momentum 0.9, weight decay 1e-4, MultiStepLR([70], 0.1); lr 2e-3 in the CREMA-D script (argument "
             "default 1e-3)", {**_SGD, "lr": 2e-3, **_STEP70},
             note="100 epochs there; under SGD alpha_dgl scales the encoders' step (under Adam it cancels)"),
    Protocol("aug", "Jiang, Huang and Yang, NeurIPS 2025; njustkmg/NeurIPS25-AUG train_CREMAD.py and "
             "data/crema.json: SGD momentum 0.9, weight decay 1e-4, lr 1e-2, StepLR(70, 0.1)",
             {**_SGD, "lr": 1e-2, **_STEP70}, note="200 epochs there"),
    Protocol("mmpareto", "Wei and Hu, ICML 2024; GeWu-Lab/MMPareto_ICML2024 code/MMPareto.py: SGD momentum 0.9, "
             "weight decay 1e-4, lr 2e-3; its StepLR(30, 0.1) is built but never stepped, so the lr is constant",
             {**_SGD, "lr": 2e-3, "schedule": "none"}, note="50 epochs there"),
    Protocol("pmr", "Fan et al., CVPR 2023; fanyunfeng-bit/Modal-Imbalance-PMR main_Prototype_grad.py: SGD "
             "momentum 0.9, weight decay 1e-4, StepLR(70, 0.1); lr 1e-3 as in the checkpoint names of its bash.sh "
             "(argument default 1e-4)", {**_SGD, "lr": 1e-3, **_STEP70}, note="150 epochs there"),
    Protocol("agm", "Li et al., ICCV 2023; lihong2303/AGM_ICCV2023 utils/config.py and README: SGD, lr 1e-4 in "
             "the README's AV-MNIST command (argument default 1e-5), StepLR(70, 0.1), modulation in epochs 0-20",
             {"optimizer": "sgd", "lr": 1e-4, **_STEP70}, note="100 epochs there; momentum and weight decay not "
             "visible in the files read, so torch's SGD defaults (none)"),
    Protocol("udi", "no public code (UDI is our reading of the abstract of Wang et al., arXiv 2509.02281): the "
             "project's settings"),
)})


def protocol_for(method: str) -> Protocol:
    """The protocol of `method`; a method without one trains with the project's settings (and
    says so: AGM's public code could not be checked here)."""
    return PROTOCOLS.get(method) or Protocol(method, "no protocol recorded: the project's settings")


def lr_factor(protocol: Protocol) -> float | None:
    """How many times the paper's Adam lr the protocol's lr is (None: it sets no lr)."""
    lr = protocol.settings.get("lr")
    return None if lr is None else float(lr) / REFERENCE_LR
