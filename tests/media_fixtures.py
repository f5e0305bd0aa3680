"""Real media files for the data-set tests: wav (soundfile), jpg (Pillow), mp4 (PyAV).

Kept tiny so that whole layouts with a few clips per class are written in well under a second.
"""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np

WAV_RATE = 8000


def write_wav(path: Path, label: int, rng: np.random.Generator, seconds: float = 0.1,
              rate: int = WAV_RATE) -> Path:
    """A short tone whose pitch depends on the label, 16-bit PCM."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    y = 0.3 * np.sin(2 * np.pi * (200 + 60 * label) * t) + 0.01 * rng.standard_normal(t.size)
    sf.write(path, y.astype(np.float32), rate, subtype="PCM_16", format="WAV")
    return path


def write_jpg(path: Path, label: int, rng: np.random.Generator, size: int = 8) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((size, size, 3), 20 * (label % 12), dtype=np.uint8)
    img += rng.integers(0, 20, size=img.shape, dtype=np.uint8)
    Image.fromarray(img, "RGB").save(path, format="JPEG", quality=90)
    return path


def write_clip(wav: Path, frames_dir: Path, label: int, rng: np.random.Generator, n_frames: int = 2) -> None:
    write_wav(wav, label, rng)
    for f in range(n_frames):
        write_jpg(frames_dir / f"frame_{f:05d}.jpg", label, rng)


SECOND_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def write_mp4(path: Path, seconds: float = 3.5, fps: int = 10, size: int = 32, audio: bool = True,
              audio_rate: int = 16000, tone_hz: float = 440.0) -> Path:
    """A real H.264/MPEG-4 mp4: second k is filled with ``SECOND_COLOURS[k]``; AAC mono tone."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        sound = None
        if audio:
            sound = container.add_stream("aac", rate=audio_rate, layout="mono")
        n_video = int(round(seconds * fps))
        for i in range(n_video):
            colour = SECOND_COLOURS[min(i // fps, len(SECOND_COLOURS) - 1)]
            img = np.empty((size, size, 3), dtype=np.uint8)
            img[:] = colour
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None:
            n = int(seconds * audio_rate)
            t = np.arange(n) / audio_rate
            y = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            step = 1024
            for start in range(0, n, step):
                chunk = y[start:start + step]
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                frame.sample_rate = audio_rate
                frame.pts = start
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def make_cfg(tmp_path: Path, dataset: str, data_root, **over) -> types.SimpleNamespace:
    cfg = dict(dataset=dataset, data_root=None if data_root is None else str(data_root),
               cache_dir=str(tmp_path / "cache"), frames=2, image_size=8, val_fraction=0.34, split_seed=0,
               skip_bad=False, num_workers=0)
    cfg.update(over)
    return types.SimpleNamespace(**cfg)


# --- bad inputs shared by the audio-visual layouts ------------------------------------------------

#: case -> what is done to one clip (its wav and frame folder); the error must name the path given
BAD_CASES = ("no_audio", "empty_wav", "unreadable_wav", "no_frames", "empty_frame_folder", "empty_jpg",
             "corrupt_jpg")


def break_clip(case: str, wav: Path, frames: Path) -> str:
    """Damage one clip as ``case`` says; return the path the error message must name."""
    import shutil

    jpgs = sorted(frames.glob("*.jpg"))
    if case == "no_audio":
        wav.unlink()
        return str(wav)
    if case == "empty_wav":
        wav.write_bytes(b"")
        return str(wav)
    if case == "unreadable_wav":
        wav.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage, not audio" * 4)
        return str(wav)
    if case == "no_frames":
        shutil.rmtree(frames)
        return str(frames)
    if case == "empty_frame_folder":
        for j in jpgs:
            j.unlink()
        return str(frames)
    if case == "empty_jpg":
        jpgs[-1].write_bytes(b"")
        return str(jpgs[-1])
    if case == "corrupt_jpg":
        jpgs[-1].write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 3)
        return str(jpgs[-1])
    raise ValueError(case)
