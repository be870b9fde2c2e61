"""``python -m vau predict``: real videos of several containers, sizes and lengths; checkpoints; resume; shifts."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from vau.cli import main
from vau.config import compose
from vau.run import run
from vau.tasks import Sample, get_task
from vau.tasks.qa import shift_options

OPTIONS = ("Nothing unusual happens", "A fire breaks out", "A fight breaks out", "A car crashes")


def _write_video(path, size, seconds, fps=8, codec="libx264", pix="yuv420p"):
    import av

    width, height = size
    rng = np.random.default_rng(seconds * 100 + width)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix
        for t in range(int(seconds * fps)):  # a bright square moving over noise: real content, not a flat frame
            frame = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
            x = int((width - 16) * t / max(1, seconds * fps - 1))
            frame[height // 3: height // 3 + 16, x: x + 16] = (220, 60, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A folder of real videos (mp4, mkv, avi; 64x48 to 320x240; 1 to 6 s) plus a corrupt and an empty file."""
    folder = tmp_path_factory.mktemp("clips")
    (folder / "street").mkdir()
    _write_video(folder / "a_small.mp4", (64, 48), 1)
    _write_video(folder / "street" / "b_wide.mkv", (320, 240), 6)
    _write_video(folder / "c_mid.avi", (160, 120), 3, codec="mpeg4")
    (folder / "d_corrupt.mp4").write_bytes((folder / "a_small.mp4").read_bytes()[:300])
    (folder / "e_empty.mov").write_bytes(b"")
    (folder / "f_loop.mp4").symlink_to(folder / "f_loop.mp4")  # a link to itself: counted unreadable, not lost
    (folder / "notes.txt").write_text("not a video")
    return folder


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _predict(capsys, *args):
    code = main(["predict", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_shift_options_round_trips_and_moves_the_answer():
    sample = Sample(task="qa", video="v.mp4", options=OPTIONS, answer="C")
    for k in range(4):
        shifted = shift_options(sample, k)
        assert shifted.options[ord(shifted.answer) - 65] == OPTIONS[2]  # the answer follows its option
        back = shift_options(Sample(task="qa", video="v", options=shifted.options, answer=shifted.answer), -k)
        assert back.options == OPTIONS and back.answer == "C"


@pytest.mark.parametrize("task", ["tag", "cls", "describe"])
def test_predict_on_a_folder_of_videos(task, clips, overrides, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    code, printed, err = _predict(capsys, *overrides, f"videos={clips}", f"task={task}", f"out={out}",
                                  "trainer.enable_progress_bar=false")
    assert code == 0, err
    records = _records(out)
    assert sorted(r["video"] for r in records) == ["a_small.mp4", "c_mid.avi", "street/b_wide.mkv"]
    durations = {"a_small.mp4": 1.0, "c_mid.avi": 3.0, "street/b_wide.mkv": 6.0}
    for r in records:
        assert r["task"] == task and isinstance(r["response"], str) and r["video_path"].startswith(str(clips))
        assert r["frame_times"] and 0 <= min(r["frame_times"]) <= max(r["frame_times"]) < durations[r["video"]] + 0.01
        assert r["duration"] == pytest.approx(durations[r["video"]], abs=0.2)
    assert "3 predicted, 0 already" in printed and "3 unreadable" in printed
    unreadable = (tmp_path / "preds.jsonl.unreadable.txt").read_text()
    assert "d_corrupt.mp4" in unreadable and "e_empty.mov" in unreadable and "f_loop.mp4" in unreadable
    with open(tmp_path / "preds.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and rows[0]["frame_times"]


def test_qa_on_raw_videos_needs_questions_and_asks_every_shift(clips, overrides, tmp_path, capsys):
    code, _, err = _predict(capsys, *overrides, f"videos={clips}", "task=qa", f"out={tmp_path / 'q.jsonl'}")
    assert code == 2 and "questions=FILE" in err
    questions = tmp_path / "questions.csv"
    with questions.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Video Name", "Question", "Option 1", "Option 2", "Option 3", "Option 4"])
        writer.writerow(["a_small.mp4", "What happens?", *OPTIONS])
        writer.writerow(["street/b_wide.mkv", "Which event is shown?", *OPTIONS])
    out = tmp_path / "q.jsonl"
    code, _, err = _predict(capsys, *overrides, f"videos={clips}", "task=qa", f"questions={questions}", f"out={out}",
                            "qa_shifts=all", "trainer.enable_progress_bar=false")
    assert code == 0, err
    records = _records(out)
    assert sorted((r["video"], r["shift"]) for r in records) == sorted(
        (v, k) for v in ("a_small.mp4", "street/b_wide.mkv") for k in range(4))
    for r in records:
        assert tuple(r["options"]) == tuple(OPTIONS[(i + r["shift"]) % 4] for i in range(4))


def test_predict_from_a_checkpoint_matches_the_test_stage_and_resumes(overrides, demo_root, tmp_path, capsys):
    # the run folder goes under paths.output_dir/demo/, where ckpt=last looks; validating at the epoch's end saves the
    # step checkpoint the test stage uses (the demo itself validates every 10th epoch)
    cfg = compose("demo", [*overrides, "trainer.check_val_every_n_epoch=1"])
    run("fit", cfg)
    (run_dir,) = (tmp_path / "outputs" / "demo").iterdir()
    tested = {r["video"]: r for r in _records(run_dir / "predictions_rank0.jsonl")}
    ckpt = sorted((run_dir / "checkpoints").glob("step*.ckpt"))[-1]  # the checkpoint the test stage used
    out = tmp_path / "p.jsonl"
    args = [f"ckpt={ckpt}", f"annotations={demo_root / 'test.csv'}", "task=qa", f"out={out}",
            "trainer.enable_progress_bar=false", "data.eval_batch_size=3"]
    code, printed, err = _predict(capsys, *args)
    assert code == 0, err
    records = _records(out)
    assert {r["video"] for r in records} == set(tested)
    for r in records:  # same weights, frames and greedy decoding: the same replies, batched differently
        assert r["response"] == tested[r["video"]]["response"]
        assert r["prediction"] == tested[r["video"]]["prediction"] and r["frame_times"] == tested[r["video"]]["frame_times"]
    # Interrupted after the first record: a re-run predicts only the rest.
    out.write_text(out.read_text().splitlines(keepends=True)[0] + '{"video": "torn')
    code, printed, err = _predict(capsys, *args)
    assert code == 0, err
    assert f"{len(tested) - 1} predicted, 1 already" in printed
    again = _records(out)  # every line whole: the torn line was cut off, not ended with a newline
    assert sorted(r["video"] for r in again) == sorted(tested)
    assert out.read_text().count("torn") == 0
    # ckpt=last: the newest run of the experiment under paths.output_dir (its last.ckpt: the same 2 steps)
    last = tmp_path / "last.jsonl"
    code, _, err = _predict(capsys, "conf=demo", *overrides, "ckpt=last", f"annotations={demo_root / 'test.csv'}",
                            "task=qa", f"out={last}")
    assert code == 0, err
    assert sorted((r["video"], r["response"]) for r in _records(last)) == sorted(
        (v, r["response"]) for v, r in tested.items())
    code, _, err = _predict(capsys, "conf=demo_grpo", *overrides, "ckpt=last", f"annotations={demo_root / 'test.csv'}",
                            "task=qa", f"out={tmp_path / 'none.jsonl'}")
    assert code == 2 and "ckpt=last" in err  # no run of that experiment yet: says so


def test_bad_arguments_name_the_key(tmp_path, capsys):
    code, _, err = _predict(capsys, "task=qa", f"out={tmp_path / 'x.jsonl'}")
    assert code == 2 and "annotations=FILE or videos=DIR" in err
    code, _, err = _predict(capsys, f"videos={tmp_path / 'none'}", "task=tag", f"out={tmp_path / 'x.jsonl'}")
    assert code == 2 and "not a folder" in err


def test_circular_accuracy_metric_needs_every_shift_right():
    from vau.metrics import CircularAccuracy

    one = Sample(task="qa", video="one.mp4", question="q1", options=OPTIONS, answer="B", row=2)
    two = Sample(task="qa", video="two.mp4", question="q2", options=OPTIONS, answer="C", row=3)
    metric = CircularAccuracy("qa")

    def reply(sample, right):
        letter = sample.answer if right else ("A" if sample.answer != "A" else "B")
        return f"<answer>{letter}</answer>"

    shifted = [(shift_options(one, k), True) for k in range(4)] + [(shift_options(two, k), k != 2) for k in range(4)]
    for part in (shifted[:3], shifted[3:]):  # a question's shifts split over two batches
        metric.update([reply(s, ok) for s, ok in part], [s for s, _ in part])
    assert float(metric.compute()) == 0.5  # one of two questions right under all 4 shifts
    partial = CircularAccuracy("qa")
    partial.update([reply(shift_options(one, k), True) for k in range(3)], [shift_options(one, k) for k in range(3)])
    assert float(partial.compute()) == 0.0  # a missing shift counts wrong


def test_initial_circular_accuracy_judges_the_first_answer_of_every_shift():
    """A reflecting policy that answers wrong first on purpose and corrects itself scores 1.0 circular on its final
    answers and 0.0 on its initial ones; a reply without a reflection counts with its only answer."""
    from vau.metrics import CircularAccuracy
    from vau.qa_position import position_scores
    from vau.tasks.metrics import view_metrics

    one = Sample(task="qa_reflect", video="one.mp4", question="q1", options=OPTIONS, answer="B", row=2)
    shifted = [shift_options(one, k) for k in range(4)]

    def reply(sample, first_right):
        wrong = "A" if sample.answer != "A" else "B"
        first = sample.answer if first_right else wrong
        return (f"<think>x</think><answer>{first}</answer><reflect>check</reflect><think>y</think>"
                f"<answer>{sample.answer}</answer>")

    for first_right, expected in ((False, 0.0), (True, 1.0)):
        final, initial = CircularAccuracy("qa_reflect"), CircularAccuracy("qa_reflect", initial=True)
        for metric in (final, initial):
            metric.update([reply(s, first_right) for s in shifted], shifted)
        assert float(final.compute()) == 1.0 and float(initial.compute()) == expected
        # `score` reads the same from prediction records (vau.qa_position.position_scores)
        records = {(s.video, k): {"response": reply(s, first_right)} for k, s in enumerate(shifted)}
        position = position_scores(get_task("qa_reflect"), [one], records)
        assert position["circular"] == 1.0 and position["initial_circular"] == expected
    plain = CircularAccuracy("qa_reflect", initial=True)
    plain.update([f"<answer>{s.answer}</answer>" for s in shifted], shifted)
    assert float(plain.compute()) == 1.0
    assert "qa_reflect_initial_circular_accuracy" in view_metrics(["qa_reflect"], circular=True)
    assert "qa_initial_circular_accuracy" not in view_metrics(["qa"], circular=True)  # one answer: nothing to add
    assert "qa_initial_circular_accuracy" in view_metrics(["qa"], circular=True, reflection=True)  # two-pass replies


def test_fit_with_qa_shifts_reports_circular_accuracy_like_score(overrides, demo_root, tmp_path, capsys):
    """data.qa_shifts=all: the test stage asks every question 4 times; qa_accuracy stays the original order's, and
    test/qa_circular_accuracy equals what `score` computes from the written predictions."""
    run_dir = tmp_path / "run"
    metrics = run("fit", compose("demo", [*overrides, f"run_dir={run_dir}", "data.qa_shifts=all"]))
    records = _records(run_dir / "predictions_rank0.jsonl")
    assert sorted({r["shift"] for r in records}) == [0, 1, 2, 3] and len(records) == 4 * len({r["video"] for r in records})
    out = tmp_path / "m.json"
    assert main(["score", f"annotations={demo_root / 'test.csv'}", f"predictions={run_dir / 'predictions_rank0.jsonl'}",
                 "task=qa", f"output={out}"]) == 0
    position = json.loads(out.read_text())["qa_position"]
    assert metrics["test/qa_circular_accuracy"] == pytest.approx(position["circular"])
    assert metrics["test/qa_accuracy"] == pytest.approx(position["raw"])
