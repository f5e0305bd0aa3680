"""Audio to log-magnitude spectrogram, the common CREMA-D pipeline (OGM-GE and successors).

``librosa.load(path, sr=sample_rate)`` -> tile the clip (``np.tile``) until it covers
``duration_s`` -> crop to exactly ``int(sample_rate * duration_s)`` samples -> clip to [-1, 1] ->
``librosa.stft(n_fft, hop_length)`` (centred, Hann window) -> ``np.log(np.abs(X) + 1e-7)``.
The result is ``float32 [F, T]`` with ``F = n_fft // 2 + 1`` and ``T = 1 + n_samples // hop_length``.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from bmlr.data.types import DataError

__all__ = ["SpectrogramParams", "compute_spectrogram", "expected_shape", "load_waveform"]


@dataclass(frozen=True)
class SpectrogramParams:
    """Preprocessing parameters; their hash keys the spectrogram cache."""

    sample_rate: int
    duration_s: float
    n_fft: int
    hop_length: int
    tile: bool = True  # tile short clips up to the duration (False: zero-pad)

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.duration_s <= 0 or self.n_fft <= 0 or self.hop_length <= 0:
            raise ValueError(f"spectrogram parameters must be positive: {self}")

    @property
    def n_samples(self) -> int:
        return int(self.sample_rate * self.duration_s)


def expected_shape(params: SpectrogramParams) -> tuple[int, int]:
    """``(F, T)`` of :func:`compute_spectrogram`'s output."""
    return params.n_fft // 2 + 1, 1 + params.n_samples // params.hop_length


def load_waveform(wav_path: str | os.PathLike, params: SpectrogramParams) -> np.ndarray:
    """Mono float32 waveform of exactly ``params.n_samples`` samples (tiled or zero-padded)."""
    import librosa

    path = os.fspath(wav_path)
    if not os.path.isfile(path):
        raise DataError(f"audio file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa's audioread fallback warning; we re-raise below
            y, _ = librosa.load(path, sr=params.sample_rate, mono=True)
    except Exception as e:  # soundfile/audioread raise many types for a corrupt file
        reason = str(e).strip() or "not a readable audio file"  # audioread's NoBackendError says nothing
        raise DataError(f"cannot read audio file {path}: {reason} ({type(e).__name__})") from None
    if y.size == 0:
        raise DataError(f"audio file {path} has no samples")
    if not np.all(np.isfinite(y)):
        raise DataError(f"audio file {path} contains non-finite samples")
    n = params.n_samples
    if y.size < n:
        if params.tile:
            y = np.tile(y, math.ceil(n / y.size))
        else:
            y = np.pad(y, (0, n - y.size))
    y = np.clip(y[:n], -1.0, 1.0)
    return y.astype(np.float32, copy=False)


def compute_spectrogram(wav_path: str | os.PathLike, params: SpectrogramParams) -> np.ndarray:
    """``float32 [F, T]`` log-magnitude STFT of one wav file (:class:`DataError` if unreadable)."""
    import librosa

    y = load_waveform(wav_path, params)
    spec = librosa.stft(y, n_fft=params.n_fft, hop_length=params.hop_length)
    return np.log(np.abs(spec) + 1e-7).astype(np.float32)
