"""Frames at 1 fps and the audio track out of video files, with PyAV (no system ffmpeg needed).

* ``extract_frames(video, folder, fps=1)``: decodes the first video stream and keeps, for every
  k = 0, 1, 2, ..., the first frame whose time (from the first frame) is at least ``k / fps``
  seconds: one frame per second, the frame at the start of each second, as ``ffmpeg -vf fps=1``
  with rounding down. Frames are written as ``frame_00000.jpg``, ``frame_00001.jpg``, ... (RGB,
  JPEG quality 95, the file order is the temporal order). A 10 s clip gives 10 frames.
* ``extract_audio(video, wav, sample_rate)``: decodes the first audio stream, downmixes to mono,
  resamples to ``sample_rate`` and writes 16-bit PCM wav.

Both are atomic: frames go to a temporary folder renamed into place when complete, the wav to a
temporary file moved into place; an interrupted extraction leaves only ``.tmp-`` names, which no
loader reads. ``extract_videos`` runs many jobs in parallel processes, skips the jobs whose outputs
exist (so a killed run resumes), and reports or skips (``skip_bad``) unreadable videos. Every
problem is a :class:`~bmlr.data.types.DataError` naming the video file.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from bmlr.data.jobs import run_jobs
from bmlr.data.types import DataError
from bmlr.fileio import atomic_path, tmp_path_for

__all__ = ["VIDEO_EXTENSIONS", "VideoJob", "find_videos", "extract_frames", "extract_audio", "extract_videos"]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".flv")
JPEG_QUALITY = 95


@dataclass(frozen=True)
class VideoJob:
    """Extract ``video``'s frames into ``frames_dir`` and / or its audio into ``wav`` (None: skip)."""

    clip_id: str
    video: str
    frames_dir: str | None = None
    wav: str | None = None
    fps: float = 1.0
    sample_rate: int = 16000

    def done(self) -> bool:
        frames_ok = self.frames_dir is None or os.path.isdir(self.frames_dir)
        wav_ok = self.wav is None or os.path.isfile(self.wav)
        return frames_ok and wav_ok


def find_videos(folder: str | os.PathLike) -> dict[str, Path]:
    """``{clip id (file stem): path}`` of the video files directly in ``folder`` (empty if absent)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    videos: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.suffix.lower() in VIDEO_EXTENSIONS and entry.is_file():
            videos.setdefault(entry.stem, entry)
    return videos


def extracted_layout(root: Path) -> tuple[Path, Path]:
    """Where `prepare` writes a video data set's audio (``audio/<id>.wav``) and frames
    (``frames/<id>/``) under its root (AVE and Kinetics-Sounds)."""
    return root / "audio", root / "frames"


def jobs_for_videos(root: Path, videos: Path, sample_rate: int) -> list[VideoJob]:
    """One job per video in ``videos``: 1-fps frames and mono audio into ``extracted_layout(root)``."""
    audio, frames = extracted_layout(root)
    return [VideoJob(vid, str(video), frames_dir=str(frames / vid), wav=str(audio / f"{vid}.wav"),
                     sample_rate=sample_rate) for vid, video in find_videos(videos).items()]


def extracted_folders(root: Path, dataset: str, label: str, item: str, videos: str) -> tuple[Path, Path]:
    """:func:`extracted_layout` of ``root``, both folders checked (:class:`DataError` naming the
    missing one and the `prepare` command that makes it; ``item`` names a clip in the message,
    ``videos`` where the videos are)."""
    audio, frames = extracted_layout(root)
    for folder in (audio, frames):
        if not folder.is_dir():
            raise DataError(f"{label}: folder not found: {folder} (expected audio/<{item}>.wav and "
                            f"frames/<{item}>/*.jpg; extract them from {videos} with "
                            f"`python -m bmlr.data.prepare --dataset {dataset} --root {root}`)")
    return audio, frames


@contextlib.contextmanager
def decoding(what: str) -> Iterator[None]:
    """Any failure inside becomes a :class:`DataError` ``"cannot decode <what>: <type>: <message>"``
    (PyAV and FFmpeg raise many exception types for a broken file); a DataError passes unchanged."""
    try:
        yield
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot decode {what}: {type(e).__name__}: {e}") from None


def _open(video: str | os.PathLike):
    import av

    path = os.fspath(video)
    if not os.path.isfile(path):
        raise DataError(f"video file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DataError(f"video file {path} is empty (0 bytes); expected a readable video")
    try:
        return av.open(path)
    except Exception as e:  # av.error.* (FFmpeg errors), OSError
        raise DataError(f"cannot open video file {path}: {type(e).__name__}: {e}") from None


def _save_frames(container, path: str, folder: Path, fps: float, quality: int) -> int:
    """Decode the first video stream; save one frame per ``1 / fps`` s into ``folder``; the count."""
    if not container.streams.video:
        raise DataError(f"video file {path} has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    start, next_k, count = None, 0, 0
    for index, frame in enumerate(container.decode(stream)):
        t = frame.time if frame.time is not None else index / rate
        if start is None:
            start = t
        rel = t - start
        if rel + 1e-6 < next_k / fps:
            continue
        frame.to_image().save(folder / f"frame_{count:05d}.jpg", format="JPEG", quality=quality)
        count += 1
        next_k = math.floor(rel * fps + 1e-6) + 1
    return count


def extract_frames(video: str | os.PathLike, folder: str | os.PathLike, fps: float = 1.0,
                   quality: int = JPEG_QUALITY) -> int:
    """Write one frame per ``1 / fps`` seconds of ``video`` into ``folder`` (atomically: the
    folder appears complete or not at all); return the number of frames."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(folder)
    tmp.mkdir()
    path = os.fspath(video)
    try:
        container = _open(path)
        try:
            with decoding(f"video file {path}"):
                count = _save_frames(container, path, tmp, fps, quality)
        finally:
            container.close()
        if count == 0:
            raise DataError(f"video file {path} has no decodable frames")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():  # lost a race only when the other run finished the folder
                raise
    finally:
        if tmp.exists():  # best effort, so that a cleanup problem never hides the real error
            shutil.rmtree(tmp, ignore_errors=True)
    return count


def _decode_audio(container, path: str, sample_rate: int) -> np.ndarray:
    """The first audio stream, mono float32 at ``sample_rate`` Hz."""
    import av

    if not container.streams.audio:
        raise DataError(f"video file {path} has no audio stream; expected one for the audio modality")
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=int(sample_rate))
    chunks: list[np.ndarray] = []
    for frame in container.decode(stream):
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
    chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def extract_audio(video: str | os.PathLike, wav: str | os.PathLike, sample_rate: int = 16000) -> int:
    """Write ``video``'s first audio stream as mono 16-bit PCM at ``sample_rate`` Hz (atomically);
    return the number of samples."""
    import soundfile as sf

    path = os.fspath(video)
    container = _open(path)
    try:
        with decoding(f"the audio of video file {path}"):
            y = _decode_audio(container, path, sample_rate)
    finally:
        container.close()
    if y.size == 0:
        raise DataError(f"video file {path} has an empty audio stream")
    with atomic_path(wav) as tmp:
        sf.write(tmp, np.clip(y, -1.0, 1.0), int(sample_rate), subtype="PCM_16", format="WAV")
    return int(y.size)


def _run_job(job: VideoJob) -> str | None:
    """One job; returns None or the problem's text (so it crosses process boundaries)."""
    try:
        if job.wav is not None and not os.path.isfile(job.wav):
            extract_audio(job.video, job.wav, job.sample_rate)
        if job.frames_dir is not None and not os.path.isdir(job.frames_dir):
            extract_frames(job.video, job.frames_dir, job.fps)
    except DataError as e:
        return str(e)
    return None


def extract_videos(jobs: Iterable[VideoJob], workers: int = 1, skip_bad: bool = False,
                   progress: bool | None = None) -> tuple[int, dict[str, str]]:
    """Run the jobs whose outputs are missing; return ``(number run, {clip id: problem})``.

    Without ``skip_bad`` the first problem raises :class:`DataError` (outputs already written are
    kept, so the next run resumes). ``progress`` shows a bar (default: 100 videos or more)."""
    pending = [j for j in jobs if not j.done()]
    if not pending:
        return 0, {}
    return run_jobs(pending, _run_job, lambda job: job.clip_id, workers=workers, skip_bad=skip_bad,
                    progress=len(pending) >= 100 if progress is None else progress, desc="videos")
