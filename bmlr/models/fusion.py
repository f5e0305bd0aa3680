"""Fusion modules: features ``{u: z^u [B, d_u]}`` -> fused logits ``[B, C]``, plus the
per-modality (unimodal) logits that BMLR reshapes (paper equation 3).

Registry ``FUSIONS`` (name -> class); every class is built as
``cls(modalities, feature_dims, num_classes)``.

Parameter ownership (used by targeted parameter optimization, equation 11, and by every
method that selects parameters by group, never by name):

* ``decision_parameters()``: the decision layer ``Theta`` -- W, b and the fusion's own
  layers (FiLM generator, gates...) -- i.e. every fusion parameter except the separate
  unimodal heads.
* ``branch_parameters(u)``: fusion parameters belonging to modality ``u``'s branch: its
  separate unimodal head for film/gated, nothing for concat/sum.

Decomposable fusions (``separate_unimodal_heads = False``): concat and sum. Their fused
logits split exactly into per-modality parts, ``W^u z^u + b / |M|``. The paper writes
``b / 2`` for two modalities; we divide by the number of modalities ``|M|`` so that
``sum_u unimodal_logits[u] == fused logits`` for any number of modalities. With
``detach_head=True`` the unimodal logits use ``W.detach()`` / ``b.detach()``, so a loss on
them updates only the encoders (``theta^u``) and never ``Theta`` (equation 11).

Non-decomposable fusions (``separate_unimodal_heads = True``): film, gated and transformer. Their fused
logits cannot be split into per-modality parts (multiplicative interactions), so each
modality gets its own ``nn.Linear(d_u, C)`` unimodal head, counted as part of that
modality's branch (``branch_parameters(u)``) and trained by the unimodal loss together with
the encoder. ``detach_head`` has no effect on these heads (detaching them would leave them
untrained); they are not used by ``forward``.

Every fusion also says what its decision layer reads: ``fused_features(features) -> [B, D]``,
the input of the final linear layer (``forward`` is that layer applied to it). The study
report draws it with t-SNE (the paper's Figure 1).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bmlr.registry import Registry

__all__ = ["FUSIONS", "Fusion", "ConcatFusion", "SumFusion", "FiLMFusion", "GatedFusion", "TransformerFusion"]

FUSIONS: Registry[type["Fusion"]] = Registry("fusion")


class Fusion(nn.Module):
    """Base class. Subclasses implement ``forward`` and ``unimodal_logits``.

    Subclasses with ``separate_unimodal_heads = True`` must store their heads in
    ``self.unimodal_heads`` (an ``nn.ModuleDict`` keyed by modality); the base class then
    derives ``decision_parameters`` / ``branch_parameters`` from it.
    """

    separate_unimodal_heads: bool = False
    min_modalities: int = 1

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_classes: int):
        super().__init__()
        modalities = list(modalities)
        if len(modalities) < self.min_modalities:
            raise ValueError(
                f"{type(self).__name__} needs at least {self.min_modalities} modalities, got {modalities}"
            )
        if len(set(modalities)) != len(modalities):
            raise ValueError(f"duplicate modality names: {modalities}")
        missing = [u for u in modalities if u not in feature_dims]
        if missing:
            raise ValueError(f"feature_dims lacks modalities {missing}")
        if num_classes < 1:
            raise ValueError("num_classes must be positive")
        self.modalities: list[str] = modalities
        self.feature_dims: dict[str, int] = {u: int(feature_dims[u]) for u in modalities}
        self.num_classes = int(num_classes)

    # -- helpers -----------------------------------------------------------------------
    def _check(self, features: dict[str, Tensor]) -> None:
        for u in self.modalities:
            if u not in features:
                raise KeyError(f"features lack modality {u!r}; have {sorted(features)}")
            z = features[u]
            if z.dim() != 2 or z.shape[1] != self.feature_dims[u]:
                raise ValueError(
                    f"feature {u!r} must be [B, {self.feature_dims[u]}], got {tuple(z.shape)}"
                )

    # -- API -----------------------------------------------------------------------------
    def forward(self, features: dict[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def fused_features(self, features: dict[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        """``[B, D]``: what the decision layer reads (``forward`` is that layer applied to it)."""
        raise NotImplementedError

    def unimodal_logits(
        self, features: dict[str, Tensor], detach_head: bool = False
    ) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _head_parameter_ids(self) -> set[int]:
        if not self.separate_unimodal_heads:
            return set()
        return {id(p) for p in self.unimodal_heads.parameters()}

    def decision_parameters(self) -> list[nn.Parameter]:
        """``Theta``: every fusion parameter except the separate unimodal heads."""
        heads = self._head_parameter_ids()
        return [p for p in self.parameters() if id(p) not in heads]

    def branch_parameters(self, modality: str) -> list[nn.Parameter]:
        """Fusion parameters of ``modality``'s branch (its unimodal head, if separate)."""
        if modality not in self.modalities:
            raise KeyError(f"unknown modality {modality!r}; expected one of {self.modalities}")
        if not self.separate_unimodal_heads:
            return []
        return list(self.unimodal_heads[modality].parameters())


def _linear_bias_init(bias: nn.Parameter, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    nn.init.uniform_(bias, -bound, bound)


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """Concatenation (paper's default): ``logits = W [z^1; ...; z^M] + b``.

    One ``nn.Linear(sum d_u, C)`` (``self.fc``). ``W`` is split by column blocks in
    modality order, ``W = [W^1, ..., W^M]``; unimodal logits are ``W^u z^u + b / |M|``
    (equation 3 with ``b / |M|`` instead of ``b / 2``), so they sum to the fused logits.
    """

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_classes: int):
        super().__init__(modalities, feature_dims, num_classes)
        self.fc = nn.Linear(sum(self.feature_dims.values()), self.num_classes)
        self._slices: dict[str, slice] = {}
        start = 0
        for u in self.modalities:
            self._slices[u] = slice(start, start + self.feature_dims[u])
            start += self.feature_dims[u]

    def fused_features(self, features: dict[str, Tensor]) -> Tensor:
        self._check(features)
        return torch.cat([features[u] for u in self.modalities], dim=1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.fc(self.fused_features(features))

    def unimodal_logits(self, features: dict[str, Tensor], detach_head: bool = False) -> dict[str, Tensor]:
        self._check(features)
        weight, bias = self.fc.weight, self.fc.bias
        if detach_head:
            weight, bias = weight.detach(), bias.detach()
        shared_bias = bias / len(self.modalities)
        return {
            u: F.linear(features[u], weight[:, self._slices[u]]) + shared_bias
            for u in self.modalities
        }


@FUSIONS.register("sum")
class SumFusion(Fusion):
    """Summation: ``logits = sum_u W^u z^u + b``.

    One ``nn.Linear(d_u, C, bias=False)`` per modality (``self.fc[u]``) and one shared bias
    parameter ``self.bias`` (initialised like an ``nn.Linear`` bias with fan-in
    ``sum d_u``). Unimodal logits are ``W^u z^u + b / |M|``; they sum to the fused ones.
    """

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_classes: int):
        super().__init__(modalities, feature_dims, num_classes)
        self.fc = nn.ModuleDict(
            {u: nn.Linear(self.feature_dims[u], self.num_classes, bias=False) for u in self.modalities}
        )
        self.bias = nn.Parameter(torch.empty(self.num_classes))
        _linear_bias_init(self.bias, sum(self.feature_dims.values()))

    def fused_features(self, features: dict[str, Tensor]) -> Tensor:
        """The concatenation ``[z^1; ...; z^M]``: ``sum_u W^u z^u + b`` is one linear layer of it."""
        self._check(features)
        return torch.cat([features[u] for u in self.modalities], dim=1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        self._check(features)
        out = self.bias
        for u in self.modalities:
            out = out + self.fc[u](features[u])
        return out

    def unimodal_logits(self, features: dict[str, Tensor], detach_head: bool = False) -> dict[str, Tensor]:
        self._check(features)
        bias = self.bias.detach() if detach_head else self.bias
        shared_bias = bias / len(self.modalities)
        out = {}
        for u in self.modalities:
            weight = self.fc[u].weight
            if detach_head:
                weight = weight.detach()
            out[u] = F.linear(features[u], weight) + shared_bias
        return out


class _SeparateHeadsFusion(Fusion):
    """Shared part of film/gated: one ``nn.Linear(d_u, C)`` unimodal head per modality.

    The heads belong to the modality's branch; ``detach_head`` does not apply to them.
    """

    separate_unimodal_heads = True
    min_modalities = 2

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_classes: int):
        super().__init__(modalities, feature_dims, num_classes)
        self.unimodal_heads = nn.ModuleDict(
            {u: nn.Linear(self.feature_dims[u], self.num_classes) for u in self.modalities}
        )

    def unimodal_logits(self, features: dict[str, Tensor], detach_head: bool = False) -> dict[str, Tensor]:
        # detach_head is deliberately ignored: these heads are part of each branch and are
        # trained by the unimodal loss (see the module docstring).
        self._check(features)
        return {u: self.unimodal_heads[u](features[u]) for u in self.modalities}


@FUSIONS.register("film")
class FiLMFusion(_SeparateHeadsFusion):
    """FiLM (Perez et al. 2018), as in OGM-GE's public ``FiLM`` with ``x_film`` = first modality.

    The first modality ``c`` conditions every other modality ``u``:
    ``gamma_u, beta_u = chunk(Linear_u(z^c), 2)`` (``Linear_u: d_c -> 2 d_u``, so the
    conditioned modalities may have any dims and need no projection),
    ``h_u = gamma_u * z^u + beta_u``; fused logits ``= Linear(concat_u h_u)`` over the
    non-first modalities in order. For two modalities this is exactly OGM-GE's FiLM
    (``fc``: d_c -> 2 d_v, ``fc_out``: d_v -> C). The first modality reaches the fused logits
    only through the modulation. Separate unimodal heads per modality (see module docstring).
    """

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_classes: int):
        super().__init__(modalities, feature_dims, num_classes)
        self.condition = self.modalities[0]
        self.conditioned = self.modalities[1:]
        d_c = self.feature_dims[self.condition]
        self.film = nn.ModuleDict({u: nn.Linear(d_c, 2 * self.feature_dims[u]) for u in self.conditioned})
        self.fc_out = nn.Linear(sum(self.feature_dims[u] for u in self.conditioned), self.num_classes)

    def fused_features(self, features: dict[str, Tensor]) -> Tensor:
        self._check(features)
        z_c = features[self.condition]
        modulated = []
        for u in self.conditioned:
            gamma, beta = self.film[u](z_c).chunk(2, dim=1)
            modulated.append(gamma * features[u] + beta)
        return torch.cat(modulated, dim=1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.fc_out(self.fused_features(features))


@FUSIONS.register("gated")
class GatedFusion(_SeparateHeadsFusion):
    """Bi-gated fusion (Kiela et al. 2018), as in OGM-GE's public ``GatedFusion`` with ``x_gate``.

    Every modality is projected to a hidden size ``H = d_first`` (OGM-GE: ``dim = input_dim``):
    ``o_u = Linear_u(z^u)``. The first modality gates each other one,
    ``h_u = sigmoid(o_first) * o_u``; fused logits ``= Linear(concat_u h_u)`` over the
    non-first modalities in order (for two modalities exactly OGM-GE's
    ``fc_out(sigmoid(fc_x(x)) * fc_y(y))``). Separate unimodal heads per modality.
    """

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_classes: int):
        super().__init__(modalities, feature_dims, num_classes)
        self.gate_modality = self.modalities[0]
        self.gated = self.modalities[1:]
        self.hidden_dim = self.feature_dims[self.gate_modality]
        self.proj = nn.ModuleDict(
            {u: nn.Linear(self.feature_dims[u], self.hidden_dim) for u in self.modalities}
        )
        self.fc_out = nn.Linear(self.hidden_dim * len(self.gated), self.num_classes)

    def fused_features(self, features: dict[str, Tensor]) -> Tensor:
        self._check(features)
        gate = torch.sigmoid(self.proj[self.gate_modality](features[self.gate_modality]))
        return torch.cat([gate * self.proj[u](features[u]) for u in self.gated], dim=1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.fc_out(self.fused_features(features))


def _attention_heads(d_model: int) -> int:
    """The most heads (8, 4, 2, else 1) that divide ``d_model`` with at least 16 dims each."""
    return next((h for h in (8, 4, 2) if d_model % h == 0 and d_model // h >= 16), 1)


@FUSIONS.register("transformer")
class TransformerFusion(_SeparateHeadsFusion):
    """Transformer fusion (the paper's MOSI/MOSEI setting, Section IV-A2 and IV-F: "the
    Transformer-based [Vaswani et al., NeurIPS 2017] model for feature processing and fusion").

    Each modality's feature ``z^u`` becomes one token, ``Linear_u(z^u)`` of width
    ``d_model = max_u d_u`` (the per-modality projection, bias included, also tells the tokens
    apart, so no position table is needed); a learned ``[CLS]`` token is put first and the
    ``M + 1`` tokens go through a small pre-norm ``nn.TransformerEncoder`` (``layers`` layers,
    the most heads of 8/4/2/1 with >= 16 dims each, feed-forward ``2 d_model``, final
    LayerNorm). The ``[CLS]`` output is ``fused_features``; fused logits ``= Linear(it)``.

    One token per modality, not the modalities' sequences: the encoders hand every fusion a
    pooled ``[B, d_u]`` vector (the fusion interface), so attention runs across modalities,
    not across time steps (MulT-style cross-modal attention over sequences, Tsai et al.,
    ACL 2019, would need encoders that return sequences). Attention mixes the modalities
    multiplicatively, so the fused logits do not split into per-modality parts: each modality
    has its own unimodal head (its branch); the projections, ``[CLS]``, the encoder layers and
    the output layer are the decision layer ``Theta``, so TPO isolates gradients as for film.
    """

    def __init__(self, modalities: list[str], feature_dims: dict[str, int], num_classes: int,
                 layers: int = 2, dropout: float = 0.1):
        super().__init__(modalities, feature_dims, num_classes)
        self.d_model = max(self.feature_dims.values())
        self.tokens = nn.ModuleDict({u: nn.Linear(self.feature_dims[u], self.d_model) for u in self.modalities})
        self.cls = nn.Parameter(torch.zeros(1, self.d_model))
        nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(self.d_model, _attention_heads(self.d_model),
                                           dim_feedforward=2 * self.d_model, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, norm=nn.LayerNorm(self.d_model),
                                             enable_nested_tensor=False)
        self.fc_out = nn.Linear(self.d_model, self.num_classes)

    def token_sequence(self, features: dict[str, Tensor]) -> Tensor:
        """``[B, 1 + M, d_model]``: ``[CLS]``, then one token per modality in modality order."""
        self._check(features)
        tokens = [self.tokens[u](features[u]) for u in self.modalities]
        batch = tokens[0].shape[0]
        return torch.stack([self.cls.expand(batch, -1)] + tokens, dim=1)

    def fused_features(self, features: dict[str, Tensor]) -> Tensor:
        return self.encoder(self.token_sequence(features))[:, 0]

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.fc_out(self.fused_features(features))
