"""The evaluation report of ``python -m vau score``: every number of a hand-made benchmark against a hand computation
(per source, circular accuracy, constant-letter baselines, confusion cells, IoU histogram, false alarms), the files
of ``report=DIR``, the test stage's TensorBoard report, and the letter skew of the real MSAD test file."""

from __future__ import annotations

import csv
import json

import pytest

from tests.shared_data import SHARED
from vau.data.annotations import COLUMNS, write_annotations
from vau.eval.score import main
from vau.qa_position import original_letter, original_option, shown_options

MSAD_TEST = SHARED / "test_msad.csv"
OPTIONS = ("Nothing unusual happens", "A fire breaks out", "A fight starts", "Someone steals a bag")


def _row(video, answer, start, end, cls):
    row = dict.fromkeys(COLUMNS, "")
    row.update({"Video Name": video, "Question": "What happens in the video?", "Correct Option": answer,
                "Anomaly Class": cls, "Start Time": start, "End Time": end, "Description": "d", "Reasoning": "r",
                "Key Object": "k", **{f"Option {i + 1}": o for i, o in enumerate(OPTIONS)}})
    return row


# Two clips per source, one anomalous and one normal each.
ROWS = [
    ("msad_Fire_1.mp4", "A", "2", "6", "Fire"),
    ("msad_normal_1.mp4", "A", "0", "0", "Normal"),
    ("ucf_Fighting_1.mp4", "B", "10", "20", "Fighting"),
    ("ucf_normal_2.mp4", "C", "0", "0", "Normal"),
    ("ecva_Robbery_1.mp4", "A", "0", "10", "Robbery"),
    ("ecva_normal_3.mp4", "D", "0", "0", "Normal"),
]


@pytest.fixture
def bench(tmp_path):
    path = tmp_path / "bench.csv"
    write_annotations(path, [_row(*r) for r in ROWS])
    return path


def _qa(video, reply, shift=None, **extra):
    record = {"video": video, "task": "qa", "response": f"<think>t</think><answer>{reply}</answer>", **extra}
    return record if shift is None else {**record, "shift": shift}


def _predictions():
    """Replies with a known score each; the comments give the hand computation."""
    return [
        # QA. Under shift k reply letter j answers original option (j + k) mod 4.
        _qa("msad_Fire_1.mp4", "A"), _qa("msad_Fire_1.mp4", "D", 1), _qa("msad_Fire_1.mp4", "C", 2),
        _qa("msad_Fire_1.mp4", "B", 3),                                   # right under all 4 shifts: circular right
        _qa("msad_normal_1.mp4", "A", 0), _qa("msad_normal_1.mp4", "D", 1), _qa("msad_normal_1.mp4", "C", 2),
        _qa("msad_normal_1.mp4", "A", 3),                                 # shift 3: A answers D -> right 3 of 4
        _qa("ucf_Fighting_1.mp4", "A"), _qa("ucf_Fighting_1.mp4", "A", 1),  # raw wrong; shifts 2, 3 missing
        _qa("ucf_normal_2.mp4", "C"),                                     # raw right; no shifted record
        _qa("ecva_Robbery_1.mp4", "A"),
        _qa("ecva_Robbery_1.mp4", OPTIONS[0], 1),                         # option text: shown as D under shift 1
        _qa("ecva_Robbery_1.mp4", "C", 2),
        _qa("ecva_Robbery_1.mp4", OPTIONS[0], 3, options=list(shown_options(OPTIONS, 3))),  # B as asked -> A
        # ecva_normal_3: no QA reply at all (counted wrong)
        # TAG: IoU 1, 0.5 and 1/6 on the anomalous clips; normal clips: [0, 0] (right), [3, 5] (false alarm),
        # none (counted as a false alarm).
        {"video": "msad_Fire_1.mp4", "task": "tag", "response": "<answer>[2, 6]</answer>",
         "frame_times": [0.0, 2.5, 5.0], "video_path": "/videos/msad_Fire_1.mp4", "duration": 7.5},
        {"video": "ucf_Fighting_1.mp4", "task": "tag", "response": "<answer>[15, 20]</answer>"},
        {"video": "ecva_Robbery_1.mp4", "task": "tag", "response": "<answer>[8, 12]</answer>"},
        {"video": "msad_normal_1.mp4", "task": "tag", "response": "<answer>[0.0, 0.0]</answer>"},
        {"video": "ucf_normal_2.mp4", "task": "tag", "response": "<answer>[3, 5]</answer>"},
        # CLS: right, right, wrong class (still anomalous), Normal called Robbery, no class, right.
        {"video": "msad_Fire_1.mp4", "task": "cls", "response": "<answer>Fire</answer>"},
        {"video": "msad_normal_1.mp4", "task": "cls", "response": "<answer>Normal</answer>"},
        {"video": "ucf_Fighting_1.mp4", "task": "cls", "response": "<answer>Assault</answer>"},
        {"video": "ucf_normal_2.mp4", "task": "cls", "response": "<answer>Robbery</answer>"},
        {"video": "ecva_Robbery_1.mp4", "task": "cls", "response": "<answer>I cannot tell</answer>"},
        {"video": "ecva_normal_3.mp4", "task": "cls", "response": "<answer>normal</answer>"},
    ]


def _score(capsys, bench, tmp_path, records, *extra):
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in records))
    code = main([f"annotations={bench}", f"predictions={preds}", *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


# -------------------------------------------------------------------------------------------- shift mapping ----
@pytest.mark.parametrize("n", [2, 3, 4])
def test_reply_letter_under_shift_names_the_option_shown_with_it(n):
    options = tuple(f"option {i}" for i in range(n))
    for shift in range(n):
        shown = shown_options(options, shift)
        assert sorted(shown) == sorted(options)  # a rotation: every option shown once
        for letter in range(n):
            assert shown[letter] == options[original_option(letter, shift, n)]
    assert original_option(3, 1, 4) == 0 and original_option(0, 3, 4) == 3
    assert original_letter("D", 1, 4) == "A" and original_letter("E", 0, 4) is None and original_letter(None, 1, 4) is None


# ------------------------------------------------------------------------------------------- hand numbers ----
def test_every_number_of_the_report_matches_a_hand_computation(bench, tmp_path, capsys):
    out = _score(capsys, bench, tmp_path, _predictions(), f"output={tmp_path / 'm.json'}")
    report = json.loads((tmp_path / "m.json").read_text())
    qa, tag, cls = (report["tasks"][t] for t in ("qa", "tag", "cls"))

    # QA raw: msad 2/2, ucf 1/2 (Fighting answered A), ecva 1/2 (normal_3 unanswered).
    assert qa["overall"]["accuracy"] == pytest.approx(4 / 6) and qa["overall"]["n"] == 6
    assert {s: (g["accuracy"], g["n"]) for s, g in qa["by_source"].items()} == {
        "msad": (1.0, 2), "ucf": (0.5, 2), "ecva": (0.5, 2)}
    assert qa["metrics"]["qa_accuracy"] == {"value": 66.67, "n": 6}  # the percent layout output= always wrote

    position = report["qa_position"]
    assert position["raw"] == pytest.approx(4 / 6) and position["n"] == 6 and position["shifts"] == [0, 1, 2, 3]
    assert position["circular"] == pytest.approx(2 / 6)  # msad_Fire_1 and ecva_Robbery_1; normal_1 is right 3 of 4
    assert position["constant"] == pytest.approx({"A": 3 / 6, "B": 1 / 6, "C": 1 / 6, "D": 1 / 6})
    by_source = position["by_source"]
    assert {s: by_source[s]["circular"] for s in by_source} == pytest.approx({"msad": 0.5, "ucf": 0.0, "ecva": 0.5})
    assert by_source["msad"]["constant"] == pytest.approx({"A": 1.0, "B": 0.0, "C": 0.0, "D": 0.0})
    assert by_source["ucf"]["constant"] == pytest.approx({"A": 0.0, "B": 0.5, "C": 0.5, "D": 0.0})

    # TAG: IoUs 1, 0.5, 1/6; normal clips: right, false alarm, missing (false alarm).
    overall = tag["overall"]
    assert overall["miou"] == pytest.approx((1 + 0.5 + 1 / 6) / 3)
    assert (overall["r30"], overall["r50"], overall["r70"]) == pytest.approx((2 / 3, 2 / 3, 1 / 3))
    assert overall["false_alarm"] == pytest.approx(2 / 3)
    assert overall["counts"]["miou"] == 3 and overall["counts"]["false_alarm"] == 3 and overall["n"] == 6
    assert {s: (g["miou"], g["false_alarm"]) for s, g in tag["by_source"].items()} == {
        "msad": (1.0, 0.0), "ucf": (0.5, 1.0), "ecva": (pytest.approx(1 / 6), 1.0)}
    assert tag["missing"] == ["ecva_normal_3.mp4"]
    assert report["iou_histogram"] == {"task": "tag", "edges": [i / 10 for i in range(11)], "n": 3,
                                       "counts": [0, 1, 0, 0, 0, 1, 0, 0, 0, 1]}  # 1/6 | 0.5 | 1.0 (last bin)

    # CLS: right Fire, Normal, normal; Fighting -> Assault, Normal -> Robbery, Robbery -> nothing.
    overall = cls["overall"]
    assert (overall["accuracy"], overall["binary_accuracy"]) == pytest.approx((3 / 6, 4 / 6))
    assert overall["false_alarm"] == pytest.approx(1 / 3) and overall["counts"]["false_alarm"] == 3
    assert cls["by_source"]["ucf"]["accuracy"] == 0.0 and cls["by_source"]["msad"]["binary_accuracy"] == 1.0
    confusion = report["confusion"]
    assert confusion["task"] == "cls"
    assert confusion["classes"] == ["Assault", "Fighting", "Fire", "Normal", "Robbery"]
    assert confusion["columns"] == [*confusion["classes"], "unparsed"]
    cell = {(t, p): v for t, row in zip(confusion["classes"], confusion["matrix"])
            for p, v in zip(confusion["columns"], row) if v}
    assert cell == {("Fighting", "Assault"): 1, ("Fire", "Fire"): 1, ("Normal", "Normal"): 2,
                    ("Normal", "Robbery"): 1, ("Robbery", "unparsed"): 1}

    # The clip list: one per (row, task), extras copied from the record.
    clips = {(c["task"], c["video"]): c for c in report["clips"]}
    assert len(report["clips"]) == 6 * 3
    fire = clips[("tag", "msad_Fire_1.mp4")]
    assert fire["frame_times"] == [0.0, 2.5, 5.0] and fire["video_path"] == "/videos/msad_Fire_1.mp4"
    assert fire["duration"] == 7.5 and fire["source"] == "msad" and fire["anomaly_class"] == "Fire"
    fight = clips[("tag", "ucf_Fighting_1.mp4")]
    assert fight["pred_interval"] == [15.0, 20.0] and fight["true_interval"] == [10.0, 20.0]
    assert fight["score"] == 0.5 and fight["correct"] is True
    assert clips[("qa", "ecva_normal_3.mp4")]["missing"] and not clips[("qa", "ecva_normal_3.mp4")]["correct"]
    assert clips[("qa", "ucf_Fighting_1.mp4")]["prediction"] == f"A. {OPTIONS[0]}"
    assert clips[("cls", "ecva_Robbery_1.mp4")]["prediction"] is None

    # The printed tables: rows are sources, values in percent.
    assert "| MSAD | 100.00 |" in out and "| Overall | 66.67 |" in out and "UCF-Crime" in out and "ECVA" in out
    assert "| Overall | 66.67 | 33.33 | 50.00 | 16.67 | 16.67 | 16.67 | 6 |" in out  # raw, circular, always A-D


def test_tag_false_alarm_is_left_out_when_no_normal_clip_was_asked(bench, tmp_path, capsys):
    records = [r for r in _predictions() if r["task"] == "tag" and "normal" not in r["video"]]
    out = _score(capsys, bench, tmp_path, records, f"output={tmp_path / 'm.json'}")
    tag = json.loads((tmp_path / "m.json").read_text())["tasks"]["tag"]
    assert tag["overall"]["false_alarm"] is None and tag["overall"]["counts"]["false_alarm"] == 0
    assert tag["overall"]["n"] == 3 and tag["missing"] == [] and tag["normal_clips_not_asked"] == 3
    assert "false-alarm rate is not measured" in out


def test_without_shifted_records_circular_is_absent_and_baselines_still_reported(bench, tmp_path, capsys):
    records = [r for r in _predictions() if r["task"] == "qa" and not r.get("shift")]
    out = _score(capsys, bench, tmp_path, records, f"output={tmp_path / 'm.json'}")
    position = json.loads((tmp_path / "m.json").read_text())["qa_position"]
    assert position["circular"] is None and position["shifts"] == [0]
    assert position["raw"] == pytest.approx(4 / 6) and position["constant"]["A"] == pytest.approx(0.5)
    assert "Always A" in out and "Circular: -" in out


@pytest.mark.parametrize("extra, fragment", [({"shift": 4}, "shifts 0..3"), ({"shift": -1}, "non-negative integer"),
                                             ({"shift": "1"}, "non-negative integer"),
                                             ({"shift": 1, "options": "A fire"}, "list of option texts")])
def test_bad_shift_or_options_is_an_error_naming_the_record(bench, tmp_path, capsys, extra, fragment):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({**_qa("msad_Fire_1.mp4", "A"), **extra}) + "\n")
    assert main([f"annotations={bench}", f"predictions={preds}"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and ("msad_Fire_1.mp4" in err or "line 1" in err)


# -------------------------------------------------------------------------------------------- report=DIR ----
def test_report_dir_writes_json_markdown_and_deterministic_plots(bench, tmp_path, capsys):
    from matplotlib.image import imread

    out = _score(capsys, bench, tmp_path, _predictions(), f"report={tmp_path / 'a'}")
    _score(capsys, bench, tmp_path, _predictions(), f"report={tmp_path / 'b'}")
    folder = tmp_path / "a"
    score = json.loads((folder / "score.json").read_text())
    assert score["plots"] == {"confusion": "confusion_cls.png", "iou_histogram": "iou_hist_tag.png"}
    assert score["annotations"] == str(bench) and score["predictions"] == [str(tmp_path / "p.jsonl")]
    assert {"qa", "tag", "cls"} <= set(score["tasks"]) and len(score["clips"]) == 18
    markdown = (folder / "score.md").read_text()
    assert "### QA answer position (percent)" in markdown and markdown.strip() in out
    for name in score["plots"].values():
        image = imread(folder / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0  # something is drawn
        assert (folder / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    page = (folder / "report.html").read_text()  # the HTML page of the same report (vau.eval.html_report)
    assert "msad_Fire_1.mp4" in page and "report.html" in out


def test_output_and_report_write_the_same_json(bench, tmp_path, capsys):
    _score(capsys, bench, tmp_path, _predictions(), f"report={tmp_path / 'r'}", f"output={tmp_path / 'm.json'}")
    written = json.loads((tmp_path / "r" / "score.json").read_text())
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert written == metrics


def test_two_pass_replies_get_the_reflection_metrics(bench, tmp_path, capsys):
    """A predictions file of two-pass self-correction (generation.self_correct) of a plain task: score reports the
    initial accuracy and the corrections beside the final accuracy."""
    from vau.tasks.base import join_passes

    def two(video, first, second):
        reply = join_passes(f"<think>t</think><answer>{first}</answer>", f"<think>u</think><answer>{second}</answer>")
        return {"video": video, "task": "qa", "response": reply}

    records = [two("msad_Fire_1.mp4", "B", "A"),      # wrong -> right
               two("msad_normal_1.mp4", "A", "A"),    # right -> right
               two("ucf_Fighting_1.mp4", "B", "C"),   # right -> wrong
               two("ucf_normal_2.mp4", "A", "D")]     # wrong -> wrong; the two other rows: no reply (wrong)
    _score(capsys, bench, tmp_path, records, "task=qa", f"output={tmp_path / 'm.json'}")
    overall = json.loads((tmp_path / "m.json").read_text())["tasks"]["qa"]["overall"]
    assert overall["accuracy"] == pytest.approx(2 / 6) and overall["n"] == 6
    names = {v: k for k, v in overall["names"].items()}
    assert overall[names["qa_initial_accuracy"]] == pytest.approx(2 / 6)
    assert overall[names["qa_delta_i2c"]] == pytest.approx(1 / 6)
    assert overall[names["qa_delta_c2i"]] == pytest.approx(1 / 6)


# ------------------------------------------------------------------------------------------ real MSAD file ----
@pytest.mark.skipif(not MSAD_TEST.is_file(), reason=f"VAU-Bench MSAD test annotations not found at {MSAD_TEST}")
def test_msad_constant_letter_baselines_are_the_answer_shares(tmp_path, capsys):
    with MSAD_TEST.open(newline="", encoding="utf-8-sig") as handle:
        # The letter opens the cell; 8 rows spell it with the option text ("A. No sign of anomaly").
        answers = [row["Correct Option"].strip()[:1] for row in csv.DictReader(handle)]
    share_a = sum(a == "A" for a in answers) / len(answers)
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"video": "no_such_clip.mp4", "task": "qa", "response": "A"}) + "\n")
    assert main([f"annotations={MSAD_TEST}", f"predictions={preds}", f"output={tmp_path / 'm.json'}"]) == 0
    position = json.loads((tmp_path / "m.json").read_text())["qa_position"]
    assert position["n"] == len(answers) == 240
    assert position["constant"]["A"] == pytest.approx(share_a)
    assert 0.52 <= share_a <= 0.69  # the skew the position analysis exists for
    assert sum(position["constant"].values()) == pytest.approx(1.0)
    print(f"MSAD test constant-letter baselines: {position['constant']}")


# ------------------------------------------------------------------------------------------ test stage ----
def test_fit_logs_the_report_to_tensorboard(overrides, tmp_path, fit_with, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vau.callbacks import ScoreReportLogger
    from vau.config import compose
    from vau.data.annotations import read_annotations
    from vau.eval.score import Prediction, score

    builtin = []

    class Keep(ScoreReportLogger):  # the run's own instance, kept to compare its report with `score`'s
        def __init__(self, writer):
            super().__init__(writer)
            builtin.append(self)

    monkeypatch.setattr("vau.trainer.ScoreReportLogger", Keep)
    run_dir = tmp_path / "run"
    cfg = compose("demo", [*overrides, f"run_dir={run_dir}", "data.task=mixed"])
    fit_with(cfg)
    assert len(builtin) == 1
    logged = builtin[0].report
    events = sorted((run_dir / "tensorboard").glob("events.*"))
    acc = EventAccumulator(str(events[-1]), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"test/confusion_cls", "test/iou_hist_tag"} <= set(tags["images"])
    assert "test/iou_tag" in tags["histograms"] and "test/report/text_summary" in tags["tensors"]
    assert acc.Histograms("test/iou_tag")[-1].histogram_value.num == logged["iou_histogram"]["n"] > 0
    text = acc.Tensors("test/report/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "### CLS (percent)" in text and "| Overall |" in text and "### TAG IoU histogram" in text
    # The same numbers as `score` gives for the predictions file the test stage wrote.
    records = [json.loads(line) for line in (run_dir / "predictions_rank0.jsonl").read_text().splitlines()]
    predictions = [Prediction(r["video"], r["task"], r["response"], "", r) for r in records]
    scored = score(read_annotations(cfg.data.annotations.test), predictions, ["qa", "tag", "cls"])
    assert scored["confusion"] == logged["confusion"] and scored["iou_histogram"] == logged["iou_histogram"]
    assert sum(map(sum, logged["confusion"]["matrix"])) == logged["tasks"]["cls"]["rows"] > 0
    for task in ("qa", "tag", "cls"):
        assert scored["tasks"][task]["overall"] == logged["tasks"][task]["overall"]


@pytest.mark.slow
def test_ddp_test_stage_reports_the_samples_of_both_ranks(cache_dir, demo_root, tmp_path):
    """``python -m vau fit trainer=ddp trainer.devices=2``: each rank tests half the clips; rank 0 gathers both
    halves, so its TensorBoard report counts every clip (the same numbers ``score`` gives for both ranks' files)."""
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.test_distributed import check, free_port, run_group, worker_env

    run_dir = tmp_path / "run"
    args = [f"paths.cache_dir={cache_dir}", f"data.root={demo_root}", "data.generate=null",
            f"paths.output_dir={tmp_path / 'outputs'}", f"run_dir={run_dir}", "trainer=ddp", "trainer.devices=2",
            "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.max_epochs=1", "trainer.max_steps=1",
            "trainer.enable_progress_bar=false", "trainer.limit_val_batches=0", "data.batch_size=2",
            "data.eval_batch_size=2", "module.generation.max_new_tokens=8", "backbone.max_pixels=3136",
            "data.task=mixed"]
    check(run_group([sys.executable, "-m", "vau", "fit", *args], worker_env(free_port()), timeout=240),
          "python -m vau fit trainer=ddp")
    files = sorted(run_dir.glob("predictions_rank*.jsonl"))
    assert len(files) == 2
    test_csv = demo_root / "test.csv"
    assert main([f"annotations={test_csv}", f"predictions={run_dir}/predictions_rank*.jsonl",
                 f"output={tmp_path / 'm.json'}"]) == 0
    scored = json.loads((tmp_path / "m.json").read_text())
    events = sorted((run_dir / "tensorboard").glob("events.*"))
    acc = EventAccumulator(str(events[-1]), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    assert "test/confusion_cls" in acc.Tags()["images"]
    assert acc.Histograms("test/iou_tag")[-1].histogram_value.num == scored["iou_histogram"]["n"] > 0
    text = acc.Tensors("test/report/text_summary")[-1].tensor_proto.string_val[0].decode()
    rows = scored["tasks"]["cls"]["rows"]
    assert scored["tasks"]["cls"]["missing"] == [] and f"| {rows} |" in text.split("### CLS")[1].split("###")[0]


def test_report_of_a_task_without_rows_writes_no_empty_plot(tmp_path, capsys):
    """task=cls on a file whose rows have no known class: the tables say n 0 and no confusion PNG is drawn."""
    path = tmp_path / "bench.csv"
    write_annotations(path, [_row("msad_x_1.mp4", "A", "2", "6", "Unheard-of class")])
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps(_qa("msad_x_1.mp4", "A")) + "\n")
    assert main([f"annotations={path}", f"predictions={preds}", "task=qa,cls", f"report={tmp_path / 'r'}"]) == 0
    score = json.loads((tmp_path / "r" / "score.json").read_text())
    assert score["tasks"]["cls"]["overall"]["n"] == 0 and score["tasks"]["cls"]["overall"]["accuracy"] is None
    assert score["confusion"]["matrix"] == [] and "confusion" not in score["plots"]
    assert not list((tmp_path / "r").glob("confusion_*.png")) and "| Overall | - |" in capsys.readouterr().out
