"""``python -m vau score``: the protocol on a hand-made benchmark, both prediction formats, clear errors with exit
code 2, and the paper's denominators on the real MSAD test file when it is present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.shared_data import SHARED
from vau.data.annotations import COLUMNS, read_annotations, write_annotations
from vau.eval.score import main
from vau.tasks import get_task

MSAD_TEST = SHARED / "test_msad.csv"


def _row(video, answer="-1", start="-1", end="-1", cls="Fire"):
    row = dict.fromkeys(COLUMNS, "-1" if answer == "-1" else "")
    row.update({"Video Name": video, "Anomaly Class": cls, "Start Time": start, "End Time": end,
                "Description": "d", "Reasoning": "r", "Key Object": "k"})
    if answer != "-1":
        row.update({"Question": "What happens?", "Option 1": "Nothing", "Option 2": "A fire",
                    "Option 3": "A fight", "Option 4": "A theft", "Correct Option": answer})
    return row


@pytest.fixture
def bench(tmp_path):
    path = tmp_path / "bench.csv"
    write_annotations(path, [
        _row("v1.mp4", "B", "2", "6", "Fire"),
        _row("v2.mp4", "A", "10", "20", "Fighting"),
        _row("v3.mp4", "C", "0", "0", "Normal"),
        _row("v4.mp4", "-1", "-1", "-1", "Fighting"),  # no question, unknown interval
    ])
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_jsonl_scores_follow_the_protocol(bench, tmp_path, capsys):
    preds = _jsonl(tmp_path / "p.jsonl", [
        {"video": "v1.mp4", "task": "qa", "response": "<think>x</think><answer>B</answer>"},
        {"video": "v2.mp4", "task": "qa", "response": "<answer>A or B</answer>"},
        {"video": "v1.mp4", "task": "tag", "response": "<answer>[2, 6]</answer>"},
        {"video": "v2.mp4", "task": "tag", "response": "<answer>from 15 to 20 seconds</answer>"},
        {"video": "v3.mp4", "task": "tag", "response": "<answer>[0.0, 0.0]</answer>"},
        {"video": "v4.mp4", "task": "tag", "response": "[1, 2]"},
        {"video": "ghost.mp4", "task": "qa", "response": "B"},
        {"video": "v1.mp4", "task": "qa", "response": "A"},  # a repeat: the first reply counts
    ])
    code, out, err = _run(capsys, f"annotations={bench}", f"predictions={preds}", f"output={tmp_path / 'm.json'}")
    assert code == 0, err
    report = json.loads((tmp_path / "m.json").read_text())
    qa, tag = report["tasks"]["qa"]["metrics"], report["tasks"]["tag"]["metrics"]
    assert qa["qa_accuracy"] == {"value": 33.33, "n": 3}  # v3 has no prediction: counted wrong
    assert qa["format_rate"] == {"value": 33.33, "n": 3}
    assert tag["tag_miou"] == {"value": 75.0, "n": 2}  # IoU 1 and 0.5 on the anomalous clips with an interval
    assert (tag["tag_r50"]["value"], tag["tag_r70"]["value"]) == (100.0, 50.0)
    assert tag["tag_false_alarm"] == {"value": 0.0, "n": 1}
    assert report["tasks"]["qa"]["missing"] == ["v3.mp4"]
    assert report["tasks"]["tag"]["no_ground_truth"] == ["v4.mp4"]
    assert report["unknown_videos"] == ["ghost.mp4"] and report["duplicates"] == 1
    assert "cls" not in report["tasks"]  # no cls predictions and no task=cls
    assert "33.33" in out and "75.00" in out and "ghost.mp4" in out and "counted wrong" in out


def test_task_argument_scores_a_task_without_predictions_as_all_wrong(bench, tmp_path, capsys):
    preds = _jsonl(tmp_path / "p.jsonl", [{"video": "v1.mp4", "task": "qa", "response": "B"}])
    code, _, err = _run(capsys, f"annotations={bench}", f"predictions={preds}", "task=cls",
                        f"output={tmp_path / 'm.json'}")
    assert code == 0, err
    cls = json.loads((tmp_path / "m.json").read_text())["tasks"]["cls"]["metrics"]
    assert cls["cls_accuracy"] == {"value": 0.0, "n": 4} and cls["cls_binary_accuracy"]["n"] == 4


def test_vau_r1_csv_predictions(bench, tmp_path, capsys):
    preds = tmp_path / "output_bench.csv"
    preds.write_text('Video Name,QA answer,CLS answer,Temporal Grounding\n'
                     'v1.mp4,B,<answer> Fire </answer>,"<glue>[2.0, 6.0]</glue>"\n'
                     'v2,A,Fighting,"[10, 20]"\n'  # a name without .mp4 still matches
                     'v3.mp4,D,Absence_of_anomaly,"<glue>[0.0, 0.0]</glue>"\n'
                     'v4.mp4,,Normal,\n')
    code, out, err = _run(capsys, f"annotations={bench}", f"predictions={preds}", f"output={tmp_path / 'm.json'}")
    assert code == 0, err
    tasks = json.loads((tmp_path / "m.json").read_text())["tasks"]
    assert tasks["qa"]["metrics"]["qa_accuracy"] == {"value": 66.67, "n": 3}
    assert tasks["tag"]["metrics"]["tag_miou"] == {"value": 100.0, "n": 2}
    assert tasks["cls"]["metrics"]["cls_accuracy"] == {"value": 75.0, "n": 4}
    assert tasks["cls"]["metrics"]["cls_binary_accuracy"] == {"value": 75.0, "n": 4}
    assert "Bin.Acc." in out and "mIoU" in out


@pytest.mark.parametrize("content, fragments", [
    ('{"video": "v1.mp4", "task": "qa", "response": "B"}\n{"video": "v2.mp4", "task": "qa"', ["line 2", "JSON"]),
    ('{"video": "v1.mp4", "task": "qa"}\n', ["line 1", "'response'"]),
    ('{"video": "v1.mp4", "task": "caption", "response": "B"}\n', ["line 1", "caption", "qa, tag, cls"]),
    ('{"video": "v1.mp4", "task": "qa", "response": 3}\n', ["line 1", "'response'", "string"]),
    ("Name,QA answer\nv1.mp4,B\n", ["Video Name"]),
    ("Video Name,Answer\nv1.mp4,B\n", ["QA answer", "Temporal Grounding"]),
    ("Video Name,QA answer\nv1.mp4,B,extra\n", ["line 2", "quote"]),
    ("", ["no predictions"]),
])
def test_bad_predictions_fail_with_file_row_and_advice(bench, tmp_path, capsys, content, fragments):
    preds = tmp_path / "bad.jsonl"
    preds.write_text(content)
    code, _, err = _run(capsys, f"annotations={bench}", f"predictions={preds}")
    assert code == 2
    assert str(preds) in err
    for fragment in fragments:
        assert fragment in err


@pytest.mark.parametrize("argv, fragment", [
    (["predictions=p.jsonl"], "annotations=FILE"),
    (["annotations=a.csv", "predictions=p.jsonl", "tsk=qa"], "unknown argument 'tsk=qa'"),
    (["annotations=a.csv", "predictions=p.jsonl", "task=vqa"], "'vqa' is not one of"),
    (["annotations=missing.csv", "predictions=p.jsonl"], "missing.csv does not exist"),
])
def test_bad_arguments_exit_2(capsys, argv, fragment):
    code, _, err = _run(capsys, *argv)
    assert code == 2 and fragment in err


def test_missing_predictions_file_exits_2(bench, tmp_path, capsys):
    code, _, err = _run(capsys, f"annotations={bench}", f"predictions={tmp_path / 'nope.jsonl'}")
    assert code == 2 and "nope.jsonl does not exist" in err


def test_cli_stage_calls_score(bench, tmp_path, capsys):
    from vau.cli import main as cli_main

    preds = _jsonl(tmp_path / "p.jsonl", [{"video": "v1.mp4", "task": "qa", "response": "B"}])
    assert cli_main(["score", f"annotations={bench}", f"predictions={preds}"]) == 0
    assert "Acc." in capsys.readouterr().out


@pytest.mark.skipif(not MSAD_TEST.is_file(), reason=f"VAU-Bench MSAD test annotations not found at {MSAD_TEST}")
def test_msad_test_denominators_match_the_paper(tmp_path, capsys):
    """Replies built from the targets: QA over 240 questions, TAG over the 120 anomalous clips; one dropped reply
    per task lowers the score by exactly one row."""
    rows = read_annotations(MSAD_TEST)
    preds = []
    for task in ("qa", "tag", "cls"):
        spec = get_task(task)
        kept = [a for a in rows if spec.has_truth(a)]
        anomalous = next(i for i, a in enumerate(kept) if not a.is_normal)
        preds += [{"video": a.video, "task": task, "response": spec.target(spec.sample(a))}
                  for i, a in enumerate(kept) if i != anomalous]
    path = _jsonl(tmp_path / "p.jsonl", preds)
    code, out, err = _run(capsys, f"annotations={MSAD_TEST}", f"predictions={path}", f"output={tmp_path / 'm.json'}")
    assert code == 0, err
    tasks = json.loads((tmp_path / "m.json").read_text())["tasks"]
    assert tasks["qa"]["metrics"]["qa_accuracy"] == {"value": round(100 * 239 / 240, 2), "n": 240}
    assert tasks["tag"]["metrics"]["tag_r30"] == {"value": round(100 * 119 / 120, 2), "n": 120}
    assert tasks["tag"]["metrics"]["tag_false_alarm"] == {"value": 0.0, "n": 120}
    assert tasks["cls"]["metrics"]["cls_accuracy"] == {"value": round(100 * 239 / 240, 2), "n": 240}
    assert all(len(t["missing"]) == 1 for t in tasks.values())
