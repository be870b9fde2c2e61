"""Decode the sampled frames of a video (decoders.py), resize them to the model's pixel budget, cache them.

Why resize here: a 1280x720 clip of 64 frames is 177 MB of uint8 per sample; the Qwen-VL processors reduce
it to their per-frame budget anyway. Resizing right after decoding (uint8, bicubic, antialiased: the
processor's interpolation) to *exactly* the size the processor would pick makes the processor's own resize a
no-op, cuts worker-to-trainer transfer and cache size, and is much cheaper than a float resize. The model
inputs are bit-identical to letting the processor resize (it uses the same uint8 kernel; tested for the
Qwen2.5-VL and Qwen3-VL processors).

Example (a real file)::

    clip = read_clip("video.mp4", SAMPLERS.get("uniform")(num_frames=16))
    clip.frames.shape, clip.timestamps[:2]   # ((16, 360, 640, 3), array([1.875, 5.625]))
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from vau.datamodules.decoders import VideoError, open_video

__all__ = ["DecodedClip", "FrameCache", "SizeFn", "VideoError", "probe", "read_clip",
           "resize_frames"]

log = logging.getLogger(__name__)

# (num_frames, height, width) -> (height, width) the frames should have; None keeps them as decoded.
SizeFn = Callable[[int, int, int], tuple[int, int]]


@dataclass(frozen=True)
class DecodedClip:
    frames: np.ndarray  # (T, H, W, 3) uint8
    indices: np.ndarray  # frame indices into the original video
    fps: float  # the video's own frame rate
    total_frames: int

    @property
    def timestamps(self) -> np.ndarray:
        return self.indices / self.fps

    def metadata(self):
        """``transformers.video_utils.VideoMetadata`` carrying the true fps and frame positions to the processor
        (Qwen2.5-VL derives ``second_per_grid_ts`` from them, Qwen3-VL its timestamp tokens)."""
        from transformers.video_utils import VideoMetadata

        height, width = self.frames.shape[1:3]
        return VideoMetadata(
            total_num_frames=self.total_frames, fps=self.fps, width=width, height=height,
            duration=self.total_frames / self.fps, frames_indices=self.indices.tolist(),
        )


FRAME_ORDERS = ("ordered", "shuffled")  # data.frames_order


def shuffle_frames(clip: DecodedClip, rng: np.random.Generator) -> DecodedClip:
    """``clip`` with its frames in a random order (never the original one when it has two or more distinct frame
    positions), each frame keeping its own index, so its timestamp travels with it (``data.frames_order: shuffled``;
    T-GRPO's contrast, Video-R1 arXiv 2503.21776). Seeded by ``rng``.

    Example:
        >>> clip = DecodedClip(np.arange(3).reshape(3, 1, 1, 1).repeat(3, -1).astype(np.uint8), np.array([0, 5, 9]),
        ...                    10.0, 10)
        >>> moved = shuffle_frames(clip, np.random.default_rng(0))
        >>> moved.indices.tolist() != [0, 5, 9], moved.frames[:, 0, 0, 0].tolist() == [[0, 5, 9].index(i)
        ...                                                                          for i in moved.indices]
        (True, True)
    """
    n = len(clip.indices)
    order = np.arange(n)
    if len(set(clip.indices.tolist())) > 1:
        while np.array_equal(clip.indices[order], clip.indices):
            order = rng.permutation(n)
    return DecodedClip(frames=clip.frames[order], indices=clip.indices[order], fps=clip.fps,
                       total_frames=clip.total_frames)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (T, H, W, 3) uint8 frames to (height, width): bicubic with antialiasing, uint8 in and out."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    out = F.interpolate(tensor, size=(height, width), mode="bicubic", antialias=True)
    return out.permute(0, 2, 3, 1).contiguous().numpy()


class FrameCache:
    """Decoded clips on disk, keyed by file (path, size, mtime), sampler config, output size and decoder (the
    decoders differ on files decord mis-seeks in, so switching ``data.decoder`` must not reuse the other's frames).

    Only deterministic selections are cached (evaluation, fixed samplers): a random training draw differs every
    epoch, so caching it would only fill the disk. A damaged cache file is a miss and is rewritten.

    Args:
        root: cache folder (config key ``data.frame_cache_dir``); created on first write.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0

    def key(self, path: Path, sampler_key: str, size_key: str, decoder: str = "pyav") -> str:
        stat = path.stat()
        ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{sampler_key}|{size_key}|{decoder}"
        return hashlib.sha1(ident.encode()).hexdigest()

    def load(self, key: str) -> DecodedClip | None:
        file = self.root / key[:2] / f"{key}.npz"
        if not file.is_file():
            self.misses += 1
            return None
        try:
            with np.load(file) as data:
                clip = DecodedClip(data["frames"], data["indices"], float(data["fps"]), int(data["total"]))
        except Exception as err:  # truncated or foreign file: decode again
            log.warning("frame cache entry %s is unreadable (%s); decoding the video again", file, err)
            self.misses += 1
            return None
        self.hits += 1
        return clip

    def store(self, key: str, clip: DecodedClip) -> None:
        folder = self.root / key[:2]
        folder.mkdir(parents=True, exist_ok=True)
        # Write then rename: concurrent workers never read a half-written entry.
        handle, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, frames=clip.frames, indices=clip.indices, fps=clip.fps, total=clip.total_frames)
            os.replace(tmp, folder / f"{key}.npz")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def read_clip(path: str | Path, sampler, rng: np.random.Generator | None = None, *, size_fn: SizeFn | None = None,
              size_key: str = "", cache: FrameCache | None = None, num_threads: int = 1,
              decoder: str = "pyav") -> DecodedClip:
    """Decode the frames ``sampler`` picks from ``path``.

    Args:
        path: the video file.
        sampler: a frame sampler (``(total_frames, fps, rng) -> FrameSelection``).
        rng: the random generator of a training draw; None for a deterministic selection.
        size_fn: target frame size (see :func:`processor_size_fn`); frames are resized to it right after decoding.
        size_key: identifies ``size_fn``'s settings in cache keys.
        cache: optional :class:`FrameCache`, used when ``rng`` is None and the sampler has ``cache_key()``.
        num_threads: decoding threads for this one video (0 = one per core); keep 1 inside DataLoader workers.
        decoder: ``pyav`` or ``decord`` (:mod:`vau.datamodules.decoders`; docs/data.md says where they differ).

    Raises:
        VideoError: the file is missing, cannot be decoded, or has no frames.
    """
    path = Path(path)
    key = None
    if cache is not None and rng is None and hasattr(sampler, "cache_key") and path.is_file():
        key = cache.key(path, sampler.cache_key(), size_key, decoder)
        hit = cache.load(key)
        if hit is not None:
            return hit
    source = open_video(path, decoder, num_threads)
    total, source_fps = source.total, source.fps
    selection = sampler(total, source_fps, rng)
    frames = source.frames(selection.indices)
    del source  # close the file now, not at garbage collection (workers open thousands of videos)
    if frames.ndim != 4 or frames.shape[0] != len(selection.indices) or frames.shape[-1] != 3:
        raise VideoError(f"video {path} returned frames of shape {frames.shape} for {len(selection.indices)} indices")
    if size_fn is not None:
        height, width = (int(x) for x in size_fn(len(frames), frames.shape[1], frames.shape[2]))
        if (height, width) != frames.shape[1:3]:
            frames = resize_frames(frames, height, width)
    clip = DecodedClip(frames=frames, indices=selection.indices, fps=source_fps, total_frames=total)
    if key is not None:
        cache.store(key, clip)
    return clip


def probe(path: str | Path, decoder: str = "pyav") -> dict:
    """Open ``path`` and decode its first and last frame: ``{"frames", "fps", "width", "height", "seconds"}``.

    Raises:
        VideoError: as :func:`read_clip`; a truncated file usually fails on its last frame.
    """
    source = open_video(path, decoder, 1)
    frames = source.frames(np.array(sorted({0, source.total - 1})))
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise VideoError(f"video {path} decodes to no image", "no_frames")
    return {"frames": source.total, "fps": source.fps, "width": int(frames.shape[2]), "height": int(frames.shape[1]),
            "seconds": source.total / source.fps}


def frame_rate(path: str | Path) -> Fraction:
    """The exact average frame rate of ``path`` as the container states it (PyAV), e.g. ``Fraction(30000, 1001)``:
    what frame numbers of frame-level annotations are converted with (:func:`vau.data.frame_annotations.frames_to_seconds`).

    Raises:
        VideoError: as :func:`probe`, naming the file.
    """
    source = open_video(path, "pyav", 1)
    return source.rate
