"""UCA and HIVAU-70k readers (``data.format: uca`` / ``hivau``): files written here from the published formats."""

from __future__ import annotations

import json

import pytest

from vau.cli import main
from vau.data import AnnotationError, read_rows
from vau.data.caption_annotations import LEVEL, SPAN, ucf_class


def uca_file(path, entries=None):
    entries = entries or {
        "Abuse043_x264": {"duration": 60.5, "timestamps": [[6.9, 15.0], [0.3, 7.1]],
                          "sentences": [" A man pushes a woman.", "A woman walks in."]},
        "Normal_Videos_924_x264": {"duration": 20.0, "timestamps": [[0.0, 19.9]], "sentences": ["A quiet street."]},
        "RoadAccidents007_x264": {"duration": 30.0, "timestamps": [[2.0, 4.0]], "sentences": ["Two cars collide."]},
    }
    path.write_text(json.dumps(entries))
    return path


def hivau_entry(**change):
    entry = {"n_frames": 900, "fps": 30.0, "label": ["Robbery"], "events": [[2.0, 20.5], [21.0, 29.9]],
             "clips": [[[2.0, 8.1], [8.1, 20.5]], [[21.0, 29.9]]],
             "clips_caption": [["A man enters.", "He points a gun."], ["He leaves."]],
             "events_summary": ["A robbery.", "The robber leaves."], "video_summary": "A shop is robbed.",
             "events_summary_split": [{"judgement": "Anomaly.", "description": "d", "analysis": "a"},
                                      {"judgement": "No anomaly exists.", "description": "d"}],
             "video_summary_split": {"judgement": "Anomaly.", "description": "d", "analysis": "why"}}
    entry.update(change)
    return entry


def test_uca_rows_one_per_sentence_with_its_span(tmp_path, capsys):
    path = uca_file(tmp_path / "UCFCrime_Test.json")
    rows = read_rows(path, "uca")
    assert [r.extra[SPAN] for r in rows] == [(6.9, 15.0), (0.3, 7.1), (0.0, 19.9), (2.0, 4.0)]
    assert rows[0].description == "A man pushes a woman." and rows[0].video == "Abuse043_x264.mp4"
    assert [r.anomaly_class for r in rows] == ["Abuse", "Abuse", "Normal", "RoadAccidents"]
    assert rows[3].notes == ("class_outside_the_20_labels",)  # kept as written, counted by `data stats`
    assert all(r.interval is None and r.extra[LEVEL] == "sentence" and r.source == "ucf" for r in rows)
    assert main(["data", "stats", f"annotations={path}", "data.format=uca"]) == 0
    assert "4 rows" in capsys.readouterr().out


@pytest.mark.parametrize("entry, message", [
    ({"duration": 10.0, "timestamps": [[1, 2]], "sentences": []}, "1 timestamps for 0 sentences"),
    ({"duration": 10.0, "timestamps": [[3, 2]], "sentences": ["x"]}, r"sentence 1: span \[3.0, 2.0\] is not"),
    ({"duration": 10.0, "timestamps": [[3, 12]], "sentences": ["x"]}, "ends past the video's end"),
    ({"duration": "long", "timestamps": [], "sentences": []}, "duration 'long' is not seconds"),
    ({"timestamps": [], "sentences": []}, "expected duration, timestamps and sentences"),
])
def test_uca_errors_name_the_video_and_sentence(tmp_path, entry, message):
    with pytest.raises(AnnotationError, match=f"video Foo001_x264.*{message}|{message}"):
        read_rows(uca_file(tmp_path / "u.json", {"Foo001_x264": entry}), "uca")


def test_hivau_rows_per_clip_event_and_video(tmp_path, capsys):
    path = tmp_path / "ucf_database_test.json"
    path.write_text(json.dumps({"Robbery001_x264": hivau_entry(),
                                "Normal_Videos_003_x264": hivau_entry(label=[], events=[[0.0, 10.0]],
                                                                      clips=[[[0.0, 10.0]]],
                                                                      clips_caption=[["Cars pass."]],
                                                                      events_summary=["Traffic."],
                                                                      events_summary_split=[{"judgement": "none"}])}))
    rows = read_rows(path, "hivau")
    levels = [r.extra[LEVEL] for r in rows]
    assert levels == ["clip", "clip", "event", "clip", "event", "video", "clip", "event", "video"]
    assert rows[0].extra[SPAN] == (2.0, 8.1) and rows[2].extra[SPAN] == (2.0, 20.5)
    assert rows[5].extra[SPAN] == (0.0, 30.0) and rows[5].extra["analysis"] == "why"
    assert rows[4].extra["judgement"] == "No anomaly exists."
    assert {r.anomaly_class for r in rows[:6]} == {"Robbery"} and {r.anomaly_class for r in rows[6:]} == {"Normal"}
    assert all(r.interval is None and r.source == "ucf" for r in rows)
    assert main(["data", "stats", f"annotations={path}", "data.format=hivau"]) == 0
    assert "9 rows" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    ({"events": [[2.0, 40.0], [21.0, 29.9]]}, "event 1: span .* ends past the video's end .30 s."),
    ({"clips_caption": [["one"]]}, "1 clips_caption for 2 events"),
    ({"clips_caption": [["one"], ["two"]]}, "event 1: 2 clips for 1 captions"),
    ({"fps": 0}, "needs n_frames and fps"),
])
def test_hivau_errors_name_the_video_and_item(tmp_path, change, message):
    path = tmp_path / "ucf_database_test.json"
    path.write_text(json.dumps({"Robbery001_x264": hivau_entry(**change)}))
    with pytest.raises(AnnotationError, match=f"video Robbery001_x264.*{message}"):
        read_rows(path, "hivau")


def test_ucf_class_from_the_name():
    assert [ucf_class(n) for n in ("Abuse043_x264", "Normal_Videos_924_x264", "Shoplifting010_x264")] == [
        "Abuse", "Normal", "Shoplifting"]
