"""The signals of the embedded synthetic data set: a harmonic tone (the audio) and faint class
textures under noise (the frames). :mod:`bmlr.data.synthetic` decides which class gets which tone
and texture in each version; this module only draws them from a random generator, in a fixed
order, so that a version's files stay byte-identical.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SAMPLE_RATE", "tone", "pattern", "frames"]

SAMPLE_RATE = 8000


def tone(rng: np.random.Generator, pitch: float) -> np.ndarray:
    """A harmonic tone around ``pitch`` Hz (+-3 % jitter): 4 harmonics, slight vibrato, random
    amplitude and phases, an attack/release envelope, light noise; 0.6-1.0 s at 8 kHz."""
    sr = SAMPLE_RATE
    f0 = pitch * (1.0 + rng.uniform(-0.03, 0.03))
    n = int(sr * rng.uniform(0.6, 1.0))  # shorter than the 1 s window: the loader tiles it
    t = np.arange(n) / sr
    weights = (1.0 / np.arange(1, 5)) * rng.uniform(0.6, 1.0, size=4)
    phases = rng.uniform(0, 2 * np.pi, size=4)
    vibrato = 1.0 + 0.004 * np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 2 * np.pi))
    phase_t = 2 * np.pi * np.cumsum(f0 * vibrato) / sr
    x = sum(w * np.sin(k * phase_t + p) for k, (w, p) in enumerate(zip(weights, phases), start=1))
    x = x / weights.sum()
    attack, release = int(0.02 * sr), int(0.05 * sr)
    env = np.ones(n)
    env[:attack] = np.linspace(0, 1, attack, endpoint=False)
    env[n - release:] = np.linspace(1, 0, release)
    x = rng.uniform(0.25, 0.6) * env * x + rng.normal(0.0, rng.uniform(0.003, 0.01), size=n)
    return np.clip(x, -1.0, 1.0)


def pattern(label: int, xs: np.ndarray, ys: np.ndarray, period: float, theta: float, phases: np.ndarray,
             centres: np.ndarray) -> np.ndarray:
    """Class pattern on pixel coordinates, unit RMS / sqrt(2) (the power of a cosine)."""
    c, s = np.cos(theta), np.sin(theta)
    u = c * xs + s * ys  # rotated coordinates (small rotation jitter)
    v = -s * xs + c * ys
    k = 2 * np.pi / period
    if label == 0:  # horizontal stripes
        p = np.cos(k * v + phases[0])
    elif label == 1:  # vertical stripes
        p = np.cos(k * u + phases[0])
    elif label == 2:  # axis-aligned checkerboard
        p = np.cos(k * u + phases[0]) * np.cos(k * v + phases[1])
    elif label == 3:  # checkerboard rotated by 45 degrees (diamonds)
        d1, d2 = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
        p = np.cos(k * d1 + phases[0]) * np.cos(k * d2 + phases[1])
    elif label == 4:  # concentric rings around a random centre
        r = np.hypot(xs - centres[0, 0], ys - centres[0, 1])
        p = np.cos(k * r + phases[0])
    else:  # a few round spots
        p = np.zeros_like(xs)
        sigma = period / 3.0
        for cx, cy in centres:
            p += np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    p = p - p.mean()
    rms = np.sqrt(np.mean(p**2))
    return p / (rms * np.sqrt(2)) if rms > 0 else p


def frames(rng: np.random.Generator, label: int, size: int, n_frames: int, noise: float,
                 contrast: tuple[float, float]) -> list[np.ndarray]:
    """``n_frames`` uint8 RGB images: the class pattern, faint and jittered, under heavy noise."""
    scale = size / 32.0
    period = rng.uniform(4.5, 7.0) * scale
    theta = np.deg2rad(rng.normal(0.0, 6.0))
    phases = rng.uniform(0, 2 * np.pi, size=2)
    centres = rng.uniform(0.15 * size, 0.85 * size, size=(5, 2))
    amplitude = rng.uniform(*contrast)
    background = rng.uniform(0.35, 0.65, size=3)
    colour = rng.uniform(0.4, 1.0, size=3) * rng.choice([-1.0, 1.0])
    drift = rng.normal(0.0, 0.6 * scale, size=2)  # slow motion across frames
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    out = []
    for f in range(n_frames):
        offset = drift * f + rng.normal(0.0, 0.5 * scale, size=2)  # position jitter per frame
        p = pattern(label, xs - offset[0], ys - offset[1], period, theta, phases, centres)
        img = background + amplitude * p[..., None] * colour
        img = img + rng.normal(0.0, noise, size=img.shape)
        out.append(np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8))
    return out
