"""Unimodal encoders ``phi^u`` (paper Section III-A): input tensor -> feature ``z^u`` [B, out_dim].

Registry ``ENCODERS`` (name -> class); every encoder has the attribute ``out_dim`` and
explicit constructor keyword arguments, so a config can build one with
``ENCODERS.get(name)(**kwargs)``.

* ``resnet_audio``: spectrogram ``[B, 1, F, T]`` -> ResNet-18 -> global average pool.
* ``resnet_visual``: frames ``[B, T_frames, 3, H, W]`` -> fold time into the batch ->
  ResNet-18 -> ``[B, T_frames, c, h, w]`` -> mean over time and space (as OGM-GE's
  ``adaptive_avg_pool3d`` over ``(T, h, w)``) -> ``[B, c]``.
* ``transformer`` (MOSI/MOSEI, Section IV-A2): sequence ``[B, L, D_in]`` -> Linear to
  ``d_model`` + learned positional embedding -> pre-norm ``nn.TransformerEncoder``
  (``batch_first=True, norm_first=True``) with a final LayerNorm -> mean over ``L``.
* ``mlp`` (feature vectors, e.g. precomputed embeddings): ``[B, D_in]`` -> ``layers`` x
  (Linear -> LayerNorm -> ReLU -> Dropout) of width ``hidden`` -> ``[B, hidden]``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from bmlr.registry import Registry

from .resnet import ResNet18

__all__ = ["ENCODERS", "ResNetAudioEncoder", "ResNetVisualEncoder", "TransformerEncoder", "MLPEncoder"]

ENCODERS: Registry[type[nn.Module]] = Registry("encoder")


@ENCODERS.register("resnet_audio")
class ResNetAudioEncoder(nn.Module):
    """``[B, in_channels, F, T]`` -> ResNet-18 feature map -> adaptive average pool -> ``[B, 8*base_width]``."""

    def __init__(self, in_channels: int = 1, base_width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        self.backbone = ResNet18(in_channels, base_width=base_width, blocks=blocks)
        self.out_dim = self.backbone.out_channels

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"resnet_audio expects [B, C, F, T], got {tuple(x.shape)}")
        fmap = self.backbone(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(fmap, 1), 1)


@ENCODERS.register("resnet_visual")
class ResNetVisualEncoder(nn.Module):
    """``[B, T_frames, in_channels, H, W]`` -> ``[B, 8*base_width]``.

    The frames share one ResNet-18 (time folded into the batch); the resulting maps
    ``[B, T_frames, c, h, w]`` are averaged over time and space together, which is the
    OGM-GE visual pooling. BatchNorm therefore sees ``B * T_frames`` samples per batch.
    """

    def __init__(self, in_channels: int = 3, base_width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        self.backbone = ResNet18(in_channels, base_width=base_width, blocks=blocks)
        self.out_dim = self.backbone.out_channels

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"resnet_visual expects [B, T, C, H, W], got {tuple(x.shape)}")
        b, t = x.shape[:2]
        fmap = self.backbone(x.reshape(b * t, *x.shape[2:]))
        fmap = fmap.reshape(b, t, *fmap.shape[1:])  # [B, T, c, h, w]
        return fmap.mean(dim=(1, 3, 4))


@ENCODERS.register("transformer")
class TransformerEncoder(nn.Module):
    """``[B, L, d_in]`` -> ``[B, d_model]`` (Transformer encoder for sequence features).

    Args:
        d_in: input feature size per step.
        d_model: model width (``out_dim``).
        layers: number of encoder layers.
        heads: attention heads (must divide ``d_model``).
        dropout: dropout inside the layers.
        max_len: size of the learned positional table; longer inputs raise ``ValueError``.
        dim_feedforward: hidden size of the feed-forward blocks (default ``4 * d_model``).

    No padding mask: the batch contract gives fixed-length ``[B, L, D]`` tensors, so the
    output is the plain mean over all ``L`` steps.
    """

    def __init__(
        self,
        d_in: int,
        d_model: int = 64,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        max_len: int = 512,
        dim_feedforward: int | None = None,
    ):
        super().__init__()
        if d_model % heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
        self.d_in = int(d_in)
        self.max_len = int(max_len)
        self.out_dim = int(d_model)
        self.input_proj = nn.Linear(d_in, d_model)
        self.pos_embedding = nn.Parameter(torch.zeros(1, max_len, d_model))
        nn.init.normal_(self.pos_embedding, std=0.02)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=dim_feedforward or 4 * d_model,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_in:
            raise ValueError(f"transformer expects [B, L, {self.d_in}], got {tuple(x.shape)}")
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}")
        h = self.input_proj(x) + self.pos_embedding[:, :length]
        h = self.encoder(self.dropout(h))
        return h.mean(dim=1)


@ENCODERS.register("mlp")
class MLPEncoder(nn.Module):
    """``[B, d_in]`` -> ``[B, hidden]``: ``layers`` blocks of Linear -> LayerNorm -> ReLU -> Dropout
    (feature vectors: CLIP / wav2vec embeddings, sensor vectors)."""

    def __init__(self, d_in: int, hidden: int = 64, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.d_in, self.out_dim = int(d_in), int(hidden)
        blocks: list[nn.Module] = []
        for i in range(int(layers)):
            blocks += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                       nn.Dropout(dropout)]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[-1] != self.d_in:
            raise ValueError(f"mlp expects [B, {self.d_in}], got {tuple(x.shape)}")
        return self.net(x)
