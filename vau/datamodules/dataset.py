"""Map-style dataset over task samples: decode the sampled frames, encode with the backbone's processor.

Bad input policy: a missing, unreadable or frame-less video never stops the loader and is never replaced by
another example. ``__getitem__`` returns ``{"bad": {...}}`` for it; the collator lists those under the batch's
``bad`` key; :class:`vau.callbacks.BadVideoMonitor` counts them, warns once per file and fails the run when
the skipped fraction exceeds ``data.max_bad_fraction``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from vau.datamodules.encoding import SampleEncoder
from vau.datamodules.samplers import WindowSampler
from vau.datamodules.video import FRAME_ORDERS, FrameCache, SizeFn, VideoError, read_clip, shuffle_frames
from vau.tasks import Sample, get_task
from vau.tasks.base import LOOK_CHAIN_KEY, LOOK_CUE_KEY, look_chain, look_turn
from vau.tasks.qa import TARGET_CHAIN_KEY, TARGET_LETTER_KEY

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")


class VideoResolver:
    """Finds a video file from its annotation name: the source's folder, then the default folder; exact name
    first, then ignoring case, then without the source prefix (``ucf_Abuse001_x264.mp4`` -> ``Abuse001_x264.mp4``),
    then, for a name without a video extension (XD-Violence's annotation names), the name plus each extension.

    Args:
        video_root: default folder of the videos (config key ``data.video_root``).
        source_roots: per-source folders (``data.video_roots.{msad,ucf,ecva}``).
    """

    def __init__(self, video_root: str | Path | None, source_roots: dict[str, str] | None = None) -> None:
        self.roots: dict[str, Path] = {k: Path(v) for k, v in (source_roots or {}).items() if v}
        self.default = Path(video_root) if video_root else None
        self._listings: dict[Path, dict[str, str]] = {}

    def _lower_listing(self, root: Path) -> dict[str, str]:
        if root not in self._listings:
            self._listings[root] = {p.name.lower(): p.name for p in root.iterdir()} if root.is_dir() else {}
        return self._listings[root]

    def __call__(self, name: str, source: str = "") -> Path:
        roots = [r for r in (self.roots.get(source), self.default) if r is not None]
        stripped = name.split("_", 1)[1] if source and name.lower().startswith(source + "_") else None
        candidates = [c for c in (name, stripped) if c]
        if not name.lower().endswith(VIDEO_SUFFIXES):  # "A.Beautiful.Mind.2001__#00-25-20_..._label_B2-0-0"
            candidates += [c + suffix for c in list(candidates) for suffix in VIDEO_SUFFIXES]
        for root in roots:
            for candidate in candidates:
                if (root / candidate).is_file():
                    return root / candidate
                found = self._lower_listing(root).get(candidate.lower())
                if found:
                    return root / found
        # Not found: the expected path; reading it gives a counted, named skip (and `data check` lists it).
        return (roots[0] if roots else Path(".")) / name


class VideoTaskDataset(Dataset):
    """Samples of one or several tasks; ``__getitem__`` returns the encoded example, or ``{"bad": ...}``.

    Keys are indices, or ``(epoch, index)`` pairs from :class:`vau.datamodules.loading.EpochSampler`.

    Args:
        samples: the task samples, with ``video_path`` set.
        encoder: a :class:`SampleEncoder` for the backbone's processor.
        sampler: a frame sampler from :data:`vau.registry.SAMPLERS`.
        train: training draws random frame positions from a generator seeded by (seed, epoch, index);
            evaluation picks deterministic positions.
        seed: the run's seed.
        with_target: append the target text (SFT); GRPO only needs the prompt.
        size_fn: frame size to resize to at decode time (``Backbone.frame_size``).
        size_key: identifies ``size_fn`` in frame-cache keys.
        cache: optional on-disk :class:`FrameCache` of decoded clips.
        num_threads: decoding threads per video.
        decoder: ``pyav`` or ``decord`` (:mod:`vau.datamodules.decoders`).
        shuffle_options: training only: ask each multiple-choice question with its options in a fresh random order
            every epoch (``Task.reorder_options``; drawn from a stream of its own, seeded by (seed, epoch, index)), so
            no option letter can carry the answer (``data.train_option_order: shuffled``).
        random_target_letters: training only: the SFT target of each multiple-choice question answers a letter drawn
            afresh every epoch (seeded by (seed, epoch, index)) while its reasoning stays true: a chance-level policy
            that cannot memorise a letter per clip (``data.qa_target_letter: random``).
        target_chains: with ``random_target_letters``: the whole chain follows the drawn letter, the reasoning naming
            its option (:func:`vau.tasks.qa.retell`; ``data.qa_target_letter: random_chain``).
        frames_order: ``ordered`` (as sampled), or ``shuffled``: the sampled frames in a seeded random order, each
            with its own timestamp (:func:`vau.datamodules.video.shuffle_frames`; ``data.frames_order``): how much
            a model's answers depend on the order of what it sees.
        look_frames: frames decoded from the window of a sample's look chain (``Sample.extra[LOOK_CHAIN_KEY]``,
            SFT of looking again): such a sample trains on its two-turn conversation, both replies as targets.
        look_chains: samples with a cue (``Sample.extra[LOOK_CUE_KEY]``, ``data.look_chains``) whose sampled frames
            miss the anomaly get a look chain at their cue's window (:func:`vau.tasks.base.look_chain`); the others
            keep their plain target.
    """

    def __init__(self, samples: list[Sample], encoder: SampleEncoder, sampler, train: bool, seed: int = 0,
                 with_target: bool = True, size_fn: SizeFn | None = None, size_key: str = "",
                 cache: FrameCache | None = None, num_threads: int = 1, decoder: str = "pyav",
                 shuffle_options: bool = False, random_target_letters: bool = False,
                 target_chains: bool = False, frames_order: str = "ordered", look_frames: int = 8,
                 look_chains: bool = False) -> None:
        if frames_order not in FRAME_ORDERS:
            raise ValueError(f"data.frames_order={frames_order!r}: choose one of {', '.join(FRAME_ORDERS)}")
        self.samples = samples
        self.encoder = encoder
        self.sampler = sampler
        self.train = train
        self.seed = seed
        self.epoch = 0  # used for plain integer keys only
        self.with_target = with_target
        self.size_fn = size_fn
        self.size_key = size_key
        self.cache = cache
        self.num_threads = num_threads
        self.decoder = decoder
        self.shuffle_options = bool(shuffle_options and train)
        self.random_target_letters = bool(random_target_letters and train)
        self.target_chains = bool(target_chains)
        self.frames_order = frames_order
        self.look_frames = int(look_frames)  # frames of the window a look chain's first reply names (SFT)
        self.look_chains = bool(look_chains)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        return self.item(key)

    def item(self, key: int | tuple[int, int], frames_order: str | None = None) -> dict[str, Any]:
        """The example at ``key`` with its frames in ``frames_order`` (default: the dataset's): the same sample,
        options and frame positions either way, so an ordered and a shuffled item differ only in frame order."""
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, tuple | list) else (self.epoch, int(key))
        frames_order = frames_order or self.frames_order
        sample = self.samples[index]
        if self.shuffle_options and sample.options:
            order = np.random.default_rng([self.seed, epoch, index, 1]).permutation(len(sample.options))
            sample = get_task(sample.task).reorder_options(sample, [int(i) for i in order])
        if self.random_target_letters and sample.options and sample.answer:
            letters = get_task(sample.task).answer_categories(sample)
            pick = int(np.random.default_rng([self.seed, epoch, index, 2]).integers(len(letters)))
            sample = replace(sample, extra={**sample.extra, TARGET_LETTER_KEY: letters[pick],
                                            TARGET_CHAIN_KEY: self.target_chains})
        chain = sample.extra.get(LOOK_CHAIN_KEY) if self.with_target else None
        clip = None
        if chain is None and self.look_chains and self.with_target and LOOK_CUE_KEY in sample.extra:
            try:
                clip = self._clip(sample, epoch, index, frames_order)
            except VideoError as err:
                return self._bad(sample, err)
            chain = self._look_chain(sample, clip, epoch, index)
        if chain is not None:  # SFT of a look chain: both replies of the two-turn conversation are targets
            window = (float(chain["window"][0]), float(chain["window"][1]))
            return self.look_item((epoch, index), sample, [(chain["first"], window, look_turn(window))],
                                  self.look_frames, target=chain["final"], frames_order=frames_order, clip=clip)
        try:
            clip = clip if clip is not None else self._clip(sample, epoch, index, frames_order)
        except VideoError as err:
            return self._bad(sample, err)
        item = self.encoder(sample, clip, with_target=self.with_target)
        item["key"] = (epoch, index)  # where it came from: T-GRPO re-reads the same example with shuffled frames
        return item

    def _look_chain(self, sample: Sample, clip, epoch: int, index: int) -> dict[str, Any] | None:
        """The look chain of a clip whose sampled frames miss its anomaly (a normal clip has none to see): look at
        the cue's window, first answering an option drawn at random (seeded by seed, epoch, index; the frames hold
        no evidence, so no answer is better); None when a frame shows the anomaly (then the plain target)."""
        times = np.asarray(clip.timestamps, dtype=float)
        if sample.interval is not None and not sample.is_normal:
            start, end = sample.interval
            if ((times >= start) & (times < end)).any():
                return None
        task = get_task(sample.task)
        choices = task.answer_categories(sample)
        guess_rng = np.random.default_rng([self.seed, epoch, index, 4])
        guess = choices[int(guess_rng.integers(len(choices)))] if choices else ""
        return look_chain(task.target(sample), sample, tuple(sample.extra[LOOK_CUE_KEY]), guess)

    def _clip(self, sample: Sample, epoch: int, index: int, frames_order: str):
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
        clip = read_clip(sample.video_path, self.sampler, rng, size_fn=self.size_fn, size_key=self.size_key,
                         cache=self.cache, num_threads=self.num_threads, decoder=self.decoder)
        if frames_order == "shuffled":
            clip = shuffle_frames(clip, np.random.default_rng([self.seed, epoch, index, 3]))
        return clip

    @staticmethod
    def _bad(sample: Sample, err: VideoError) -> dict[str, Any]:
        return {"bad": {"video": sample.video_path, "error": str(err), "reason": err.reason, "task": sample.task,
                        "row": sample.row}}

    def look_item(self, key: tuple[int, int], sample: Sample, turns: list[tuple[str, tuple[float, float], str]],
                  num_frames: int, target: str | None = None, frames_order: str | None = None,
                  clip=None, memo: dict | None = None) -> dict[str, Any]:
        """The prompt that continues example ``key`` (asked as ``sample``, as in its batch) after the model looked
        again: its own frames as :meth:`item` reads them, then per turn (reply, window in seconds, user text) the
        reply and ``num_frames`` frames of the window (:class:`vau.datamodules.samplers.WindowSampler`, true
        timestamps) with the text; ``{"bad": ...}`` when the video cannot be read again.
        ``look_frame_times`` lists the looked-at frames' times per turn. With ``target`` (SFT of a look chain) the
        replies of ``turns`` and ``target`` are the item's labels (:meth:`SampleEncoder.conversation`). ``memo``: a dict
        that keeps the clips decoded here for the next call with the same example or window (GRPO renders each of a
        prompt's G conversations twice in one step; a clip is the same every time)."""
        epoch, index = int(key[0]), int(key[1])
        order = frames_order or self.frames_order
        memo = {} if memo is None else memo
        try:
            if clip is None:
                first = ("clip", sample.video_path, epoch, index, order)
                if first not in memo:
                    memo[first] = self._clip(sample, epoch, index, order)
                clip = memo[first]
            looks = []
            for _, window, _ in turns:
                seen = ("window", sample.video_path, tuple(window), int(num_frames))
                if seen not in memo:
                    memo[seen] = read_clip(sample.video_path, WindowSampler(window, num_frames), None,
                                           size_fn=self.size_fn, size_key=self.size_key, cache=self.cache,
                                           num_threads=self.num_threads, decoder=self.decoder)
                looks.append(memo[seen])
        except VideoError as err:
            return self._bad(sample, err)
        item = self.encoder.conversation(sample, clip, [(reply, look, text)
                                                        for (reply, _, text), look in zip(turns, looks)], target=target)
        item["key"] = (epoch, index)
        item["look_frame_times"] = [[round(float(t), 3) for t in look.timestamps] for look in looks]
        return item
