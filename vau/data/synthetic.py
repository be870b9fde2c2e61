"""Generated mini-benchmark: short mp4 clips with a visually learnable anomaly and VAU-Bench-format CSVs.

Every clip shows a grey dot drifting over a dark noisy background. During a known interval [start, end] an
anomalous clip takes on a colour tint and shows a large square of that colour; the colour says which anomaly
it is. Normal clips have no square
and the VAU-Bench normal convention (start = end = 0.0, class Normal).

Each question lists the four options in an order of its own (seeded), so the answer letter says nothing about the
class: a model has to see the colour *and* find the option that names it. With ``permute_options=False`` every row
lists them in one fixed order (A Normal, B Fire, C Fighting, D Traffic accident), where a model can learn the letter
of each colour instead (100% raw, 0% circular accuracy: see docs/scoring.md). Options are drawn from a stream of
their own, so the clips are the same either way (docs/data.md says what this demo does and does not test).

With ``distractor_ratio`` > 0, that share of the clips also shows a *distractor*: a small square of another
anomaly's colour that flashes for under a second without the tint, outside the anomaly interval. A first glance
can name the distractor's event (or its time), and the video corrects it: the real anomaly is the large square
with the tint. The CSVs then carry ``Distractor Option`` / ``Distractor Class`` / ``Distractor Start`` /
``Distractor End`` columns, which the ``template`` reflection builder uses as the plausible wrong first answer of
its corrective chains (SRVAU-R1 demo). Clips without a distractor are byte-identical to those of ratio 0.

Example (writes mp4 files)::

    from vau.data.synthetic import generate
    generate("/tmp/vau-demo", n_train=8, n_val=4, n_test=4, seed=0)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vau.data.annotations import COLUMNS, LETTERS, read_annotations, write_annotations
from vau.data.frame_annotations import write_ucf_crime, write_xd_violence

log = logging.getLogger(__name__)

XD_VIDEOS = "xd_videos"  # the test clips under their XD-Violence names (write_frame_formats)
GENERATOR_VERSION = 6  # 6: options in a seeded order per question (5: x264 without mbtree)


@dataclass(frozen=True)
class Kind:
    anomaly_class: str
    option: str
    color: tuple[int, int, int] | None
    color_name: str


KINDS = (
    Kind("Normal", "Nothing unusual happens", None, ""),
    Kind("Fire", "A fire breaks out", (230, 40, 30), "red"),
    Kind("Fighting", "A fight breaks out", (40, 210, 60), "green"),
    Kind("Traffic_accident", "A car crashes", (40, 80, 240), "blue"),
)
QUESTIONS = (
    "What happens in the video?",
    "Which event does the video show?",
    "What is the most notable event in this clip?",
)
# data.generate.question=order: is the coloured square before or after a white flash? Only the order of the frames
# tells (each frame shows at most one of the two), so a model that reads one frame is at chance (T-GRPO's demo).
ORDER_QUESTIONS = (
    "Does the coloured square appear before or after the white flash?",
    "When does the coloured square appear, compared with the white flash?",
)
ORDER_OPTIONS = ("Before the white flash", "After the white flash", "No coloured square appears",
                 "At the same time as the white flash")  # the last one is never right: four options, as VAU-Bench
QUESTION_KINDS = ("event", "order")
SPLITS = ("train", "val", "test")
DISTRACTOR_COLUMNS = ("Distractor Option", "Distractor Class", "Distractor Start", "Distractor End")


def corpus() -> list[str]:
    """Phrases the generated annotations use (for the tiny tokenizer)."""
    lines = list(QUESTIONS) + [k.option for k in KINDS]
    for k in KINDS:
        lines += [_description(k), _reasoning(k)]
    return lines


def _description(kind: Kind) -> str:
    if kind.color is None:
        return "A grey dot drifts across a dark scene and nothing else appears."
    return f"A grey dot drifts across a dark scene; then a {kind.color_name} square appears."


def _reasoning(kind: Kind) -> str:
    if kind.color is None:
        return "No square appears, so nothing unusual happens."
    return f"A {kind.color_name} square appears, so {kind.option[0].lower() + kind.option[1:].lower()}."


def _order_answer(kind: Kind, flash_first: bool) -> str:
    return ORDER_OPTIONS[2] if kind.color is None else ORDER_OPTIONS[1 if flash_first else 0]


def _order_reasoning(kind: Kind, flash_first: bool) -> str:
    if kind.color is None:
        return "Only a white flash appears, so no coloured square appears."
    answer = _order_answer(kind, flash_first).lower()
    if flash_first:
        return f"A white flash appears, then a {kind.color_name} square appears, so {answer}."
    return f"A {kind.color_name} square appears, then a white flash, so {answer}."


def _order_description(kind: Kind, flash_first: bool) -> str:
    if kind.color is None:
        return "A grey dot drifts across a dark scene; a white square flashes briefly."
    events = ("a white square flashes briefly, then a {c} square appears" if flash_first
              else "a {c} square appears, then a white square flashes briefly").format(c=kind.color_name)
    return f"A grey dot drifts across a dark scene; {events}."


def order_windows(kind: Kind, duration: float, rng: np.random.Generator
                  ) -> tuple[tuple[float, float] | None, tuple[float, float], bool]:
    """(anomaly interval or None, white flash window, flash first) for one clip of the order question: the two never
    overlap (at least 0.3 s apart after rounding), their order is a fair draw, and where they fall in the clip varies."""
    # 1.0-1.5 s: 8 frames spread over a clip of up to 8 s are at most 1 s apart, so every sampled clip shows it
    # (0.5-0.8 s flashes were missed in 1 of 5 test clips)
    flash = round(float(rng.uniform(1.0, 1.5)), 1)
    flash_first = bool(rng.integers(2))
    if kind.color is None:
        start = round(float(rng.uniform(0.1, duration - flash - 0.1)), 1)
        return None, (start, round(start + flash, 1)), flash_first
    length = round(float(rng.uniform(0.25, 0.4)) * duration, 1)
    slack = 0.9 * duration - (length + flash + 0.4)  # both inside [0.05, 0.95] of the clip, rounding included
    before = float(rng.uniform(0.0, slack))
    first_start = 0.05 * duration + before
    first_len = flash if flash_first else length
    second_start = first_start + first_len + 0.4 + float(rng.uniform(0.0, slack - before))
    a, b = round(first_start, 1), round(second_start, 1)
    if flash_first:
        return (b, round(b + length, 1)), (a, round(a + flash, 1)), True
    return (a, round(a + length, 1)), (b, round(b + flash, 1)), False


def add_flash(frames: np.ndarray, window: tuple[float, float], fps: int, rng: np.random.Generator) -> np.ndarray:
    """A small white square during ``window`` (seconds), without a tint; in place."""
    size = frames.shape[1]
    side = max(size // 5, 4)
    cy, cx = rng.integers(0, size - side, size=2)
    for t in range(frames.shape[0]):
        if window[0] <= t / fps < window[1]:
            frames[t, cy:cy + side, cx:cx + side] = 255
    return frames


def _description_with(kind: Kind, distractor: Kind) -> str:
    event = ("nothing else appears" if kind.color is None
             else f"then a {kind.color_name} square appears and the scene turns {kind.color_name}")
    return (f"A grey dot drifts across a dark scene; a small {distractor.color_name} square flashes briefly; "
            f"{event}.")


def _reasoning_with(kind: Kind, distractor: Kind) -> str:
    flash = f"The small {distractor.color_name} square only flashes for a moment, without the tint, so it is no event."
    return f"{flash} {_reasoning(kind)}"


def add_distractor(frames: np.ndarray, distractor: Kind, window: tuple[float, float], fps: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Draw a small square of ``distractor``'s colour, without the tint, during ``window`` (seconds); in place."""
    size = frames.shape[1]
    side = max(size // 6, 4)
    cy, cx = rng.integers(0, size - side, size=2)
    for t in range(frames.shape[0]):
        if window[0] <= t / fps < window[1]:
            frames[t, cy:cy + side, cx:cx + side] = distractor.color
    return frames


def distractor_window(interval: tuple[float, float] | None, duration: float,
                      rng: np.random.Generator) -> tuple[float, float] | None:
    """A flash of 0.5-0.9 s inside the clip and at least 0.3 s away from the anomaly interval; None when none fits."""
    length = float(rng.uniform(0.5, 0.9))
    gaps = [(0.0, duration)] if interval is None else [(0.0, interval[0] - 0.3), (interval[1] + 0.3, duration)]
    gaps = [(a, b) for a, b in gaps if b - a >= length]
    if not gaps:
        return None
    a, b = gaps[int(rng.integers(len(gaps)))]
    start = round(float(rng.uniform(a, b - length)), 1)
    end = round(start + length, 1)
    return (start, end) if end <= b else None


def render_clip(kind: Kind, interval: tuple[float, float] | None, fps: int, n_frames: int, size: int,
                rng: np.random.Generator) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 for one clip."""
    frames = rng.integers(10, 40, size=(n_frames, size, size, 3), dtype=np.uint8)
    dot = max(size // 14, 3)
    pos = rng.uniform(dot, size - 2 * dot, size=2)
    vel = rng.uniform(-2.0, 2.0, size=2)
    square = size // 2
    corner = rng.integers(0, size - square, size=2)
    for t in range(n_frames):
        pos = np.clip(pos + vel, 0, size - dot)
        y, x = pos.astype(int)
        frames[t, y:y + dot, x:x + dot] = 170
        if kind.color is not None and interval is not None and interval[0] <= t / fps < interval[1]:
            cy, cx = corner
            # A whole-frame tint makes the cue visible in every video token, so a tiny model learns it in minutes.
            frames[t] = (frames[t] * 0.5 + np.array(kind.color) * 0.25).astype(np.uint8)
            frames[t, cy:cy + square, cx:cx + square] = kind.color
    return frames


CUE_COLUMNS = ("Cue Start", "Cue End")
CUE_GREY = 128


def cue_window(interval: tuple[float, float] | None, duration: float, cue_seconds: float,
               event_seconds: tuple[float, float], rng: np.random.Generator) -> tuple[float, float]:
    """The seconds a clip's grey border shows: ``cue_seconds`` around the anomaly, clamped to the clip; for a normal
    clip a window as long as an anomalous clip's (the event's mean length + 2 x cue) at a random place (``rng``, a
    stream of its own, drawn for every clip so a setting never shifts another clip's draws).

    >>> cue_window((10.0, 12.0), 30.0, 3.0, (1.0, 3.0), np.random.default_rng(0))
    (7.0, 15.0)
    """
    length = sum(event_seconds) / 2 + 2 * cue_seconds
    start = float(rng.uniform(0.0, max(duration - length, 0.0)))
    if interval is None:
        return round(start, 1), round(min(start + length, duration), 1)
    return round(max(interval[0] - cue_seconds, 0.0), 1), round(min(interval[1] + cue_seconds, duration), 1)


def add_cue(frames: np.ndarray, window: tuple[float, float], fps: int) -> np.ndarray:
    """Draws the grey border (3 px, the same for every class) on the frames inside ``window`` (in place)."""
    width = 3
    for t in range(frames.shape[0]):
        if window[0] <= t / fps < window[1]:
            frames[t, :width], frames[t, -width:] = CUE_GREY, CUE_GREY
            frames[t, :, :width], frames[t, :, -width:] = CUE_GREY, CUE_GREY
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode frames (T, H, W, 3) uint8 as H.264 mp4 with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # One encoder thread: x264's threaded rate control makes the bytes depend on scheduling. No macroblock
        # tree: with it, the bytes of one clip depended on which clips the process had encoded before (seen on
        # libx264 in PyAV 18.1 wheels; ``no-asm`` also cured it, so an asm routine reads stale memory).
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "no-mbtree=1"}
        stream.codec_context.thread_count = 1
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = index  # explicit timestamps: left unset, x264's rate control sees arbitrary ones
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def shuffled_answers(rows: list[dict[str, str]], seed: int) -> list[dict[str, str]]:
    """The same rows with a uniformly random answer letter in place of the true one (reasoning kept).

    SFT on these teaches the reply format, and the true reasoning teaches the model to name the colour it
    sees, but nothing links that to the option letter: answers are at chance. GRPO from this policy must learn
    to commit to the option its own reasoning supports (see ``conf/experiment/demo_grpo.yaml``).
    """
    rng = np.random.default_rng([seed, 7])  # a stream of its own: the true rows stay as they are
    return [{**row, "Correct Option": LETTERS[int(rng.integers(len(LETTERS)))]} for row in rows]


@dataclass(frozen=True)
class DemoSpec:
    n_train: int = 240
    n_val: int = 48
    n_test: int = 96
    seed: int = 0
    fps: int = 8
    size: int = 112
    min_seconds: float = 4.0
    max_seconds: float = 8.0
    distractor_ratio: float = 0.0
    permute_options: bool = True
    version: int = GENERATOR_VERSION
    question: str = "event"  # event | order (module doc; left out of the manifest when "event")
    event_seconds: tuple[float, float] | None = None  # brief anomalies (module doc; left out of the manifest when None)
    cue_seconds: float | None = None  # a grey border around each event (module doc; left out of the manifest when None)

    def manifest(self) -> dict:
        """What ``demo.json`` records (the spec without defaults added after version 6, so older data stays valid)."""
        out = asdict(self)
        if out["question"] == "event":
            del out["question"]
        if out["event_seconds"] is None:
            del out["event_seconds"]
        else:
            out["event_seconds"] = list(out["event_seconds"])
        if out["cue_seconds"] is None:
            del out["cue_seconds"]
        return out


def generate(root: str | Path, n_train: int = 240, n_val: int = 48, n_test: int = 96, seed: int = 0, fps: int = 8,
             size: int = 112, min_seconds: float = 4.0, max_seconds: float = 8.0,
             distractor_ratio: float = 0.0, permute_options: bool = True, question: str = "event",
             event_seconds: tuple[float, float] | None = None, cue_seconds: float | None = None) -> Path:
    """Write ``root/videos/*.mp4`` and ``root/{train,val,test}.csv``; skip the work if ``root`` already holds
    the same spec. Classes are balanced within each split; everything follows from ``seed``.
    ``distractor_ratio``: the share of clips (per split, exact) that also show a distractor (module doc).
    ``permute_options``: each question lists its options in a seeded order of its own (module doc).
    ``question``: ``event`` (which event the clip shows) or ``order`` (whether the coloured square comes before or
    after a white flash: every clip also flashes a white square, and only the frames' order tells the answer).
    ``event_seconds``: ``[min, max]`` seconds of every anomaly (default: 40-70% of the clip). With long clips
    (``min_seconds=30, max_seconds=60, event_seconds=[1, 3]``) 8 uniformly spaced frames miss most anomalies: the
    demo for a model that looks again at a window it names.
    ``cue_seconds``: every clip also shows a grey border, the same for every class, from ``cue_seconds`` before its
    anomaly to as long after it (a normal clip: over a random window as long as an anomalous clip's cue), so sparse
    frames can see *where* something happens without seeing *what*: where to look again. The CSVs then carry
    ``Cue Start`` / ``Cue End``. Needs ``event_seconds``.

    Safe to call from several processes at once: one writes (holding a lock file next to ``root``), the others
    wait for it and reuse the finished data. A ``root`` holding data of another spec (same generator version) is
    an error, not rewritten: another run may be reading it.

    Returns:
        ``root``.
    """
    if not 0.0 <= float(distractor_ratio) <= 1.0:
        raise ValueError(f"distractor_ratio={distractor_ratio}: give a share between 0 and 1 "
                         f"(data.generate.distractor_ratio)")
    if question not in QUESTION_KINDS:
        raise ValueError(f"question={question!r}: choose one of {', '.join(QUESTION_KINDS)} (data.generate.question)")
    if question == "order" and float(min_seconds) < 4.0:
        raise ValueError(f"min_seconds={min_seconds}: the order question needs clips of 4 s or more (a square, a flash "
                         f"and a gap between them)")
    if question == "order" and float(distractor_ratio) > 0:
        raise ValueError("data.generate.question=order with distractor_ratio > 0: the two demos do not combine")
    if event_seconds is not None:
        event_seconds = _event_seconds(event_seconds, float(min_seconds), question)
    if cue_seconds is not None:
        if event_seconds is None or not 0 < float(cue_seconds) < float(min_seconds) / 4:
            raise ValueError(f"cue_seconds={cue_seconds!r}: give seconds > 0 and < min_seconds / 4, with event_seconds "
                             f"(data.generate.cue_seconds)")
        cue_seconds = float(cue_seconds)
    spec = DemoSpec(n_train, n_val, n_test, seed, fps, size, min_seconds, max_seconds, float(distractor_ratio),
                    bool(permute_options), question=question, event_seconds=event_seconds, cue_seconds=cue_seconds)
    root = Path(root)
    manifest = root / "demo.json"
    if _matches(manifest, spec) and (root / XD_VIDEOS).is_dir():
        return root
    # Several processes may ask for the same root at once (DDP ranks' prepare_data, two runs, `vau data generate`):
    # one generates while the others wait on the lock, then find the manifest and reuse the data. The manifest is
    # written last (atomically), so it only ever describes complete data.
    with _lock(root):
        if _matches(manifest, spec):
            if not (root / XD_VIDEOS).is_dir():  # data of this spec written before the XD-Violence copy existed
                try:
                    write_frame_formats(root, spec.fps)
                except OSError as err:  # e.g. a read-only copy of the data: everything else is there
                    log.warning("could not add the XD-Violence copy of the demo test split to %s (%s); "
                                "data.format=xd_violence runs on it will not find it", root, err)
            return root
        _refuse_another_spec(root, manifest, spec)
        manifest.unlink(missing_ok=True)  # a manifest of another spec must not vouch for files being rewritten
        _generate(root, spec)
        tmp = manifest.with_name(f".{manifest.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(spec.manifest(), indent=2))
        os.replace(tmp, manifest)
    return root


def _event_seconds(value, min_seconds: float, question: str) -> tuple[float, float]:
    """``event_seconds`` checked: two increasing positive numbers, shorter than the shortest clip."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"event_seconds={value!r}: give [min, max] seconds (data.generate.event_seconds)") from None
    if not 0 < low <= high or high >= 0.9 * min_seconds:
        raise ValueError(f"event_seconds={value!r}: need 0 < min <= max < 0.9 x min_seconds ({min_seconds:g} s) "
                         f"(data.generate.event_seconds)")
    if question != "event":
        raise ValueError("data.generate.event_seconds applies to the event question only (data.generate.question)")
    return low, high


def _refuse_another_spec(root: Path, manifest: Path, spec: DemoSpec) -> None:
    """Raise if ``root`` holds complete demo data of this generator version but another spec.

    Rewriting it would change the clips under any run that reads them (two runs with different
    ``data.generate`` values on one ``data.root``). Data of an older generator version is rewritten: no
    current run can be reading it as its own spec.
    """
    try:
        held = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return  # no manifest: nothing complete is there (an interrupted write), so it is rewritten
    if not isinstance(held, dict) or held.get("version") != spec.version:
        return
    wanted = spec.manifest()
    differs = ", ".join(f"{key} {held.get(key)!r} -> {wanted.get(key)!r}"
                        for key in sorted(set(held) | set(wanted)) if held.get(key) != wanted.get(key))
    raise ValueError(f"{root} holds demo data of another spec ({differs}); a run may be reading it, so it is not "
                     f"rewritten: give this spec a folder of its own (data.root=...) or delete {root} first")


def _matches(manifest: Path, spec: DemoSpec) -> bool:
    try:
        return json.loads(manifest.read_text()) == spec.manifest()
    except (OSError, ValueError):
        return False


@contextmanager
def _lock(root: Path):
    """An exclusive ``fcntl.flock`` on ``<parent>/.<root name>.lock`` (next to the data root), held while writing."""
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (one process at a time is then up to the user)
        yield
        return
    with open(root.parent / f".{root.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _generate(root: Path, spec: DemoSpec) -> None:
    n_train, n_val, n_test, seed, fps, size = spec.n_train, spec.n_val, spec.n_test, spec.seed, spec.fps, spec.size
    min_seconds, max_seconds = spec.min_seconds, spec.max_seconds
    log.info("generating the demo mini-benchmark in %s (%d/%d/%d clips)", root, n_train, n_val, n_test)
    rng = np.random.default_rng(seed)
    # Distractors draw from streams of their own, so the main stream (and every clip without one) is unchanged.
    flash_rng = np.random.default_rng([seed, 13])
    option_rng = np.random.default_rng([seed, 17])
    cue_rng = np.random.default_rng([seed, 19])
    counts = dict(zip(SPLITS, (n_train, n_val, n_test)))
    for split in SPLITS:
        rows = []
        kinds = [KINDS[i % len(KINDS)] for i in range(counts[split])]
        rng.shuffle(kinds)
        with_flash = set(flash_rng.permutation(len(kinds))[: round(spec.distractor_ratio * len(kinds))].tolist())
        for i, kind in enumerate(kinds):
            name = f"demo_{split}_{i:04d}.mp4"
            duration = float(rng.uniform(min_seconds, max_seconds))
            n_frames = int(round(duration * fps))
            interval = flash_window = None
            flash_first = False
            if spec.question == "order":  # from a stream of its own: the event demo's clips stay as they are
                interval, flash_window, flash_first = order_windows(kind, n_frames / fps, flash_rng)
            elif kind.color is not None:
                if spec.event_seconds is None:
                    length = float(rng.uniform(0.4, 0.7)) * duration
                else:  # one draw either way, so the stream (and every other clip property) keeps its order
                    length = float(rng.uniform(*spec.event_seconds))
                start = float(rng.uniform(0.05, 0.95 - length / duration)) * duration
                interval = (round(start, 1), round(start + length, 1))
            frames = render_clip(kind, interval, fps, n_frames, size, rng)
            cue = None
            if spec.cue_seconds is not None:
                cue = cue_window(interval, n_frames / fps, spec.cue_seconds, spec.event_seconds, cue_rng)
                add_cue(frames, cue, fps)
            if flash_window is not None:
                add_flash(frames, flash_window, fps, flash_rng)
            distractor, window = None, None
            if i in with_flash:
                others = [k for k in KINDS if k.color is not None and k is not kind]
                distractor = others[int(flash_rng.integers(len(others)))]
                window = distractor_window(interval, n_frames / fps, flash_rng)
                if window is not None:
                    add_distractor(frames, distractor, window, fps, flash_rng)
            write_mp4(root / "videos" / name, frames, fps)
            start_s, end_s = interval if interval is not None else (0.0, 0.0)
            # order[j] = the kind listed as option j; drawn for every row either way, so that a spec's other rows
            # do not depend on the setting
            order = [int(j) for j in option_rng.permutation(len(KINDS))]
            if not spec.permute_options:
                order = list(range(len(KINDS)))
            question = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
            options, answer = [KINDS[k].option for k in order], kind.option
            description, reasoning = _description(kind), _reasoning(kind)
            if spec.question == "order":
                question = ORDER_QUESTIONS[int(flash_rng.integers(len(ORDER_QUESTIONS)))]
                options, answer = [ORDER_OPTIONS[k] for k in order], _order_answer(kind, flash_first)
                description, reasoning = _order_description(kind, flash_first), _order_reasoning(kind, flash_first)
            rows.append({
                "Video Name": name,
                "Question": question,
                **{f"Option {j + 1}": text for j, text in enumerate(options)},
                "Correct Option": LETTERS[options.index(answer)],
                "Key Object": f"{kind.color_name} square" if kind.color else "grey dot",
                "Description": description,
                "Reasoning": reasoning,
                "Anomaly Class": kind.anomaly_class,
                "Start Time": f"{start_s:.1f}",
                "End Time": f"{end_s:.1f}",
            })
            if cue is not None:
                rows[-1].update({"Cue Start": f"{cue[0]:.1f}", "Cue End": f"{cue[1]:.1f}"})
            if spec.distractor_ratio > 0:  # the columns exist in every row of such a file (empty without a flash)
                flash = distractor is not None and window is not None
                rows[-1].update({
                    "Distractor Option": LETTERS[order.index(KINDS.index(distractor))] if flash else "",
                    "Distractor Class": distractor.anomaly_class if flash else "",
                    "Distractor Start": f"{window[0]:.1f}" if flash else "",
                    "Distractor End": f"{window[1]:.1f}" if flash else "",
                })
                if flash:
                    rows[-1]["Description"] = _description_with(kind, distractor)
                    rows[-1]["Reasoning"] = _reasoning_with(kind, distractor)
        columns = (*COLUMNS, *DISTRACTOR_COLUMNS) if spec.distractor_ratio > 0 else COLUMNS
        if spec.cue_seconds is not None:
            columns = (*columns, *CUE_COLUMNS)
        write_annotations(root / f"{split}.csv", rows, columns)
        if split == "test":  # the same test clips in UCF-Crime's and XD-Violence's frame-numbered formats
            write_frame_formats(root, spec.fps)
        if split == "train":
            write_annotations(root / "train_shuffled_answers.csv", shuffled_answers(rows, seed), columns)


def write_frame_formats(root: Path, fps: int) -> None:
    """The test split in UCF-Crime's format (``test_ucf_crime.txt``, ``data.format=ucf_crime``) and in XD-Violence's
    (``test_xd_violence.txt``, ``data.format=xd_violence``). XD-Violence names carry the class (``..._label_B1``)
    and have no extension, so its clips are the same files under those names in ``xd_videos/`` (hard links, copies
    where the file system has none): ``data.video_root=<root>/xd_videos``. The demo's Fire has no XD-Violence code
    and is written as G (explosion), the nearest; the frame-level metrics read only the frames."""
    rows = read_annotations(root / "test.csv")
    write_ucf_crime(root / "test_ucf_crime.txt", rows, fps)
    building = root / f".{XD_VIDEOS}.{os.getpid()}.tmp"  # renamed when complete: the folder's presence means done
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for name, video in write_xd_violence(root / "test_xd_violence.txt", rows, fps, codes={"Fire": "G"}).items():
        try:
            os.link(root / "videos" / video, building / f"{name}.mp4")
        except OSError:
            shutil.copyfile(root / "videos" / video, building / f"{name}.mp4")
    shutil.rmtree(root / XD_VIDEOS, ignore_errors=True)
    os.replace(building, root / XD_VIDEOS)


def write_broken_videos(folder: str | Path, fps: int = 8) -> dict[str, Path]:
    """Write one unusable file of every kind the loaders must survive (for tests and ``data check`` drills).

    Returns:
        kind -> path: ``truncated`` (an mp4 cut in half: no index), ``empty`` (0 bytes), ``text`` (text named
        .mp4), ``no_frames`` (a container with a video stream and no frame), ``missing`` (a path not written).
    """
    import av

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    good = folder / "_source.mp4"
    write_mp4(good, render_clip(KINDS[1], (1.0, 2.0), fps, 4 * fps, 64, rng), fps)
    data = good.read_bytes()
    paths = {kind: folder / f"broken_{kind}.mp4" for kind in ("truncated", "empty", "text", "no_frames", "missing")}
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["empty"].write_bytes(b"")
    paths["text"].write_text("this is not a video\n" * 20)
    # AVI keeps a stream without packets (mp4 drops it): decord refuses it, PyAV sees a stream and no frame.
    with av.open(str(good)) as src, av.open(str(paths["no_frames"]), "w", format="avi") as out:
        out.add_stream_from_template(src.streams.video[0])
        out.start_encoding()
    good.unlink()
    return paths
