"""Decoders: a video file and frame indices in, uint8 RGB frames out. ``pyav`` (default) and ``decord``.

Both number frames alike (the display order of the stream's timestamps, decord's numbering) and, where decord is
right, return bit-identical 8-bit frames; the tests compare both with a front-to-back decode of the stream.
``decord`` is what VAU-R1 and qwen-vl-utils read with; decord 0.6 returns wrong frames after seeks in AVI,
MPEG-TS, MPEG-PS and open-GOP streams, counts frames an edit list hides, cannot open raw ``.h264`` streams and
fails on 72x72 frames (docs/data.md lists what each decoder does). ``pyav`` reaches the same output with less
work, and decoding, not resizing, is most of a read:

* it seeks to the key frame before each group of wanted frames and stops at the group's last wanted frame;
* it lets FFmpeg drop frames that are neither wanted nor referenced by another frame (``skip_frame=NONREF``,
  switched per packet, so a wanted non-reference frame is still decoded);
* it decodes independent key-frame groups in ``num_threads`` threads, each with its own demuxer and a
  single-threaded decoder (FFmpeg decodes without the GIL); when there are fewer groups than threads it uses
  FFmpeg's frame threading instead.

Files whose timestamps a seek does not reproduce (no or repeated timestamps, MPEG-PS, H.264 in AVI) are read
front to back and their frames numbered in output order; a check on every packet after a seek sends any other
such file down the same path.

Example (a real file)::

    source = open_video("video.mp4", "pyav", num_threads=2)
    source.total, source.fps, source.frames(np.array([0, 30])).shape   # (1800, 30.0, (2, 360, 640, 3))
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

DECODERS = ("pyav", "decord")


class VideoError(RuntimeError):
    """A video that cannot be used. The message names the file; ``reason`` is ``missing``, ``unreadable`` or
    ``no_frames`` (what ``python -m vau data check`` lists)."""

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason


class VideoSource(Protocol):
    total: int  # frames in the video
    fps: float  # the stream's average frame rate

    def frames(self, indices: np.ndarray) -> np.ndarray:
        """(len(indices), H, W, 3) uint8 RGB frames, in the order of ``indices``."""


def check_decoder(name: str) -> str:
    """``name`` if it is a decoder, else a ValueError naming the config key and the choices."""
    if name not in DECODERS:
        raise ValueError(f"data.decoder={name!r} is not a decoder; choose one of {', '.join(DECODERS)}")
    return name


def open_video(path: str | Path, decoder: str = "pyav", num_threads: int = 1) -> VideoSource:
    """Open ``path`` for reading frames.

    Args:
        path: the video file.
        decoder: ``pyav`` or ``decord`` (config key ``data.decoder``).
        num_threads: decoding threads for one video (0 = one per core); keep 1 inside DataLoader workers.

    Raises:
        VideoError: the file is missing, cannot be opened, or has no frames.
        ValueError: an unknown decoder name.
    """
    check_decoder(decoder)
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video {path} does not exist", "missing")
    if path.stat().st_size == 0:
        raise VideoError(f"video {path} is an empty file", "unreadable")
    if decoder == "pyav":
        return PyAVSource(path, num_threads if num_threads > 0 else min(os.cpu_count() or 1, 8))
    return DecordSource(path, num_threads)


def _check(path: Path, total: int, fps: float) -> None:
    if total <= 0:
        raise VideoError(f"video {path} has no frames", "no_frames")
    if not fps > 0:
        raise VideoError(f"video {path} reports fps={fps}; frames cannot be placed in time")


def _decode_error(path: Path, err: Exception) -> VideoError:
    return VideoError(f"video {path} cannot be decoded: {type(err).__name__}: {str(err)[:200]}")


class DecordSource:
    """``decord.VideoReader.get_batch``."""

    def __init__(self, path: Path, num_threads: int) -> None:
        import decord

        self.path = path
        try:
            self.reader = decord.VideoReader(str(path), num_threads=num_threads)
            self.total, self.fps = len(self.reader), float(self.reader.get_avg_fps())
        except Exception as err:  # decord raises DECORDError / RuntimeError with ffmpeg's words
            if _has_no_frames(path):
                raise VideoError(f"video {path} holds no video frames", "no_frames") from err
            raise VideoError(f"video {path} cannot be opened: {type(err).__name__}: {str(err)[:200]}") from err
        _check(path, self.total, self.fps)

    def frames(self, indices: np.ndarray) -> np.ndarray:
        try:
            return self.reader.get_batch([int(i) for i in indices]).asnumpy()
        except Exception as err:
            raise _decode_error(self.path, err) from err


def _has_no_frames(path: Path) -> bool:
    """True when ``path`` is a well-formed container without any video frame (decord only says it failed)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return True
            return next(iter(container.decode(container.streams.video[0])), None) is None
    except Exception:  # not a container at all: unreadable, not empty
        return False


# Containers whose packets carry stored presentation timestamps that a seek reproduces. Others (MPEG-PS, raw
# streams, ...) have guessed timestamps and are read front to back.
SEEKABLE_FORMATS = {"mov", "mp4", "matroska", "webm", "mpegts", "flv", "avi"}
# AVI stores no presentation times: for codecs that reorder frames its timestamps are in decode order.
REORDERING_CODECS = {"h264", "hevc", "vvc"}


class _Unreliable(Exception):
    """Timestamps after a seek do not match the index pass; the source falls back to reading front to back."""


class PyAVSource:
    """Frames by key-frame group, non-reference frames skipped, groups decoded in parallel (see module doc).

    Frame ``i`` is the i-th presented frame in timestamp order. Packets an edit list discards (pre-roll of a
    trimmed clip) are not frames, but their key frames are still decoded from.
    """

    def __init__(self, path: Path, num_threads: int) -> None:
        import av

        self.path, self.num_threads = path, num_threads
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise VideoError(f"video {path} holds no video stream", "no_frames")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                listed = int(stream.frames or 0)
                formats = set(container.format.name.split(","))
                codec_name = stream.codec_context.name
                self.size = (stream.codec_context.width, stream.codec_context.height)
                packets = []  # (pts, dts, key, discard)
                # One pass over the packets (no decoding): exact frame numbering, even for variable frame rates.
                for packet in container.demux(stream):
                    if packet.size == 0:  # the demuxer's end-of-stream marker
                        continue
                    packets.append((packet.pts, packet.dts, packet.is_keyframe, packet.is_discard))
        except VideoError:
            raise
        except Exception as err:  # av.error.* with FFmpeg's words
            raise VideoError(f"video {path} cannot be opened: {type(err).__name__}: {str(err)[:200]}") from err
        self.fps = float(rate) if rate else 0.0
        self.rate = Fraction(rate) if rate else Fraction(0)  # exact (29.97 fps is 30000/1001)
        discarded = sum(p[3] for p in packets)
        self.total = len(packets) - discarded
        _check(path, self.total, self.fps)
        if listed and len(packets) < listed and formats & {"mov", "mp4"} and not discarded:
            # moov lists more samples than the file holds: cut off mid-way (other containers count loosely)
            raise VideoError(f"video {path} is truncated: its index lists {listed} frames, the file holds "
                             f"{len(packets)}")
        pts = [p[0] for p in packets]
        # Without trustworthy timestamps frames can only be numbered in the order the decoder puts them out.
        self.sequential = (any(t is None for t in pts) or len(set(pts)) < len(pts) or not formats & SEEKABLE_FORMATS
                           or ("avi" in formats and codec_name in REORDERING_CODECS))
        if self.sequential:
            log.debug("%s: no trustworthy timestamps (%s, %s); frames are read front to back", path,
                      ",".join(sorted(formats)), codec_name)
            return
        self.decode_order = {t: i for i, t in enumerate(pts)}  # pts -> position in decode order
        self.decode_pts = pts
        order = np.argsort(np.asarray(pts), kind="stable")
        table = [packets[i] for i in order]
        self.all_pts = np.array([p[0] for p in table], dtype=np.int64)
        self.all_dts = np.array([p[0] if p[1] is None else p[1] for p in table], dtype=np.int64)
        self.key_positions = np.flatnonzero([p[2] for p in table])
        self.frame_positions = np.flatnonzero([not p[3] for p in table])  # frame i -> row of the packet table
        self.pts = self.all_pts[self.frame_positions]

    def groups(self, indices: np.ndarray) -> list[tuple[int | None, list[int]]]:
        """Wanted frames grouped by the key frame they decode from: ``[(key's packet row or None, [frame, ...])]``.
        None: frames before the first key frame, decoded from the start of the file."""
        groups: dict[int | None, list[int]] = {}
        for i in sorted({int(i) for i in indices}):
            k = int(np.searchsorted(self.key_positions, self.frame_positions[i], side="right")) - 1
            groups.setdefault(int(self.key_positions[k]) if k >= 0 else None, []).append(i)
        return sorted(groups.items(), key=lambda g: -1 if g[0] is None else g[0])

    def frames(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if not indices.size:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        if indices.min() < 0 or indices.max() >= self.total:
            raise VideoError(f"video {self.path}: frame indices must lie in [0, {self.total}), got "
                             f"{indices.min()}..{indices.max()}")
        if not self.sequential:
            try:
                return self._frames_by_group(indices)
            except _Unreliable as why:
                log.warning("%s: %s; reading this video front to back from now on", self.path, why)
                self.sequential = True
        return self._decode_in_order(indices)

    def _frames_by_group(self, indices: np.ndarray) -> np.ndarray:
        groups = self.groups(indices)
        workers = min(self.num_threads, len(groups))
        if workers <= 1:
            decoded = self._decode_groups(groups, frame_threads=self.num_threads)
        else:  # contiguous shares of about equal decoding work, so each thread reads the file forwards
            cost = np.array([self.frame_positions[g[1][-1]] - (g[0] or 0) + 1 for g in groups], dtype=float)
            share = np.minimum((np.cumsum(cost) - cost / 2) * workers // cost.sum(), workers - 1).astype(int)
            parts = [[g for g, s in zip(groups, share) if s == w] for w in range(workers)]
            decoded = {}
            with ThreadPoolExecutor(workers) as pool:
                for part in pool.map(self._decode_groups, [p for p in parts if p]):
                    decoded.update(part)
        return np.stack([decoded[int(self.pts[i])] for i in indices])

    def _rgb(self, frame) -> np.ndarray:
        """The frame as decord gives it: RGB, at the stream's first size, turned upright by the display matrix."""
        if (frame.width, frame.height) != self.size:  # the resolution changed mid-stream
            rgb = frame.to_ndarray(format="rgb24", width=self.size[0], height=self.size[1])
        else:
            rgb = frame.to_ndarray(format="rgb24")
        turns = (int(getattr(frame, "rotation", 0) or 0) // 90) % 4
        return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb

    def _decode_in_order(self, indices: np.ndarray) -> np.ndarray:
        import av

        wanted, out, position, last = set(indices.tolist()), {}, 0, int(indices.max())
        try:
            with av.open(str(self.path)) as container:
                for frame in container.decode(video=0):
                    if position in wanted:
                        out[position] = self._rgb(frame)
                    position += 1
                    if position > last:
                        break
        except Exception as err:
            raise _decode_error(self.path, err) from err
        if len(out) < len(wanted):
            raise VideoError(f"video {self.path}: frames {sorted(wanted - set(out))[:5]} could not be decoded")
        return np.stack([out[int(i)] for i in indices])

    def _decode_groups(self, groups: list[tuple[int | None, list[int]]], frame_threads: int = 1) -> dict:
        import av

        out: dict[int, np.ndarray] = {}
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                codec = stream.codec_context
                if frame_threads > 1:
                    stream.thread_type = "AUTO"
                codec.thread_count = frame_threads
                for key, frames in groups:
                    wanted = {int(self.pts[i]) for i in frames}
                    self._decode_until(self._seek(container, stream, key), stream, wanted, out)
                    if wanted:
                        missing = sorted(int(np.searchsorted(self.pts, p)) for p in wanted)
                        raise VideoError(f"video {self.path}: frames {missing[:5]} could not be decoded")
        except (VideoError, _Unreliable):
            raise
        except Exception as err:
            raise _decode_error(self.path, err) from err
        return out

    def _seek(self, container, stream, key: int | None) -> Iterator:
        """Packets from the key frame in packet row ``key`` onwards (None: the file's first packets; the
        None group always comes first in a fresh container, so nothing needs seeking)."""
        if key is None:
            return self._as_indexed(container.demux(stream))
        # Seek by the key frame's pts, then its dts, then earlier key frames: demuxers index by one or the other,
        # and MPEG-TS bisects and may land past the target. Landing early only costs decoding; a landing counts
        # when its first packet comes no later than the key frame in decode order.
        earlier = self.key_positions[self.key_positions <= key][::-1][1:4]
        targets = [self.all_pts[key], self.all_dts[key], *self.all_pts[earlier]]
        for target in targets:
            stream.codec_context.flush_buffers()
            container.seek(int(target), stream=stream, backward=True, any_frame=False)
            packets = container.demux(stream)
            first = next(packets, None)
            if first is None:
                continue
            landed = first.dts if first.dts is not None else (first.pts if first.is_keyframe else None)
            if landed is not None and landed <= self.all_dts[key]:
                return self._as_indexed(itertools.chain([first], packets))
        raise _Unreliable(f"no seek lands on or before the key frame at pts {self.all_pts[key]}")

    def _as_indexed(self, packets: Iterator) -> Iterator:
        """``packets``, checked to carry the index pass's timestamps in its decode order: a demuxer that guesses
        timestamps may guess differently after a seek, and a frame would then come back under another number."""
        position = None
        for packet in packets:
            if packet.size:
                expected = self.decode_order.get(packet.pts) if position is None else position
                if expected is None or expected >= len(self.decode_pts) or self.decode_pts[expected] != packet.pts:
                    raise _Unreliable(f"after a seek, packet pts {packet.pts} is not where the index pass saw it")
                position = expected + 1
            yield packet

    def _decode_until(self, packets: Iterator, stream, wanted: set[int], out: dict[int, np.ndarray]) -> None:
        """Feed ``packets`` until every pts in ``wanted`` is in ``out`` (removed from ``wanted`` as they arrive)
        or the stream ends. Frames must come out in increasing pts, or the timestamps cannot be trusted."""
        codec = stream.codec_context
        last = None

        def take(frame) -> None:
            nonlocal last
            if frame.pts is None or (last is not None and frame.pts <= last):
                raise _Unreliable(f"decoded timestamps run backwards ({last} then {frame.pts})")
            last = frame.pts
            if frame.pts in wanted:
                out[frame.pts] = self._rgb(frame)
                wanted.discard(frame.pts)

        for packet in packets:
            if packet.size == 0:
                break
            # Frames nobody waits for and nobody references need not be reconstructed at all.
            codec.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
            for frame in codec.decode(packet):
                take(frame)
            if not wanted:
                return
        codec.skip_frame = "DEFAULT"
        for frame in codec.decode(None):  # drain the frames still held back for reordering
            take(frame)
