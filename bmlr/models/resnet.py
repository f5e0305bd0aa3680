"""ResNet-18 written from scratch (He et al. 2016), used as the audio and visual encoder.

The paper (Section IV-C) trains ResNet-18 from scratch for every modality of the
bi-modal data sets, as OGM-GE does. This module is the standard architecture:

* stem: conv 7x7 stride 2 (no bias) -> BatchNorm -> ReLU -> max-pool 3x3 stride 2;
* four stages of ``BasicBlock`` (two 3x3 convs with BatchNorm, identity shortcut, or a
  1x1 conv + BatchNorm shortcut when the shape changes) with widths
  ``base_width * (1, 2, 4, 8)`` and strides ``(1, 2, 2, 2)``;
* Kaiming-normal init for convolutions (``fan_out``, ReLU), BatchNorm weight 1, bias 0.

Unlike torchvision's classifier there is **no global pooling and no fc layer**: ``forward``
returns the last feature map ``[N, 8 * base_width, h, w]`` so that the encoders can pool
as they need (the visual encoder averages over time *and* space).

``base_width`` and ``blocks`` are size knobs: the paper's net is ``base_width=64,
blocks=(2, 2, 2, 2)`` (11,176,512 parameters for ``in_channels=3``); tests use tiny nets.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet18"]


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection."""

    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 feature extractor: ``[N, in_channels, H, W] -> [N, 8*base_width, H/32, W/32]``.

    Args:
        in_channels: input channels (1 for spectrograms, 3 for RGB frames).
        base_width: width of the first stage (64 in the paper); ``out_channels = 8 * base_width``.
        blocks: number of ``BasicBlock`` per stage (``(2, 2, 2, 2)`` is ResNet-18).
    """

    def __init__(self, in_channels: int, base_width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be 4 positive integers, got {blocks}")
        if in_channels < 1 or base_width < 1:
            raise ValueError("in_channels and base_width must be positive")
        self.in_channels = int(in_channels)
        self.base_width = int(base_width)
        self.blocks = blocks
        self.out_channels = 8 * self.base_width

        w = self.base_width
        self.conv1 = nn.Conv2d(in_channels, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        widths = (w, 2 * w, 4 * w, 8 * w)
        strides = (1, 2, 2, 2)
        in_ch = w
        stages = []
        for width, stride, n in zip(widths, strides, blocks):
            layers = [BasicBlock(in_ch, width, stride)]
            layers += [BasicBlock(width, width, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet18 expects [N, {self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


if __name__ == "__main__":  # pragma: no cover - quick manual check
    net = ResNet18(3)
    print(sum(p.numel() for p in net.parameters()), net(torch.zeros(1, 3, 224, 224)).shape)
