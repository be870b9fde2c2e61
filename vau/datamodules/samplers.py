"""Frame samplers: which frames of a video the model sees, and at which second each was taken.

A sampler is registered in :data:`vau.registry.SAMPLERS` and built from config (``sampler.name`` plus its
keyword arguments). Calling it with the video's frame count and fps returns a :class:`FrameSelection`.

Example:
    >>> sel = SAMPLERS.get("uniform")(num_frames=4)(total_frames=40, fps=8.0)
    >>> sel.indices.tolist(), sel.timestamps.tolist()
    ([5, 15, 25, 35], [0.625, 1.875, 3.125, 4.375])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vau.registry import SAMPLERS


@dataclass(frozen=True)
class FrameSelection:
    indices: np.ndarray  # sorted frame indices, int64
    timestamps: np.ndarray  # seconds, = indices / fps


def _selection(indices: np.ndarray, fps: float) -> FrameSelection:
    indices = np.asarray(indices, dtype=np.int64)
    return FrameSelection(indices, indices / float(fps))


def _check(total_frames: int, fps: float) -> None:
    if total_frames <= 0:
        raise ValueError(f"video has {total_frames} frames; nothing to sample")
    if not fps > 0:
        raise ValueError(f"video fps is {fps}; cannot place frames in time")


def _segment_centres(total_frames: int, n: int) -> np.ndarray:
    # Centre of each of n equal segments: covers the whole clip, never the very first/last frame only.
    return np.minimum(((np.arange(n) + 0.5) * total_frames / n).astype(np.int64), total_frames - 1)


class WindowSampler:
    """N frames at the centres of N equal segments of one window ``(start, end)`` seconds of the clip, with their
    true timestamps: the frames of a second look at a moment the model names (``<look>``, issue 20). Built per
    request, so it is not a registered, configurable sampler.

    Example:
        >>> WindowSampler((2.0, 3.0), num_frames=4)(total_frames=80, fps=8.0).timestamps.tolist()
        [2.125, 2.375, 2.625, 2.875]
    """

    def __init__(self, window: tuple[float, float], num_frames: int = 8) -> None:
        start, end = (float(v) for v in window)
        if not 0.0 <= start <= end or num_frames < 1:
            raise ValueError(f"window {window} with {num_frames} frames: need 0 <= start <= end and >= 1 frame")
        self.window, self.num_frames = (start, end), num_frames

    def __call__(self, total_frames: int, fps: float, rng: np.random.Generator | None = None) -> FrameSelection:
        _check(total_frames, fps)
        first = min(int(np.floor(self.window[0] * fps)), total_frames - 1)
        last = min(max(int(np.ceil(self.window[1] * fps)), first + 1), total_frames)  # exclusive
        return _selection(first + _segment_centres(last - first, self.num_frames), fps)

    def cache_key(self) -> str:
        return f"window-{self.window[0]:g}-{self.window[1]:g}-{self.num_frames}"


@SAMPLERS.register("uniform")
class UniformSampler:
    """N frames at the centres of N equal segments of the clip (frames repeat when the clip is shorter).

    Args:
        num_frames: frames per clip; keep it even for Qwen-VL (two frames make one temporal patch).
    """

    def __init__(self, num_frames: int = 16) -> None:
        if num_frames < 1:
            raise ValueError(f"sampler.num_frames must be >= 1, got {num_frames}")
        self.num_frames = num_frames

    def __call__(self, total_frames: int, fps: float, rng: np.random.Generator | None = None) -> FrameSelection:
        _check(total_frames, fps)
        return _selection(_segment_centres(total_frames, self.num_frames), fps)

    def cache_key(self) -> str:
        return f"uniform-{self.num_frames}"


@SAMPLERS.register("fps")
class FpsSampler:
    """Frames at a target rate (Qwen-VL style): duration x fps, clamped to [min_frames, max_frames] and rounded
    to a multiple of ``frame_factor`` (2 for Qwen-VL's temporal patches).

    Args:
        fps: target frames per second.
        min_frames: fewest frames for a short clip.
        max_frames: most frames for a long clip.
        frame_factor: the frame count is a multiple of this.
    """

    def __init__(self, fps: float = 2.0, min_frames: int = 4, max_frames: int = 768, frame_factor: int = 2) -> None:
        if fps <= 0 or min_frames < 1 or max_frames < min_frames or frame_factor < 1:
            raise ValueError(
                f"sampler needs fps > 0, 1 <= min_frames <= max_frames and frame_factor >= 1; got fps={fps}, "
                f"min_frames={min_frames}, max_frames={max_frames}, frame_factor={frame_factor}"
            )
        self.fps, self.min_frames, self.max_frames, self.frame_factor = fps, min_frames, max_frames, frame_factor

    def count(self, total_frames: int, video_fps: float) -> int:
        f = self.frame_factor
        lo = -(-self.min_frames // f) * f
        hi = max(self.max_frames // f * f, lo)
        wanted = total_frames / video_fps * self.fps
        return int(min(max(round(wanted / f) * f, lo), hi))

    def __call__(self, total_frames: int, fps: float, rng: np.random.Generator | None = None) -> FrameSelection:
        _check(total_frames, fps)
        return _selection(_segment_centres(total_frames, self.count(total_frames, fps)), fps)

    def cache_key(self) -> str:
        return f"fps-{self.fps}-{self.min_frames}-{self.max_frames}-{self.frame_factor}"


@SAMPLERS.register("random_segment")
class RandomSegmentSampler:
    """TSN-style training sampler: one frame at a random position inside each of N equal segments.

    Without an ``rng`` (evaluation) it takes segment centres, like ``uniform``.

    Args:
        num_frames: frames per clip (= segments).
    """

    def __init__(self, num_frames: int = 16) -> None:
        if num_frames < 1:
            raise ValueError(f"sampler.num_frames must be >= 1, got {num_frames}")
        self.num_frames = num_frames

    def __call__(self, total_frames: int, fps: float, rng: np.random.Generator | None = None) -> FrameSelection:
        _check(total_frames, fps)
        if rng is None:
            return _selection(_segment_centres(total_frames, self.num_frames), fps)
        edges = np.arange(self.num_frames + 1) * total_frames / self.num_frames
        picks = np.floor(edges[:-1] + rng.random(self.num_frames) * (edges[1:] - edges[:-1]))
        return _selection(np.clip(picks, 0, total_frames - 1), fps)

    def cache_key(self) -> str:
        return f"random_segment-{self.num_frames}"


def build_sampler(cfg) -> object:
    """Build a sampler from a config mapping ``{name: ..., **kwargs}``."""
    kwargs = dict(cfg)
    name = kwargs.pop("name")
    return SAMPLERS.get(name)(**kwargs)
