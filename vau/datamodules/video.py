"""Decode only the sampled frames of a video with decord."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class VideoError(RuntimeError):
    """A video that cannot be used: missing, unreadable or without frames. The message names the file."""


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
        """``transformers.video_utils.VideoMetadata`` carrying the true fps and frame positions to the processor."""
        from transformers.video_utils import VideoMetadata

        height, width = self.frames.shape[1:3]
        return VideoMetadata(
            total_num_frames=self.total_frames, fps=self.fps, width=width, height=height,
            duration=self.total_frames / self.fps, video_backend="decord", frames_indices=self.indices.tolist(),
        )


def read_clip(path: str | Path, sampler, rng: np.random.Generator | None = None) -> DecodedClip:
    """Decode the frames ``sampler`` picks from ``path``.

    Raises:
        VideoError: the file is missing, cannot be decoded, or has no frames.
    """
    import decord

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video {path} does not exist")
    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        total = len(reader)
        fps = float(reader.get_avg_fps())
        if total <= 0:
            raise VideoError(f"video {path} has no frames")
        selection = sampler(total, fps, rng)
        frames = reader.get_batch(selection.indices.tolist()).asnumpy()
    except VideoError:
        raise
    except Exception as err:  # decord raises its own DECORDError and RuntimeErrors
        raise VideoError(f"video {path} cannot be decoded: {type(err).__name__}: {str(err)[:200]}") from err
    if frames.ndim != 4 or frames.shape[0] != len(selection.indices):
        raise VideoError(f"video {path} returned {frames.shape} frames for {len(selection.indices)} indices")
    return DecodedClip(frames=frames, indices=selection.indices, fps=fps, total_frames=total)
