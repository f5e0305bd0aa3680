"""Models: unimodal encoders, fusion modules and the multimodal model.

Importing this package registers every encoder (``ENCODERS``) and fusion (``FUSIONS``).

``build_model(modality_encoders, fusion, num_classes)`` builds a ``MultimodalModel`` from
registry names: ``modality_encoders`` maps each modality, in order, to
``(encoder name, encoder kwargs)``; the fusion is built from the encoders' ``out_dim``.
Unknown names raise ``KeyError`` listing the valid ones (from the registry).

Example::

    build_model(
        {"audio": ("resnet_audio", {"in_channels": 1}),
         "visual": ("resnet_visual", {"in_channels": 3})},
        fusion="concat", num_classes=6,
    )
"""
from __future__ import annotations

from typing import Any, Mapping

from . import encoders, fusion, multimodal, resnet  # noqa: F401  (registration on import)
from .encoders import ENCODERS
from .fusion import FUSIONS, Fusion
from .multimodal import MultimodalModel
from .resnet import ResNet18

__all__ = ["ENCODERS", "FUSIONS", "Fusion", "MultimodalModel", "ResNet18", "build_model"]


def build_model(
    modality_encoders: Mapping[str, tuple[str, Mapping[str, Any]]],
    fusion: str,
    num_classes: int,
) -> MultimodalModel:
    """Build encoders and fusion by registry name; modality order is the mapping's order."""
    fusion_cls = FUSIONS.get(fusion)  # fail fast on an unknown fusion, before building nets
    if not modality_encoders:
        raise ValueError("modality_encoders is empty")
    encoder_classes = {u: ENCODERS.get(spec[0]) for u, spec in modality_encoders.items()}
    built = {u: encoder_classes[u](**dict(spec[1] or {})) for u, spec in modality_encoders.items()}
    modalities = list(built)
    fusion_module = fusion_cls(modalities, {u: built[u].out_dim for u in modalities}, num_classes)
    return MultimodalModel(built, fusion_module)
