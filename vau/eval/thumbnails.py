"""Small JPEG thumbnails of the frames a model saw, for the HTML report.

A clip's ``frame_times`` (seconds, = frame index / fps, as the samplers write them) are mapped back to frame
indices, decoded with the project's decoder (:mod:`vau.datamodules.decoders`), shrunk to a fixed width and
JPEG-encoded. A video that is missing or cannot be decoded gives no thumbnails and a reason; it never stops the
report.

Example (a real file)::

    strip = video_thumbnails("clip.mp4", [0.0, 1.0, 2.0], width=96)
    strip.reason, len(strip.jpegs), strip.duration      # (None, 3, 4.0)
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vau.datamodules.decoders import VideoError, open_video

log = logging.getLogger(__name__)


@dataclass
class Strip:
    """Thumbnails of one video at some times.

    Attributes:
        jpegs: JPEG bytes, one per kept time, in the order of ``times``.
        times: the seconds the thumbnails show (a subset of the requested times).
        duration: the video's length in seconds (frames / fps), None when it could not be opened.
        reason: None on success, else ``missing``, ``unreadable`` or ``no_frames`` (``no_path`` when the clip
            names no video file).
    """

    jpegs: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    duration: float | None = None
    reason: str | None = None


def pick_times(times: Sequence[float], limit: int) -> list[float]:
    """At most ``limit`` of ``times``, spread evenly over the list (first and last kept).

    >>> pick_times([0, 1, 2, 3, 4, 5, 6, 7, 8], 3)
    [0.0, 4.0, 8.0]
    >>> pick_times([0.5, 1.5], 8)
    [0.5, 1.5]
    """
    values = [float(t) for t in times]
    if limit <= 0 or not values:
        return []
    if len(values) <= limit:
        return values
    if limit == 1:
        return [values[len(values) // 2]]
    picks = np.linspace(0, len(values) - 1, limit).round().astype(int)
    return [values[i] for i in picks]


def _jpeg(frame: np.ndarray, width: int, quality: int) -> bytes:
    from PIL import Image

    image = Image.fromarray(frame)
    height = max(1, round(image.height * width / image.width))
    # reducing_gap: a cheap box reduction first, then the filter; fast on full-HD frames and still sharp.
    image = image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def video_thumbnails(path: str | Path | None, times: Sequence[float], width: int = 96, quality: int = 70,
                     decoder: str = "pyav") -> Strip:
    """Decode the frames of ``path`` at ``times`` and return them as small JPEGs.

    Args:
        path: the video file (None: the clip names none).
        times: seconds of the frames to show; times past the end show the last frame.
        width: thumbnail width in pixels (the height keeps the aspect ratio).
        quality: JPEG quality (1-95).
        decoder: ``pyav`` or ``decord`` (see :mod:`vau.datamodules.decoders`).

    Returns:
        A :class:`Strip`; on a missing or unreadable video its ``reason`` says why and ``jpegs`` is empty.
    """
    if not path:
        return Strip(reason="no_path")
    try:
        source = open_video(path, decoder, num_threads=1)
        duration = source.total / source.fps
        indices = np.clip(np.round(np.asarray(times, dtype=float) * source.fps), 0, source.total - 1).astype(int)
        frames = source.frames(indices) if len(indices) else []
        return Strip([_jpeg(f, width, quality) for f in frames], [float(t) for t in times], duration)
    except VideoError as err:
        log.warning("report: no thumbnails for %s (%s)", path, err)
        return Strip(reason=err.reason)
    except Exception as err:  # a decoder failing in a way it does not classify: the report goes on without it
        log.warning("report: no thumbnails for %s (%s: %s)", path, type(err).__name__, err)
        return Strip(reason="unreadable")
