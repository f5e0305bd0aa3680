"""The multimodal model: one encoder per modality followed by a fusion module.

``MultimodalModel(encoders, fusion)``:

* ``encode(inputs) -> {u: z^u}`` runs each encoder on its input tensor;
* ``forward(inputs) -> (fused_logits, unimodal_logits)`` is the evaluation convenience
  (``unimodal_logits`` with attached heads, ``detach_head=False``); training methods
  call ``encode`` and the fusion themselves to detach what equation 11 requires;
* ``parameter_groups()`` partitions every parameter, by identity, into one group per
  modality (its encoder ``theta^u`` + ``fusion.branch_parameters(u)``) and ``"head"``
  (``fusion.decision_parameters()``, i.e. ``Theta``). Methods that modulate gradients
  select parameters by these groups, never by names.
"""
from __future__ import annotations

from torch import Tensor, nn

from .fusion import Fusion

__all__ = ["MultimodalModel", "HEAD_GROUP"]

HEAD_GROUP = "head"


class MultimodalModel(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], fusion: Fusion):
        super().__init__()
        modalities = list(fusion.modalities)
        if set(encoders) != set(modalities):
            raise ValueError(
                f"encoders {sorted(encoders)} do not match fusion modalities {modalities}"
            )
        if HEAD_GROUP in modalities:
            raise ValueError(f"{HEAD_GROUP!r} is reserved and cannot name a modality")
        for u in modalities:
            out_dim = getattr(encoders[u], "out_dim", None)
            if out_dim != fusion.feature_dims[u]:
                raise ValueError(
                    f"encoder {u!r} out_dim={out_dim} != fusion feature dim {fusion.feature_dims[u]}"
                )
        self.modalities: list[str] = modalities
        self.encoders = nn.ModuleDict({u: encoders[u] for u in modalities})
        self.fusion = fusion

    def encode(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        missing = [u for u in self.modalities if u not in inputs]
        if missing:
            raise KeyError(f"inputs lack modalities {missing}; have {sorted(inputs)}")
        return {u: self.encoders[u](inputs[u]) for u in self.modalities}

    def forward(self, inputs: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        features = self.encode(inputs)
        return self.fusion(features), self.fusion.unimodal_logits(features)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{modality: encoder + branch params, ..., "head": decision params}``.

        Raises ``RuntimeError`` if the groups do not partition ``self.parameters()``.
        """
        groups: dict[str, list[nn.Parameter]] = {}
        for u in self.modalities:
            groups[u] = list(self.encoders[u].parameters()) + list(self.fusion.branch_parameters(u))
        groups[HEAD_GROUP] = list(self.fusion.decision_parameters())

        seen: set[int] = set()
        for params in groups.values():
            for p in params:
                if id(p) in seen:
                    raise RuntimeError("a parameter belongs to more than one group")
                seen.add(id(p))
        if seen != {id(p) for p in self.parameters()}:
            raise RuntimeError("parameter groups do not cover every model parameter")
        return groups
