"""`python -m vau score frame_scores=FILE`: frame-level AUC / AP / false alarms against frame-numbered annotations,
with the constant and random baselines, as papers print them."""

from __future__ import annotations

import json

import pytest
import torch

from vau.cli import main

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (dev extra) is the reference")

ANNOTATIONS = ("Abuse001_x264.mp4 Abuse 5 9 -1 -1\n"
               "Arson002_x264.mp4 Arson 2 3 12 14\n"
               "Normal_Videos_001_x264.mp4 Normal -1 -1 -1 -1\n"
               "Normal_Videos_002_x264.mp4 Normal -1 -1 -1 -1\n"
               "Abuse009_x264.mp4 Abuse 1 2 -1 -1\n")  # no scores for this one: listed, left out


def _files(tmp_path, scores=None):
    ann = tmp_path / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    ann.write_text(ANNOTATIONS)
    g = torch.Generator().manual_seed(0)
    scores = scores or {v: [round(float(x), 2) for x in torch.rand(n, generator=g)] for v, n in
                        (("Abuse001_x264.mp4", 16), ("Arson002_x264.mp4", 20), ("Normal_Videos_001_x264.mp4", 12),
                         ("Normal_Videos_002_x264.mp4", 10))}
    path = tmp_path / "frames.jsonl"
    path.write_text("".join(json.dumps({"video": v, "frame_scores": s}) + "\n" for v, s in scores.items()))
    return ann, path, scores


def _labels():
    events = {"Abuse001_x264.mp4": [(5, 9)], "Arson002_x264.mp4": [(2, 3), (12, 14)]}
    return events


def test_score_prints_frame_auc_ap_and_baselines(tmp_path, capsys):
    ann, path, scores = _files(tmp_path)
    out = tmp_path / "m.json"
    assert main(["score", f"annotations={ann}", "format=ucf_crime", f"frame_scores={path}", f"output={out}"]) == 0
    text = capsys.readouterr().out
    labels = []
    for video, values in scores.items():
        y = [0] * len(values)
        for start, end in _labels().get(video, []):
            y[start:end + 1] = [1] * (end - start + 1)
        labels += y
    flat = [s for values in scores.values() for s in values]
    auc = sklearn_metrics.roc_auc_score(labels, flat)
    ap = sklearn_metrics.average_precision_score(labels, flat)
    report = json.loads(out.read_text())
    model = report["sources"]["all"]["model"]
    assert model["auc"] == pytest.approx(auc, abs=1e-12) and model["ap"] == pytest.approx(ap, abs=1e-12)
    assert report["sources"]["all"]["constant"]["auc"] == 0.5
    assert f"| All | model | {100 * auc:.2f} |" in text and "| All | constant | 50.00 |" in text
    assert "| UCF-Crime | random (seed 0) |" in text
    assert "No scores for 1 annotated video(s), left out: Abuse009_x264.mp4" in text


@pytest.mark.parametrize("case, message", [
    ("short", "video Arson002_x264.mp4: event (12, 14) ends past its 10 scored frames"),
    ("vau_bench", "carry no frame events"),
    ("bad_line", "frames.jsonl, line 1: key 'frame_scores' must be a non-empty list of finite numbers"),
])
def test_frame_scoring_errors_name_what_to_fix(tmp_path, capsys, demo_root, case, message):
    ann, path, _ = _files(tmp_path)
    args = [f"annotations={ann}", "format=ucf_crime", f"frame_scores={path}"]
    if case == "short":
        _files(tmp_path, {"Arson002_x264.mp4": [0.1] * 10})
    elif case == "vau_bench":
        args = [f"annotations={demo_root / 'test.csv'}", f"frame_scores={path}"]
    else:
        path.write_text('{"video": "a.mp4", "frame_scores": [0.1, "high"]}\n')
    assert main(["score", *args]) == 2
    assert message in capsys.readouterr().err


def test_tag_predictions_become_frame_scores_exactly(tmp_path, capsys, demo_root):
    """A temporal-grounding predictions file scores at frame level: the annotated interval answered exactly gives
    frame scores equal to the frame labels (AUC 1), an empty answer scores 0 everywhere."""
    from vau.data.frame_annotations import event_seconds
    from vau.data.readers import read_rows
    from vau.datamodules.video import frame_rate
    from vau.eval.frame_score import frame_labels, read_frame_scores

    ann_file = demo_root / "test_ucf_crime.txt"
    rows = read_rows(ann_file, "ucf_crime")
    assert any(r.is_normal for r in rows) and any(not r.is_normal for r in rows)
    records = []
    for row in rows:
        path = demo_root / "videos" / row.video
        events = event_seconds(row, frame_rate(path))
        records.append({"video": row.video, "task": "tag", "response": "", "video_path": str(path),
                        "prediction": list(events[0]) if events else [0.0, 0.0]})
    preds = tmp_path / "tag.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in records))
    scores = read_frame_scores(preds)
    for row in rows:
        assert scores[row.video] == frame_labels(row, len(scores[row.video])).float().tolist(), row.video
    out = tmp_path / "m.json"
    assert main(["score", f"annotations={ann_file}", "format=ucf_crime", f"frame_scores={preds}",
                 f"output={out}"]) == 0
    assert json.loads(out.read_text())["sources"]["all"]["model"]["auc"] == 1.0

    records[0]["prediction"] = None  # an unparsed reply: no interval, no anomalous frame
    records[0]["video_path"] = str(tmp_path / "gone.mp4")
    preds.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["score", f"annotations={ann_file}", "format=ucf_crime", f"frame_scores={preds}"]) == 2
    assert f"tag.jsonl, line 1: video {tmp_path / 'gone.mp4'} does not exist" in capsys.readouterr().err


def test_interval_frame_scores_at_ntsc_rate():
    """29.97 fps: a frame belongs to an interval when its middle does, compared exactly."""
    from fractions import Fraction

    from vau.eval.frame_score import interval_frame_scores

    rate = Fraction(30000, 1001)
    # frame 30 lasts 1.001 .. 1.03437 s (middle 1.01768); [1.001, 1.0176] stops just before that middle
    assert interval_frame_scores([1.001, 1.0176], 40, rate)[29:32] == [0.0, 0.0, 0.0]
    assert interval_frame_scores([1.001, 1.0177], 40, rate)[29:32] == [0.0, 1.0, 0.0]
    assert interval_frame_scores([0.0, 0.0], 5, rate) == [0.0] * 5
    assert interval_frame_scores([2.0, 99.0], 64, rate)[-5:] == [0.0, 1.0, 1.0, 1.0, 1.0]  # frame 59 ends before 2 s


def test_score_report_draws_each_videos_curve_over_its_events(tmp_path, capsys):
    """report=DIR: one escaped, script-free page with every scored video's curve and its events shaded, worst
    first (here the normal video with the highest false alarm)."""
    import re

    ann, path, scores = _files(tmp_path)
    for video, events in _labels().items():  # anomalous videos scored perfectly: nothing to look at there
        scores[video] = [float(any(a <= i <= b for a, b in events)) for i in range(len(scores[video]))]
    scores["Normal_Videos_001_x264.mp4"] = [0.2] * 12
    scores["Normal_Videos_002_x264.mp4"] = [0.1] * 9 + [0.99]  # a one-frame false alarm: the worst read
    _files(tmp_path, scores)
    folder = tmp_path / "report"
    assert main(["score", f"annotations={ann}", "format=ucf_crime", f"frame_scores={path}", f"report={folder}"]) == 0
    assert "score curves written to" in capsys.readouterr().out
    page = (folder / "frame_report.html").read_text()
    assert "<script" not in page and page.count("<svg") == 4 and page.count('class="event"') == 3  # 1 + 2 events
    names = re.findall(r"<h3>(\S+) <small>", page)
    assert names[0] == "Normal_Videos_002_x264.mp4" and sorted(names) == sorted(scores)
    curve = re.findall(r'<polyline points="([^"]*)"', page)[names.index("Normal_Videos_002_x264.mp4")]
    assert min(float(p.split(",")[1]) for p in curve.split()) == pytest.approx(90 * 0.01)  # the spike is drawn
    # the page is replaced on a rerun (score wrote it), a foreign file is not
    assert main(["score", f"annotations={ann}", "format=ucf_crime", f"frame_scores={path}", f"report={folder}"]) == 0
    (folder / "frame_report.html").write_text("my notes")
    assert main(["score", f"annotations={ann}", "format=ucf_crime", f"frame_scores={path}", f"report={folder}"]) == 2
    assert "frame_report.html" in capsys.readouterr().err


def test_curve_points_keep_a_one_frame_spike_in_a_long_video():
    from vau.eval.frame_curves import MAX_POINTS, curve_points

    scores = [0.0] * 20000
    scores[12345] = 1.0
    points = curve_points(scores, width=100, height=10).split()
    assert len(points) <= 2 * MAX_POINTS and min(float(p.split(",")[1]) for p in points) == 0.0
