"""Generated mini-benchmark: real mp4 files decoded by decord, exact VAU-Bench columns, deterministic."""

import csv
import json

import decord
import numpy as np
import pytest

from vau.data.annotations import COLUMNS, read_annotations
from vau.data.synthetic import KINDS, generate


def test_csv_has_vau_bench_columns_and_balanced_classes(demo_root):
    with open(demo_root / "train.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert len(rows) == 8
    assert sorted(r["Anomaly Class"] for r in rows) == sorted([k.anomaly_class for k in KINDS] * 2)
    for row in rows:
        if row["Anomaly Class"] == "Normal":
            assert (row["Start Time"], row["End Time"]) == ("0.0", "0.0")
        else:
            assert 0.0 < float(row["Start Time"]) < float(row["End Time"])


def test_options_are_permuted_per_question_and_the_letter_carries_no_class(tmp_path):
    root = generate(tmp_path / "p", n_train=32, n_val=1, n_test=1, seed=2, min_seconds=1.0, max_seconds=1.5)
    fixed = generate(tmp_path / "f", n_train=32, n_val=1, n_test=1, seed=2, min_seconds=1.0, max_seconds=1.5,
                     permute_options=False)
    rows, fixed_rows = read_annotations(root / "train.csv"), read_annotations(fixed / "train.csv")
    letter_of_class: dict[str, set[str]] = {}
    for ann, old in zip(rows, fixed_rows):
        kind = next(k for k in KINDS if k.anomaly_class == ann.anomaly_class)
        assert sorted(ann.options) == sorted(k.option for k in KINDS)
        assert ann.options["ABCD".index(ann.answer)] == kind.option  # the right letter names the clip's event
        letter_of_class.setdefault(ann.anomaly_class, set()).add(ann.answer)
        assert old.options == tuple(k.option for k in KINDS) and old.answer == "ABCD"[KINDS.index(kind)]
        # the clips are the same either way: options come from a stream of their own
        assert (root / "videos" / ann.video).read_bytes() == (fixed / "videos" / old.video).read_bytes()
    assert len({ann.options for ann in rows}) > 8
    assert all(len(letters) >= 3 for letters in letter_of_class.values()), letter_of_class
    assert len({ann.answer for ann in fixed_rows if ann.anomaly_class == "Fire"}) == 1


def test_video_round_trip_frame_count_fps_and_interval(demo_root):
    for ann in read_annotations(demo_root / "train.csv"):
        reader = decord.VideoReader(str(demo_root / "videos" / ann.video))
        fps = reader.get_avg_fps()
        assert abs(fps - 8.0) < 1e-6
        duration = len(reader) / fps
        assert 2.0 - 0.25 <= duration <= 3.0 + 0.25
        frames = reader.get_batch(list(range(len(reader)))).asnumpy().astype(float)
        # The anomaly tints the frame with its colour exactly inside [start, end]; normal clips stay dark.
        kind = next(k for k in KINDS if k.anomaly_class == ann.anomaly_class)
        times = np.arange(len(reader)) / fps
        if kind.color is None:
            assert frames.mean() < 60
            continue
        channel = int(np.argmax(kind.color))
        strength = frames[..., channel].mean(axis=(1, 2))
        start, end = ann.interval
        inside = (times >= start + 0.2) & (times < end - 0.2)
        outside = (times < start - 0.2) | (times >= end + 0.2)
        assert inside.any()
        assert strength[inside].min() > strength[outside].max() + 20 if outside.any() else True


def test_generation_is_deterministic_and_cached(tmp_path):
    a = generate(tmp_path / "a", n_train=4, n_val=1, n_test=1, seed=5, min_seconds=1.0, max_seconds=1.5)
    # Other clips encoded in between: x264 once leaked state from earlier encodes into later bytes.
    c = generate(tmp_path / "c", n_train=4, n_val=1, n_test=1, seed=6, min_seconds=1.0, max_seconds=1.5)
    b = generate(tmp_path / "b", n_train=4, n_val=1, n_test=1, seed=5, min_seconds=1.0, max_seconds=1.5)
    assert (a / "train.csv").read_text() == (b / "train.csv").read_text()
    for video in sorted((a / "videos").iterdir()):  # byte-identical, not just alike
        assert video.read_bytes() == (b / "videos" / video.name).read_bytes(), video.name
    mtime = (a / "train.csv").stat().st_mtime_ns
    generate(tmp_path / "a", n_train=4, n_val=1, n_test=1, seed=5, min_seconds=1.0, max_seconds=1.5)
    assert (a / "train.csv").stat().st_mtime_ns == mtime  # same spec: nothing rewritten
    assert (c / "train.csv").read_text() != (a / "train.csv").read_text()


def test_a_root_of_another_spec_is_refused_and_one_of_an_older_version_rewritten(tmp_path):
    spec = dict(n_train=4, n_val=1, n_test=1, seed=5, min_seconds=1.0, max_seconds=1.5)
    root = generate(tmp_path / "a", **spec)
    before = (root / "train.csv").read_text()
    # A second run with another data seed on the same folder would rewrite the clips under the first one.
    with pytest.raises(ValueError, match=r"seed 5 -> 6.*data\.root="):
        generate(root, **{**spec, "seed": 6})
    assert (root / "train.csv").read_text() == before and (root / "demo.json").is_file()
    manifest = json.loads((root / "demo.json").read_text())
    (root / "demo.json").write_text(json.dumps({**manifest, "version": manifest["version"] - 1, "seed": 6}))
    generate(root, **spec)  # data of an older generator is rewritten to this one's
    assert json.loads((root / "demo.json").read_text()) == manifest
    assert (root / "train.csv").read_text() == before


def test_distractor_flashes_outside_the_anomaly_and_leaves_other_clips_unchanged(tmp_path):
    from vau.datatools.reflection import build_chains

    spec = dict(n_train=8, n_val=1, n_test=1, seed=3, min_seconds=3.0, max_seconds=4.0)
    plain = generate(tmp_path / "plain", **spec)
    root = generate(tmp_path / "flash", **spec, distractor_ratio=0.5)
    rows = read_annotations(root / "train.csv")
    flashed = [r for r in rows if r.extra["Distractor Class"]]
    assert 1 <= len(flashed) <= 4  # 4 asked for; a clip whose anomaly leaves no gap gets none
    for ann in rows:
        same = (root / "videos" / ann.video).read_bytes() == (plain / "videos" / ann.video).read_bytes()
        assert same is (ann not in flashed), ann.video
    for ann in flashed:
        kind = next(k for k in KINDS if k.anomaly_class == ann.extra["Distractor Class"])
        assert kind.anomaly_class != ann.anomaly_class
        assert ann.options["ABCD".index(ann.extra["Distractor Option"])] == kind.option  # the letter follows its text
        start, end = float(ann.extra["Distractor Start"]), float(ann.extra["Distractor End"])
        if not ann.is_normal:
            assert end + 0.3 <= ann.interval[0] + 1e-6 or start - 0.3 >= ann.interval[1] - 1e-6
        reader = decord.VideoReader(str(root / "videos" / ann.video))
        frames = reader.get_batch(list(range(len(reader)))).asnumpy().astype(int)
        times = np.arange(len(reader)) / 8.0
        # Pixels close to the distractor's colour: present during its flash (a small square), absent well outside
        # it and the anomaly (the anomaly of another colour never produces them).
        near = (np.abs(frames - np.array(kind.color)).max(axis=-1) < 40).sum(axis=(1, 2))
        during = (times >= start + 0.13) & (times < end - 0.13)
        calm = (times < start - 0.3) | (times >= end + 0.3)
        assert during.any() and near[during].min() > 100 and near[calm].max() < 20
    chains, _ = build_chains(rows, tasks=["qa_reflect", "cls_reflect"], corrective_ratio=1.0)
    for index, ann in enumerate(rows):
        if ann in flashed:  # the corrective first answer is what a first glance at the flash suggests
            assert chains[(index, "qa_reflect")].initial_answer == ann.extra["Distractor Option"]
            assert chains[(index, "cls_reflect")].initial_answer == ann.extra["Distractor Class"]


def test_order_question_needs_the_order_of_the_frames(tmp_path):
    """data.generate.question=order: every clip flashes a white square and (unless normal) shows its coloured square
    at another time, never in the same frame; the answer says which came first, as the frames do; the reasoning
    quotes the answer option (so random_chain starts can retell it); the event demo's clips are unchanged."""
    from vau.data.synthetic import ORDER_OPTIONS
    from vau.tasks import get_task
    from vau.tasks.qa import quotes_answer

    spec = dict(n_train=12, n_val=1, n_test=1, seed=4, min_seconds=4.0, max_seconds=6.0)
    root = generate(tmp_path / "order", **spec, question="order")
    rows = read_annotations(root / "train.csv")
    answers = set()
    for ann in rows:
        assert sorted(ann.options) == sorted(ORDER_OPTIONS)
        answer = ann.options["ABCD".index(ann.answer)]
        answers.add(answer)
        assert quotes_answer(get_task("qa").sample(ann))
        reader = decord.VideoReader(str(root / "videos" / ann.video))
        frames = reader.get_batch(list(range(len(reader)))).asnumpy().astype(int)
        white = ((frames > 235).all(axis=-1)).sum(axis=(1, 2)) > 100
        assert white.any()
        if ann.is_normal:
            assert answer == "No coloured square appears"
            continue
        kind = next(k for k in KINDS if k.anomaly_class == ann.anomaly_class)
        coloured = (np.abs(frames - np.array(kind.color)).max(axis=-1) < 40).sum(axis=(1, 2)) > 500
        assert coloured.any() and not (white & coloured).any()  # one frame shows at most one of the two
        flash_first = np.flatnonzero(white)[0] < np.flatnonzero(coloured)[0]
        assert answer == ("After the white flash" if flash_first else "Before the white flash")
    assert answers == set(ORDER_OPTIONS[:3])  # both orders (and normal clips) occur; the fourth is never right
    plain = generate(tmp_path / "event", **spec)
    assert json.loads((plain / "demo.json").read_text()).get("question") is None  # older data stays valid
    with pytest.raises(ValueError, match="question='when'"):
        generate(tmp_path / "x", **spec, question="when")


def test_brief_anomalies_in_long_clips_are_missed_by_8_uniform_frames(tmp_path):
    """event_seconds=[1, 2] in 30-40 s clips: every anomaly lasts 1-2 s (as its pixels show), and 8 uniformly
    sampled frames, the demo's default view, show no coloured square in most anomalous clips: the data a second,
    denser look is for. Short demo data keep their manifest (no event_seconds key)."""
    from vau.datamodules.samplers import UniformSampler

    root = generate(tmp_path / "long", n_train=1, n_val=1, n_test=16, seed=0, min_seconds=30.0, max_seconds=40.0,
                    event_seconds=[1, 2])
    assert json.loads((root / "demo.json").read_text())["event_seconds"] == [1.0, 2.0]
    missed = anomalous = 0
    for ann in read_annotations(root / "test.csv"):
        if ann.is_normal:
            continue
        anomalous += 1
        start, end = ann.interval
        assert 1.0 - 0.1 <= end - start <= 2.0 + 0.1  # rounded to 0.1 s
        reader = decord.VideoReader(str(root / "videos" / ann.video))
        kind = next(k for k in KINDS if k.anomaly_class == ann.anomaly_class)
        frames = reader.get_batch(list(range(len(reader)))).asnumpy().astype(int)
        coloured = (np.abs(frames - np.array(kind.color)).max(axis=-1) < 40).sum(axis=(1, 2)) > 500
        shown = np.flatnonzero(coloured) / 8.0
        assert shown.min() >= start - 0.2 and shown.max() <= end + 0.2
        seen = UniformSampler(num_frames=8)(len(reader), 8.0).indices
        missed += not coloured[seen].any()
    # about 1 - 1.5 s / 4.4 s between sampled frames ~ 0.66 of the clips are expected to be missed
    assert anomalous == 12 and missed / anomalous >= 0.5, (missed, anomalous)
    with pytest.raises(ValueError, match="event_seconds"):
        generate(tmp_path / "bad", n_train=1, n_val=1, n_test=1, min_seconds=4.0, event_seconds=[3, 5])
