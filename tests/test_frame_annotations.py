"""Frame-level annotation formats (vau/data/frame_annotations.py): UCF-Crime's and XD-Violence's test annotations,
read by `data stats` like any registered format, and frame numbers turned into seconds with each file's exact rate."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vau.data import AnnotationError, read_rows
from vau.data.frame_annotations import FRAME_EVENTS, event_seconds, frames_to_seconds
from vau.datamodules.video import frame_rate

# The UCF-Crime test split as the dataset describes it: 140 anomalous videos over 13 classes, 150 normal ones.
UCF_CLASSES = ("Abuse", "Arrest", "Arson", "Assault", "Burglary", "Explosion", "Fighting", "RoadAccidents",
               "Robbery", "Shooting", "Shoplifting", "Stealing", "Vandalism")


def ucf_file(tmp_path, anomalous: int = 140, normal: int = 150):
    lines = []
    for i in range(anomalous):
        cls = UCF_CLASSES[i % len(UCF_CLASSES)]
        second = f"{400 + i} {460 + i}" if i % 5 == 0 else "-1 -1"  # some videos hold two events
        lines.append(f"{cls}{i:03d}_x264.mp4  {cls}  {100 + i}  {200 + i}  {second}")
    lines += [f"Normal_Videos_{i:03d}_x264.mp4  Normal  -1  -1  -1  -1" for i in range(normal)]
    path = tmp_path / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ucf_crime_rows_and_data_stats(tmp_path, capsys):
    from vau.cli import main

    path = ucf_file(tmp_path)
    rows = read_rows(path, "ucf_crime")
    assert len(rows) == 290 and sum(r.is_normal for r in rows) == 150
    first = rows[0]
    assert first.source == "ucf" and first.anomaly_class == "Abuse" and first.extra[FRAME_EVENTS] == ((100, 200),
                                                                                                      (400, 460))
    assert rows[1].extra[FRAME_EVENTS] == ((101, 201),) and rows[-1].extra[FRAME_EVENTS] == ()
    assert next(r for r in rows if r.anomaly_class == "Burglary").notes == ("class_outside_the_20_labels",)
    assert main(["data", "stats", f"annotations={path}", "data.format=ucf_crime"]) == 0
    out = capsys.readouterr().out
    assert "290 rows" in out and "videos: 290 (140 anomalous, 150 normal)" in out


def test_xd_violence_rows(tmp_path):
    path = tmp_path / "annotations.txt"
    path.write_text("Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6 0 120 300 410\n"
                    "v=abc__#1_label_B1-0-0 5 80\n"
                    "Normal.Movie__#00-00-00_00-01-00_label_A\n")
    rows = read_rows(path, "xd_violence")
    assert [r.anomaly_class for r in rows] == ["Explosion", "Fighting", "Normal"]
    assert rows[0].extra[FRAME_EVENTS] == ((0, 120), (300, 410)) and rows[2].extra[FRAME_EVENTS] == ()
    assert {r.source for r in rows} == {"xd"}


def test_xd_violence_test_split_counts(tmp_path, capsys):
    """The XD-Violence test split as the dataset describes it: 800 videos, 500 violent (one annotation line each, with
    their label codes) and 300 normal (no line in annotations.txt; named by a test list)."""
    from vau.cli import main

    codes = ("B1-0-0", "B2-0-0", "B4-0-0", "B5-0-0", "B6-0-0", "G-0-0", "B2-G-0", "B1-B4-0")
    violent = [f"Movie{i:03d}__#00-01-{i % 60:02d}_00-02-00_label_{codes[i % len(codes)]} {10 + i} {90 + i}"
               + (f" {200 + i} {260 + i}" if i % 7 == 0 else "") for i in range(500)]
    normal = [f"Movie{i:03d}__#00-00-00_00-01-00_label_A" for i in range(500, 800)]
    only_violent = tmp_path / "annotations.txt"
    only_violent.write_text("\n".join(violent) + "\n")
    with_list = tmp_path / "test_list_annotations.txt"
    with_list.write_text("\n".join(violent + normal) + "\n")
    assert main(["data", "stats", f"annotations={only_violent}", "data.format=xd_violence"]) == 0
    assert "videos: 500 (500 anomalous, 0 normal)" in capsys.readouterr().out
    assert main(["data", "stats", f"annotations={with_list}", "data.format=xd_violence"]) == 0
    assert "videos: 800 (500 anomalous, 300 normal)" in capsys.readouterr().out
    rows = read_rows(with_list, "xd_violence")
    assert sum(len(r.extra[FRAME_EVENTS]) for r in rows) == 500 + len(range(0, 500, 7))


@pytest.mark.parametrize("fmt, text, message", [
    ("ucf_crime", "a.mp4 Abuse 10 20 -1\n", "line 1: expected 6 fields"),
    ("ucf_crime", "a.mp4 Abuse ten 20 -1 -1\n", "line 1: frame number 'ten' is not an integer"),
    ("ucf_crime", "a.mp4 Abuse 30 20 -1 -1\n", r"line 1: event \(30, 20\) is not 0 <= start <= end"),
    ("ucf_crime", "a.mp4 Normal 10 20 -1 -1\n", "line 1: class Normal with 1 event"),
    ("ucf_crime", "a.mp4 Abuse -1 -1 -1 -1\n", "line 1: class Abuse with 0 event"),
    ("ucf_crime", "a.mp4 Abuse 1 2 -1 -1\na.mp4 Abuse 1 2 -1 -1\n", "line 2: video a.mp4 already on line 1"),
    ("xd_violence", "v_label_B1 5\n", "line 1: frame numbers come in start/end pairs"),
    ("xd_violence", "v_label_Q9 5 8\n", "line 1: no known label code"),
    ("xd_violence", "v_label_A 5 8\n", "line 1: label A with 1 event"),
    ("xd_violence", "v_label_B1 5 8\nv_label_B1 9 12\n", "line 2: video v_label_B1 already on line 1"),
])
def test_a_malformed_line_is_named(tmp_path, fmt, text, message):
    path = tmp_path / "ann.txt"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=f"{path.name}, {message}"):
        read_rows(path, fmt)


def _video(path, rate: Fraction, frames: int = 12):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("rate", [Fraction(25), Fraction(30000, 1001), Fraction(30)])
def test_frames_become_seconds_with_the_files_exact_rate(tmp_path, rate):
    """The rate is read from the file as a fraction: at 29.97 fps frame 30000 starts at 1001 s exactly, where a
    rounded 29.97 would put it at 1001.0010... s."""
    path = tmp_path / f"clip_{rate.numerator}.mp4"
    _video(path, rate)
    read = frame_rate(path)
    assert read == rate
    for frame in (0, 1, 299, 30000, 107892):
        assert frames_to_seconds(frame, read) == float(Fraction(frame) * rate.denominator / rate.numerator)
    if rate.denominator == 1001:
        assert frames_to_seconds(30000, read) == 1001.0 and frames_to_seconds(30000, 29.97) != 1001.0
    (row,) = read_rows(_ucf_line(tmp_path, path.name), "ucf_crime")
    assert event_seconds(row, read) == [(float(Fraction(100) / rate), float(Fraction(201) / rate))]


def _ucf_line(tmp_path, video: str):
    path = tmp_path / "one.txt"
    path.write_text(f"{video} Abuse 100 200 -1 -1\n")
    return path


def test_the_demo_test_split_in_ucf_crime_format_round_trips(demo_root):
    """`data generate` also writes the test clips in UCF-Crime's format; read back with each real clip's frame rate,
    every event covers its annotated interval to within one frame."""
    from vau.data.annotations import read_annotations

    csv_rows = {r.video: r for r in read_annotations(demo_root / "test.csv") if r.interval is not None}
    rows = read_rows(demo_root / "test_ucf_crime.txt", "ucf_crime")
    assert {r.video for r in rows} == set(csv_rows) and any(r.extra[FRAME_EVENTS] for r in rows)
    for row in rows:
        truth = csv_rows[row.video]
        assert row.anomaly_class == truth.anomaly_class and row.is_normal == truth.is_normal
        if row.is_normal:
            assert row.extra[FRAME_EVENTS] == ()
            continue
        rate = frame_rate(demo_root / "videos" / row.video)
        ((start, end),) = event_seconds(row, rate)
        frame = float(1 / rate)
        assert truth.interval[0] - frame < start <= truth.interval[0] + 1e-9
        assert truth.interval[1] - 1e-9 <= end < truth.interval[1] + frame


def test_the_ucf_crime_writer_leaves_out_rows_it_cannot_place(tmp_path):
    from vau.data.annotations import Annotation
    from vau.data.frame_annotations import write_ucf_crime

    rows = [Annotation("a.mp4", 2, anomaly_class="Fire", interval=(1.0, 2.0)),
            Annotation("b.mp4", 3, anomaly_class="Fire", interval=(0.0, 0.0)),  # anomalous without an interval
            Annotation("c.mp4", 4, anomaly_class="Fire", interval=None),
            Annotation("d.mp4", 5, anomaly_class="Normal", interval=(0.0, 0.0))]
    path = write_ucf_crime(tmp_path / "t.txt", rows, 8)
    assert path.read_text() == "a.mp4 Fire 8 15 -1 -1\nd.mp4 Normal -1 -1 -1 -1\n"
    assert [r.video for r in read_rows(path, "ucf_crime")] == ["a.mp4", "d.mp4"]


def test_the_demo_test_split_in_xd_violence_format_names_the_same_clips_and_frames(demo_root, capsys):
    """The XD-Violence copy of the demo test split: the class in each extension-less name, the same frame events as
    the UCF-Crime copy, normal clips listed without pairs, and every name resolves to the same video file."""
    from vau.cli import main
    from vau.datamodules.dataset import VideoResolver

    ucf = {Path(r.video).stem: r for r in read_rows(demo_root / "test_ucf_crime.txt", "ucf_crime")}
    rows = read_rows(demo_root / "test_xd_violence.txt", "xd_violence")
    assert len(rows) == len(ucf) and any(r.is_normal for r in rows) and any(not r.is_normal for r in rows)
    resolve = VideoResolver(demo_root / "xd_videos")
    for row in rows:
        stem, _, code = row.video.partition("_label_")
        twin = ucf[stem]
        assert row.extra[FRAME_EVENTS] == twin.extra[FRAME_EVENTS] and row.is_normal == twin.is_normal
        assert code == {"Normal": "A", "Fire": "G", "Fighting": "B1", "Traffic_accident": "B6"}[twin.anomaly_class]
        path = resolve(row.video, row.source)  # "demo_test_0000_label_B1" -> .../demo_test_0000_label_B1.mp4
        assert path.is_file() and path.read_bytes() == (demo_root / "videos" / twin.video).read_bytes()
    assert main(["data", "stats", f"annotations={demo_root / 'test_xd_violence.txt'}", "data.format=xd_violence"]) == 0
    assert f"{len(rows)} rows" in capsys.readouterr().out
