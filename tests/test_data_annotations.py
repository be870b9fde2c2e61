"""VAU-Bench annotation reading, normalisation, reasoning parsing, task views and `python -m vau data stats`."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.shared_data import SHARED  # noqa: E402
from vau.cli import main
from vau.data.annotations import (
    ANOMALY_CLASSES,
    COLUMNS,
    AnnotationError,
    normalise_answer,
    normalise_class,
    read_annotations,
    summarize,
    write_annotations,
)
from vau.data.reasoning import LiteralError, clean_reasoning, parse_literal
from vau.datamodules.views import ViewOptions, build_samples, drop_counts, select, view_counts
from vau.tasks import BUILTIN_TASKS, TASKS, get_task, tokenizer_corpus

VAL, TEST_MSAD = SHARED / "val.csv", SHARED / "test_msad.csv"
needs_real = pytest.mark.skipif(not (VAL.is_file() and TEST_MSAD.is_file()),
                                reason=f"real VAU-Bench annotations not found in {SHARED}")
OPTIONS = ("A man runs", "No sign of anomaly", "A car crashes into a pole", "People dance")


def row(video: str, **kw) -> dict[str, str]:
    base = {"Video Name": video, "Question": "What happens?", "Option 1": OPTIONS[0], "Option 2": OPTIONS[1],
            "Option 3": OPTIONS[2], "Option 4": OPTIONS[3], "Correct Option": "C", "Key Object": "car",
            "Description": "A car drives and hits a pole.", "Reasoning": "### Conclusion: a crash.",
            "Anomaly Class": "Traffic_accident", "Start Time": "2.0", "End Time": "5.5"}
    base.update(kw)
    return base


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    write_annotations(path, rows)
    return path


@pytest.fixture()
def mixed_file(tmp_path: Path) -> Path:
    return write(tmp_path / "val.csv", [
        row("msad_Crash_1.mp4"),
        row("ucf_Normal_2.mp4", **{"Anomaly Class": "Normal", "Start Time": "0.0", "End Time": "0.0",
                                   "Correct Option": "B"}),
        row("ecva_3.mp4", **{"Start Time": "-1.0", "End Time": "-1", "Anomaly Class": "traffic accident"}),
        row("ucf_4.mp4", Question="-1", **{"Correct Option": "-1", "Anomaly Class": "OBJECT FALLING"}),
        row("msad_5.mp4", **{"Correct Option": "C. A car crashes into a pole", "Anomaly Class": "Natural_hazard"}),
        row("msad_6.mp4", **{"Correct Option": "a car crashes into a pole.", "Anomaly Class": "Alien Invasion"}),
        row("ecva_7.mp4", Reasoning="### Key Evidence: ['smoke', \"a man's bag\"] ### Cause and Effect: "
                                    "{'Cause': ['a spark'], 'Effect': 'fire'}", Description="-1"),
    ])


def test_rows_are_normalised_and_counted(mixed_file: Path) -> None:
    rows = read_annotations(mixed_file)
    assert [r.row for r in rows] == list(range(2, 9))
    assert [r.source for r in rows] == ["msad", "ucf", "ecva", "ucf", "msad", "msad", "ecva"]
    crash, normal, unknown, no_q, letter_text, text_only, literal = rows
    assert crash.answer == "C" and crash.interval == (2.0, 5.5) and crash.has_anomaly_interval
    assert normal.is_normal and normal.interval == (0.0, 0.0) and not normal.has_anomaly_interval
    assert unknown.interval is None and unknown.anomaly_class == "Traffic_accident"
    assert no_q.question is None and no_q.options == () and not no_q.has_question
    assert no_q.anomaly_class == "Object_falling"
    assert letter_text.answer == "C" and "answer_from_text" in letter_text.notes
    assert letter_text.anomaly_class == "Natural Hazard"
    assert text_only.answer == "C" and text_only.anomaly_class == "Alien Invasion" and not text_only.known_class
    assert literal.reasoning == "Key Evidence: smoke; a man's bag\nCause and Effect: Cause: a spark; Effect: fire"
    assert literal.description == ""
    notes = summarize(rows)
    assert notes["answer_from_text"] == 2 and notes["class_respelled"] == 3 and notes["unknown_class"] == 1
    assert notes["interval_unknown"] == 1 and notes["no_question"] == 1 and notes["reasoning_python_literals"] == 1


def test_task_views_keep_documented_rows(mixed_file: Path) -> None:
    rows = read_annotations(mixed_file)
    keep = lambda task, train, **kw: [a.video for a in select(rows, task, train, ViewOptions(**kw))]  # noqa: E731
    assert keep("qa", False) == [a.video for a in rows if a.video != "ucf_4.mp4"]
    # Evaluation TAG: anomalous clips with a known interval only; training adds the normal clip.
    assert keep("tag", False) == ["msad_Crash_1.mp4", "ucf_4.mp4", "msad_5.mp4", "msad_6.mp4", "ecva_7.mp4"]
    assert keep("tag", True) == ["msad_Crash_1.mp4", "ucf_Normal_2.mp4", "ucf_4.mp4", "msad_5.mp4", "msad_6.mp4",
                                 "ecva_7.mp4"]
    assert "ucf_Normal_2.mp4" not in keep("tag", True, tag_train_normal=False)
    assert "ucf_Normal_2.mp4" in keep("tag", False, tag_eval_normal=True)
    assert "msad_6.mp4" not in keep("cls", False) and "msad_6.mp4" not in keep("cls_binary", False)
    assert keep("describe", False) == [a.video for a in rows if a.video != "ecva_7.mp4"]
    assert drop_counts(rows, "tag", False) == Counter({"normal clip (evaluation: IoU undefined)": 1,
                                                       "interval unknown (-1)": 1})
    counts = view_counts(rows, False)
    assert {k: counts[k] for k in BUILTIN_TASKS} == {"qa": 6, "tag": 5, "cls": 6, "cls_binary": 6, "describe": 6}
    assert all(n == counts[k.removesuffix("_reflect")] for k, n in counts.items() if k.endswith("_reflect"))
    assert counts["tag_glue"] == counts["tag"]  # tag_glue (VAU-R1's TAG reply format) keeps the tag rows
    for train in (False, True):  # the views' defaults are the task specs' own rules
        for task, spec in [(n, get_task(n)) for n in TASKS.names()]:
            assert [a.video for a in rows if spec.keeps(a, train)] == keep(task, train)
    # `keep` is every row with a ground truth (what `vau score` scores): TAG includes the normal clip.
    assert [a.video for a in rows if get_task("tag").has_truth(a)] == keep("tag", False, tag_eval_normal=True)


def test_view_targets(mixed_file: Path) -> None:
    rows = read_annotations(mixed_file)
    tag = {s.video: s for s in build_samples(rows, "tag", True)}
    assert get_task("tag").target(tag["ucf_Normal_2.mp4"]).endswith("<answer>[0.0, 0.0]</answer>")
    assert get_task("tag").target(tag["msad_Crash_1.mp4"]).endswith("<answer>[2.0, 5.5]</answer>")
    binary = {s.video: get_task("cls_binary").target(s) for s in build_samples(rows, "cls_binary", False)}
    assert binary["ucf_Normal_2.mp4"].endswith("<answer>Normal</answer>")
    assert binary["msad_Crash_1.mp4"].endswith("<answer>Anomaly</answer>")
    describe = build_samples(rows, "describe", True)[0]
    assert get_task("describe").target(describe) == "A car drives and hits a pole.\nConclusion: a crash."
    mixed = build_samples(rows, "mixed", True, mix={"weights": {"qa": 1, "tag": 2, "cls": 0}})
    assert Counter(s.task for s in mixed) == {"qa": 6, "tag": 6}
    with pytest.raises(ValueError, match="data.mix.weights.bogus"):
        build_samples(rows, "mixed", True, mix={"weights": {"bogus": 1}})


@pytest.mark.parametrize("edit, message", [
    ({"Start Time": "soon"}, "row 2, column 'Start Time'"),
    ({"End Time": "-1"}, "row 2, column 'End Time': -1 .unknown. while the other bound is known"),
    ({"Start Time": "9", "End Time": "3"}, "row 2, column 'End Time': 3 is before Start Time 9"),
    ({"Correct Option": "E"}, "row 2, column 'Correct Option'"),
    ({"Correct Option": "A. A car crashes into a pole"}, "row 2, column 'Correct Option'"),  # letter != text
    ({"Option 3": "-1"}, "row 2, column 'Option 3'"),
    ({"Video Name": ""}, "row 2, column 'Video Name': empty"),
])
def test_unreadable_rows_name_file_row_column(tmp_path: Path, edit: dict, message: str) -> None:
    path = write(tmp_path / "bad.csv", [row("msad_1.mp4", **edit)])
    with pytest.raises(AnnotationError, match=message) as info:
        read_annotations(path)
    assert str(path) in str(info.value)


def test_missing_column_and_broken_line(tmp_path: Path) -> None:
    path = tmp_path / "no_class.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[c for c in COLUMNS if c != "Anomaly Class"])
        writer.writeheader()
    with pytest.raises(AnnotationError, match=r"missing column\(s\) \['Anomaly Class'\]"):
        read_annotations(path)
    broken = tmp_path / "broken.csv"
    broken.write_text(",".join(COLUMNS) + "\n" + "a.mp4,q,1,2\n")
    with pytest.raises(AnnotationError, match="row 2: 4 fields but the header has 13"):
        read_annotations(broken)
    with pytest.raises(AnnotationError, match="does not exist; check the config key data.annotations"):
        read_annotations(tmp_path / "nope.csv")


def test_headers_case_insensitive_and_extra_columns(tmp_path: Path) -> None:
    # VAU-R1's own loader expected "start time"/"Duration": header spelling must not matter, extras are ignored.
    path = tmp_path / "test_ucf_crime.csv"
    fields = [c.lower() for c in COLUMNS] + ["Duration"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        writer.writerow([row("Abuse001_x264.mp4")[c] for c in COLUMNS] + ["30.0"])
    (ann,) = read_annotations(path)
    assert ann.source == "ucf" and ann.interval == (2.0, 5.5)


def test_class_and_answer_normalisation() -> None:
    assert len(ANOMALY_CLASSES) == 20 and "Normal" in ANOMALY_CLASSES
    assert normalise_class("  traffic-accident ") == "Traffic_accident"
    assert normalise_class("MEDICAL_ABNORMALITY") == "Medical Abnormality"
    assert normalise_class("Road Accidents") is None
    assert normalise_answer("(b)", OPTIONS) == ("B", False)
    assert normalise_answer("No sign of anomaly", OPTIONS) == ("B", True)
    assert normalise_answer("D. People dance.", OPTIONS) == ("D", True)
    assert normalise_answer("Something else", OPTIONS) == (None, False)
    assert all(c in " ".join(tokenizer_corpus()) for c in ANOMALY_CLASSES)


def test_reasoning_is_parsed_without_evaluation(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = f"{{'a': __import__('os').system('touch {marker}')}}"
    with pytest.raises(LiteralError):
        parse_literal(hostile)
    assert "__import__" in clean_reasoning(hostile) and not marker.exists()
    assert parse_literal("{'k\\'s': [1, -2.5, 'x\\n', (True, None)], \"u\": '\\u00e9'}") == {
        "k's": [1, -2.5, "x\n", (True, None)], "u": "\u00e9"}
    assert clean_reasoning("{'Specific Anomaly Type': 'Fire', 'Key Evidence': ['smoke', 'flames']}") == (
        "Specific Anomaly Type: Fire\nKey Evidence: smoke; flames")
    markdown = ("### Specific Anomaly Type: Assault  ### Location The store.  ### Key Evidence - **Push**: a man "
                "pushes. - **Fall**: he falls.  ### Conclusion: Assault.")
    assert clean_reasoning(markdown) == ("Specific Anomaly Type: Assault\nLocation: The store.\nKey Evidence:\n"
                                         "- Push: a man pushes.\n- Fall: he falls.\nConclusion: Assault.")
    assert clean_reasoning("-1") == "" and clean_reasoning("### Key Evidence: ['unterminated") != ""


literals = st.recursive(
    st.one_of(st.text(max_size=12), st.integers(-10**6, 10**6), st.booleans(), st.none(),
              st.floats(allow_nan=False, allow_infinity=False, width=32)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(literals)
def test_literal_parser_round_trips_python_repr(value) -> None:
    assert parse_literal(repr(value)) == value


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("#*-:[]{}'\"\\ ,abc\n12.")), max_size=80))
def test_clean_reasoning_never_raises(text: str) -> None:
    assert isinstance(clean_reasoning(text), str)


def test_every_task_view_has_a_doc() -> None:
    assert {"qa", "tag", "cls", "cls_binary", "describe"} <= set(TASKS.names())
    assert all(get_task(name).doc for name in TASKS.names())


@needs_real
def test_real_files_match_the_paper_protocol() -> None:
    test = read_annotations(TEST_MSAD)
    assert len(test) == 240 and {a.source for a in test} == {"msad"}
    counts = view_counts(test, train=False)  # every registered task: built-ins, reflect variants, test plugins
    assert {k: counts[k] for k in BUILTIN_TASKS} == {"qa": 240, "tag": 120, "cls": 240, "cls_binary": 240,
                                                     "describe": 240}
    assert counts["tag_glue"] == 120
    recovered = [a for a in test if "answer_from_text" in a.notes]
    assert len(recovered) == 8
    for a in recovered:  # the stored text is the text of the option the letter names
        raw = next(r for r in csv.DictReader(TEST_MSAD.open(encoding="utf-8-sig")) if r["Video Name"] == a.video)
        assert raw["Correct Option"].split(".", 1)[1].strip() == a.options["ABCD".index(a.answer)].strip()
    val = read_annotations(VAL)
    by_source = {s: view_counts([a for a in val if a.source == s], train=False) for s in ("msad", "ucf", "ecva")}
    assert {s: c["tag"] for s, c in by_source.items()} == {"msad": 29, "ucf": 0, "ecva": 310}
    assert {s: c["qa"] for s, c in by_source.items()} == {"msad": 96, "ucf": 299, "ecva": 339}
    assert view_counts(val, train=True)["tag"] == 553
    rows = test + val
    assert all(a.known_class for a in rows) and {a.anomaly_class for a in rows} == set(ANOMALY_CLASSES)
    assert not any(s in a.reasoning for a in rows for s in ("###", "**", "{'", "['"))


@needs_real
def test_data_stats_cli_on_real_files(capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "stats", f"annotations={VAL},{TEST_MSAD}"]) == 0
    out = capsys.readouterr().out
    assert "split test, 240 rows" in out and "all      240  240  120  240" in out
    assert "left out of tag: 214 normal clip (evaluation: IoU undefined), 181 interval unknown (-1)" in out
    assert "with the training rules: tag=553" in out and "answer_from_text=8" in out
    assert "classes (20): Normal 214, Traffic_accident 103" in out


def test_data_stats_cli_reports_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path / "train.csv", [row("msad_1.mp4", **{"Start Time": "x"})])
    assert main(["data", "stats", f"annotations={path}"]) == 2
    assert "row 2, column 'Start Time'" in capsys.readouterr().err
