"""Video frames: which frames to take, decoding and the train / eval transforms.

* ``sample_frame_indices``: split the ``n`` available frames into ``T`` equal segments; training
  takes a random frame inside each segment, evaluation the segment centres; with fewer than ``T``
  frames the last one is repeated.
* ``load_frames``: Pillow decoding (``convert("RGB")``); training applies one random-resized-crop
  (scale (0.08, 1), ratio (3/4, 4/3), the torchvision algorithm) and one horizontal flip with
  p = 0.5 to all frames of the clip; evaluation a plain resize to ``S x S``. Pixels go to [0, 1]
  and are ImageNet-normalised. Output: ``FloatTensor [T, 3, S, S]``.

Randomness comes from ``rng`` (a ``torch.Generator``) or, when it is ``None``, torch's global
generator (which ``DataLoader`` seeds per worker).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bmlr.data.types import DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "sample_frame_indices",
    "random_resized_crop_box",
    "decode_image",
    "load_frames",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _uniform(rng: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=rng).item()


def _randint(rng: torch.Generator | None, low: int, high: int) -> int:
    """Integer in ``[low, high)``."""
    return int(torch.randint(low, high, (), generator=rng).item())


def sample_frame_indices(n_available: int, T: int, train: bool, rng: torch.Generator | None = None) -> list[int]:
    """``T`` frame indices out of ``n_available`` (segment-based; repeat the last when too few)."""
    if n_available < 1:
        raise ValueError(f"no frames to sample from (n_available={n_available})")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if n_available < T:
        return list(range(n_available)) + [n_available - 1] * (T - n_available)
    indices = []
    for k in range(T):
        start = (k * n_available) // T
        end = ((k + 1) * n_available) // T  # exclusive; end > start because n_available >= T
        if train:
            indices.append(_randint(rng, start, end))
        else:
            indices.append(min(int((k + 0.5) * n_available / T), end - 1))
    return indices


def random_resized_crop_box(width: int, height: int, rng: torch.Generator | None = None,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Crop box ``(left, top, right, bottom)`` as torchvision's ``RandomResizedCrop.get_params``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(rng, scale[0], scale[1])
        aspect = math.exp(_uniform(rng, log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(rng, 0, height - h + 1)
            left = _randint(rng, 0, width - w + 1)
            return left, top, left + w, top + h
    # fallback: central crop with the aspect ratio clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def decode_image(path: str | os.PathLike) -> Image.Image:
    """Decode one image file to RGB (:class:`DataError` naming the file when it cannot)."""
    path = os.fspath(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"frame image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode frame image {path}: {type(e).__name__}: {e}") from None


def _to_tensor(img: Image.Image) -> torch.Tensor:
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_frames(paths: Sequence[str], T: int, image_size: int, train: bool,
                rng: torch.Generator | None = None) -> torch.Tensor:
    """``FloatTensor [T, 3, S, S]``: sampled, decoded, transformed, ImageNet-normalised frames."""
    if not paths:
        raise DataError("clip has no frame images")
    size = int(image_size)
    chosen = sample_frame_indices(len(paths), T, train, rng)
    decoded: dict[int, Image.Image] = {}
    for i in chosen:
        if i not in decoded:
            decoded[i] = decode_image(paths[i])
    box = None
    flip = False
    if train:
        first = decoded[chosen[0]]
        box = random_resized_crop_box(first.width, first.height, rng)
        flip = torch.rand((), generator=rng).item() < 0.5
    tensors: dict[int, torch.Tensor] = {}
    for i, img in decoded.items():
        if box is not None:
            # frames of a clip share one crop; clamp it if a frame is smaller than the first
            l, t, r, b = box
            b_ = (min(l, img.width - 1), min(t, img.height - 1), min(r, img.width), min(b, img.height))
            img = img.resize((size, size), Image.BILINEAR, box=b_)
        elif img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        tensors[i] = _to_tensor(img)
    out = torch.stack([tensors[i] for i in chosen])
    if flip:
        out = out.flip(-1)
    return (out - _MEAN) / _STD
