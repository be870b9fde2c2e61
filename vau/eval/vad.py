"""Frame-level anomaly scores from a video LLM: ``python -m vau predict task=vad``.

A long video is cut into overlapping windows (``vad.window_seconds`` long, one every ``vad.stride_seconds``, each
shown to the model as ``vad.frames_per_window`` frames); every window is asked the question of ``vad.question``
(``cls_binary``: "Is there an anomaly in this video? ... Answer with Anomaly or Normal."), and its score is the
probability the model gives the answer "Anomaly" against "Normal" after its own reasoning: the greedy reply is cut
after ``<answer>``, both answers are appended, and ``sigmoid(log p(Anomaly...) - log p(Normal...))`` of the two
continuations is the window's score. A frame's score is the mean score of the windows that cover it, so the file
written holds one score per frame of the video, as ``python -m vau score frame_scores=`` reads it
(docs/scoring.md).

Decoding: the windows' frames lie on one grid of step ``window_seconds / frames_per_window`` (the stride is rounded
to a whole number of steps), so overlapping windows share frames and each frame is decoded once, in one pass over
the file. Each video's record is written when the video is done; a rerun skips the videos already in ``out``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vau.datamodules.decoders import open_video
from vau.datamodules.encoding import model_inputs
from vau.datamodules.video import DecodedClip, VideoError, resize_frames
from vau.outputs import cut_torn_line
from vau.tasks import Sample, get_task

log = logging.getLogger(__name__)

ANSWERS = ("Anomaly", "Normal")  # the two answers of the window question; the score is the first one's share
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


@dataclass(frozen=True)
class VADSettings:
    """``vad`` config node (conf/config.yaml)."""

    window_seconds: float = 4.0
    stride_seconds: float = 2.0
    frames_per_window: int = 8
    question: str = "cls_binary"

    @classmethod
    def from_cfg(cls, node) -> VADSettings:
        values = dict(node or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"vad.{unknown[0]}: not a key of vad (window_seconds, stride_seconds, frames_per_window, "
                             f"question)")
        try:
            out = cls(**{k: type(getattr(cls, k))(v) for k, v in values.items()})
        except (TypeError, ValueError) as err:
            raise ValueError(f"vad: {err}") from None
        if not (out.window_seconds > 0 and math.isfinite(out.window_seconds)):
            raise ValueError(f"vad.window_seconds={out.window_seconds}: give a positive number of seconds")
        if not (out.stride_seconds > 0 and math.isfinite(out.stride_seconds)):
            raise ValueError(f"vad.stride_seconds={out.stride_seconds}: give a positive number of seconds")
        if out.frames_per_window < 1:
            raise ValueError(f"vad.frames_per_window={out.frames_per_window}: give at least 1")
        return out


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows of one video lie and which frames they show.

    Attributes:
        indices: the video's frame numbers to decode, sorted, each once.
        windows: per window, (start second, end second, positions into ``indices`` of its frames in time order).
    """

    indices: np.ndarray
    windows: list[tuple[float, float, list[int]]]


def plan_windows(total_frames: int, rate: Fraction | float, settings: VADSettings) -> WindowPlan:
    """The windows over a video of ``total_frames`` frames at ``rate`` frames per second.

    Frames are taken at the middles of a grid of step ``window_seconds / frames_per_window``; window ``w`` shows grid
    points ``w * k .. w * k + frames_per_window - 1`` where ``k`` is the stride in steps (at least 1). Windows start
    until one reaches the end of the video; a video shorter than one window is one window over its whole length.

    >>> plan = plan_windows(100, 10, VADSettings(window_seconds=4, stride_seconds=2, frames_per_window=4))
    >>> [(s, e) for s, e, _ in plan.windows], plan.indices.tolist()
    ([(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 10.0)], [5, 15, 25, 35, 45, 55, 65, 75, 85, 95])
    """
    rate = Fraction(rate)
    if total_frames < 1 or rate <= 0:
        raise VideoError(f"no frames to plan windows over ({total_frames} frames at {float(rate)} fps)", "no_frames")
    duration = Fraction(total_frames) / rate
    window = Fraction(repr(float(settings.window_seconds)))
    n = int(settings.frames_per_window)
    if duration <= window:
        window = duration
    step = window / n
    k = max(1, round(Fraction(repr(float(settings.stride_seconds))) / step))
    count = 1 + max(0, math.ceil((duration - window) / (k * step)))
    points = (count - 1) * k + n
    times = [(g + Fraction(1, 2)) * step for g in range(points)]
    frame_of = [min(total_frames - 1, math.floor(t * rate)) for t in times]
    indices = sorted(set(frame_of))
    position = {f: i for i, f in enumerate(indices)}
    windows = []
    for w in range(count):
        start = w * k * step
        windows.append((float(start), float(min(start + window, duration)),
                        [position[frame_of[w * k + j]] for j in range(n)]))
    return WindowPlan(indices=np.asarray(indices, dtype=np.int64), windows=windows)


def frame_scores(plan: WindowPlan, window_scores: list[float], total_frames: int, rate: Fraction | float) -> list[float]:
    """One score per frame: the mean of the scores of the windows whose span holds the frame's middle (the last
    window's score for frames past every window, which :func:`plan_windows` never leaves)."""
    rate = Fraction(rate)
    sums = np.zeros(total_frames)
    counts = np.zeros(total_frames)
    for (start, end, _), score in zip(plan.windows, window_scores):
        first = max(0, math.ceil(Fraction(repr(start)) * rate - Fraction(1, 2)))
        last = min(total_frames - 1, math.ceil(Fraction(repr(end)) * rate - Fraction(1, 2)) - 1)
        sums[first:last + 1] += score
        counts[first:last + 1] += 1
    out = np.where(counts > 0, sums / np.maximum(counts, 1), window_scores[-1] if window_scores else 0.0)
    return [float(x) for x in out]


class WindowScorer:
    """Scores windows of decoded frames with a VAU module (its backbone, rollout engine and greedy settings).

    Args:
        module: a :class:`vau.modules.base.VAUModule` in eval mode on ``device``.
        data: the DataModule whose encoder and collate turn a (sample, clip) into model inputs.
        question: the task whose prompt each window is asked (its answers are :data:`ANSWERS`).
        batch_size: windows per forward.
    """

    def __init__(self, module, data, question: str, batch_size: int, device: torch.device) -> None:
        self.module = module
        self.data = data
        self.task = get_task(question)
        if self.task.answer_kind != "binary":
            raise ValueError(f"vad.question={question}: the window question must be answered Anomaly / Normal "
                             f"(a task with answer_kind 'binary', e.g. cls_binary)")
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self.tokenizer = module.backbone.processor.tokenizer
        self.no_answer = 0  # windows whose reply never opened <answer> (scored from the parsed reply instead)

    def _to_device(self, value):
        if isinstance(value, torch.Tensor):
            return value.to(self.device)
        if isinstance(value, dict):
            return {k: self._to_device(v) for k, v in value.items()}
        return value

    @torch.no_grad()
    def __call__(self, video: str, video_path: str, clips: list[DecodedClip]) -> tuple[list[float], list[str]]:
        scores, replies = [], []
        for begin in range(0, len(clips), self.batch_size):
            items = [self.data.encoder(Sample(task=self.task.name, video=video, video_path=video_path), clip,
                                       with_target=False) for clip in clips[begin:begin + self.batch_size]]
            batch = self._to_device(self.data.collate(items))
            inputs = model_inputs(batch, prompt_only=True)
            texts = self.module.decode(self.module.engine.replies(inputs, self.module.max_new_tokens))
            scores += self._answer_scores(inputs, texts, batch["samples"])
            replies += texts
        return scores, replies

    def _answer_scores(self, inputs: dict[str, torch.Tensor], texts: list[str], samples) -> list[float]:
        """p(Anomaly) against p(Normal) after each reply's own reasoning (its text up to ``<answer>``)."""
        rows, sequences = [], []
        out: list[float] = []
        for i, text in enumerate(texts):
            at = text.find(ANSWER_OPEN)
            if at < 0:
                self.no_answer += 1
                parsed = self.task.parse(text, samples[i])
                out.append(0.5 if parsed is None else float(bool(parsed)))
                continue
            prefix = text[: at + len(ANSWER_OPEN)]
            rows += [i, i]
            sequences += [prefix + answer + ANSWER_CLOSE for answer in ANSWERS]
            out.append(math.nan)
        if not rows:
            return out
        ids = [self.tokenizer(s, add_special_tokens=False)["input_ids"] for s in sequences]
        width = max(len(x) for x in ids)
        pad = self.module.backbone.pad_id
        completion = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=self.device)
        prompt = self.module.backbone.slice_vision(inputs, rows)
        full = self.module.backbone.append_text(prompt, completion, mask)
        logits = self.module.model(**full, logits_to_keep=width + 1, use_cache=False).logits[:, :-1].float()
        logps = torch.log_softmax(logits, dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        totals = (logps * mask).sum(dim=1).view(-1, 2)
        answer_scores = torch.sigmoid(totals[:, 0] - totals[:, 1]).tolist()
        it = iter(answer_scores)
        return [next(it) if math.isnan(x) else x for x in out]


def decode_windows(path: str, plan: WindowPlan, size_fn, chunk: int = 64) -> tuple[list[DecodedClip], int, float]:
    """The plan's frames decoded once and resized to the model's budget, as one clip per window; returns (clips,
    frames decoded, seconds spent). Frames are decoded in chunks of about ``chunk`` that end at key-frame groups (so
    no frame is decoded twice) and resized chunk by chunk (a 10-minute 1080p video never sits in memory at full size);
    a file without trustworthy timestamps is read front to back in one pass."""
    began = time.perf_counter()
    source = open_video(path, "pyav", 1)
    if getattr(source, "sequential", True):
        chunks = [plan.indices]
    else:
        chunks, current = [], []
        for _, frames in source.groups(plan.indices):
            current += frames
            if len(current) >= chunk:
                chunks.append(np.asarray(current, dtype=np.int64))
                current = []
        if current:
            chunks.append(np.asarray(current, dtype=np.int64))
    parts = []
    for indices in chunks:
        frames = source.frames(indices)
        if size_fn is not None:
            height, width = (int(x) for x in size_fn(len(plan.windows[0][2]), frames.shape[1], frames.shape[2]))
            if (height, width) != frames.shape[1:3]:
                frames = resize_frames(frames, height, width)
        parts.append(frames)
    total, fps = source.total, source.fps
    del source
    frames = np.concatenate(parts)
    clips = [DecodedClip(frames=frames[positions], indices=plan.indices[positions], fps=fps, total_frames=total)
             for _, _, positions in plan.windows]
    return clips, len(plan.indices), time.perf_counter() - began


def done_videos(out: Path) -> set[str]:
    """Videos already scored in ``out`` (a torn last line of a killed run is not counted)."""
    done = set()
    if out.is_file():
        for line in out.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("video"), str):
                done.add(record["video"])
    return done


def score_videos(videos: list[tuple[str, str]], scorer: WindowScorer, settings: VADSettings, out: Path,
                 size_fn=None, identity: dict | None = None) -> dict[str, Any]:
    """Writes one record per video (name, path) to ``out`` (JSON lines, appended as each video is done): its frame
    scores, its windows with their scores and replies, frames decoded and seconds spent decoding / in the model.
    Unreadable videos are counted and listed, never fatal."""
    done = done_videos(out)
    stats = {"videos": 0, "skipped_as_done": 0, "unreadable": [], "frames_decoded": 0, "windows": 0,
             "decode_seconds": 0.0, "model_seconds": 0.0}
    cut_torn_line(out)  # a killed run's torn last line: that video is scored again
    for name, path in videos:
        if name in done:
            stats["skipped_as_done"] += 1
            continue
        try:
            source = open_video(path, "pyav", 1)
            total, rate = source.total, source.rate
            del source
            plan = plan_windows(total, rate, settings)
            clips, decoded, decode_seconds = decode_windows(path, plan, size_fn)
        except VideoError as err:
            log.warning("video %s skipped: %s", path, err)
            stats["unreadable"].append({"video": name, "reason": err.reason, "error": str(err)})
            continue
        began = time.perf_counter()
        window_scores, replies = scorer(name, path, clips)
        model_seconds = time.perf_counter() - began
        record = {"video": name, "video_path": path, "frame_scores": [round(s, 6) for s in
                                                                      frame_scores(plan, window_scores, total, rate)],
                  "windows": [{"start": round(s, 3), "end": round(e, 3), "score": round(score, 6), "response": reply}
                              for (s, e, _), score, reply in zip(plan.windows, window_scores, replies)],
                  "frames_decoded": decoded, "frames": total}
        if identity:
            record["run"] = identity
        with out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        stats["videos"] += 1
        stats["frames_decoded"] += decoded
        stats["windows"] += len(plan.windows)
        stats["decode_seconds"] += decode_seconds
        stats["model_seconds"] += model_seconds
    return stats
