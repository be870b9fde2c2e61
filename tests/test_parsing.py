"""The one tolerant parser: every format it promises, the ambiguity rules, and no crash on any text."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vau.parsing import (
    answer_body,
    extract_tag,
    has_strict_format,
    interval_iou,
    is_normal_interval,
    normalize_label,
    parse_anomalous,
    parse_choice,
    parse_class,
    parse_interval,
    parse_reply,
    parse_seconds,
    strict_format,
)

OPTIONS = ("Nothing unusual happens", "A fire breaks out", "A fight starts", "Someone steals a bag")
CLASSES = ("Fire", "Fighting", "People Falling", "Traffic Accident", "Natural Hazard", "Normal")

FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "<glue>", "</glue>", "<reflect>", "</reflect>", "[",
             "]", "(", ")", ",", " - ", " to ", "from ", ":", "-1", "0", "0.0", "5.5", "12:30", "1:02:03",
             "9" * 40, "1e309", "nan", "inf", "A", "B", "C", "D", "a", " or ", "The answer is ", "Option ",
             "Normal", "Fire", "people_falling", "no anomaly", "yes", "no", " ", "\n", "\u0663", "\U0001d7d8",
             "\x00", " seconds", "s", "__import__('os')", "{'start': ", "'end': ", "-2", "-0.5", "-0:05", "+3", "--"]
near_formats = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)
any_text = st.one_of(st.text(max_size=300), near_formats)


# ------------------------------------------------------------------------------------------ tags, format ----
def test_extract_tag_takes_the_last_complete_tag_stripped():
    assert extract_tag("<answer> A </answer> then <answer>B</answer>", "answer") == "B"
    assert extract_tag("<answer>open only", "answer") is None
    assert extract_tag(None, "answer") is None


@settings(max_examples=300, deadline=None)
@given(near_formats)
def test_extract_tag_matches_the_lazy_regex_it_replaces(text):
    # the scanner is linear; the regex is the specification (quadratic on many unclosed tags)
    for tag in ("think", "answer"):
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL | re.IGNORECASE)
        assert extract_tag(text, tag) == (found[-1].strip() if found else None)


def test_parsing_is_fast_on_many_unclosed_tags():
    start = time.perf_counter()
    parse_reply("<think>" * 5000 + "<answer>" * 5000, ("think", "answer"), OPTIONS, CLASSES)
    assert time.perf_counter() - start < 2.0


def test_strict_format_needs_the_tags_in_order_once_each():
    assert strict_format("<think>x</think>\n<answer>B</answer>", ("think", "answer"))
    assert not strict_format("<answer>B</answer><think>x</think>", ("think", "answer"))
    assert not strict_format("so <think>x</think><answer>B</answer>", ("think", "answer"))
    assert not strict_format("<think>x</think><answer>B</answer><answer>C</answer>", ("think", "answer"))


def test_strict_format_with_content_refuses_blank_tags():
    assert has_strict_format("<think>x</think><answer>B</answer>", ("think", "answer"))
    assert not has_strict_format("<think>x</think><answer> </answer>", ("think", "answer"))
    assert not has_strict_format("<think>x</think><answer>B</answer>", ())


def test_answer_body_prefers_answer_tag_else_drops_think_and_reflect():
    assert answer_body("<think>A?</think><answer>B</answer>") == "B"
    assert answer_body("<think>A?</think><reflect>hmm C</reflect> D") == "D"
    assert answer_body("<answer></answer> B") == ""


def test_parse_reply_collects_every_part():
    reply = parse_reply("<think>smoke</think><reflect>check</reflect><answer>[2, 7.5]</answer>",
                        ("think", "reflect", "answer"))
    assert (reply.think, reply.reflect, reply.answer) == ("smoke", "check", "[2, 7.5]")
    assert reply.interval == (2.0, 7.5) and reply.strict
    assert not parse_reply("[2, 7.5]", ("think", "answer")).strict


# ------------------------------------------------------------------------------------------------ choices ----
@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("b", "B"), ("<answer>C</answer>", "C"),
    ("The answer is (B)", "B"), ("answer: D", "D"), ("Option C", "C"), ("I choose option (a)", "A"),
    ("B. A fire breaks out", "B"), ("(C) A fight starts", "C"), ("A fire breaks out", "B"),
    ("someone steals a bag.", "D"), ("<think>A looks wrong</think>The answer is C", "C"),
])
def test_parse_choice_reads_letters_prefixes_and_option_text(text, expected):
    assert parse_choice(text, OPTIONS) == expected


@pytest.mark.parametrize("text", [
    "A or B or C", "A, B, C, D", "A B C D", "<answer></answer>", "<answer> </answer>", "", "a",
    "a dog walks by", "The answer is A or the answer is B", "E", "<answer>A</answer>".replace("A", "A or B"),
])
def test_parse_choice_gives_none_for_absent_or_ambiguous(text):
    assert parse_choice(text, OPTIONS) is None


# ---------------------------------------------------------------------------------------------- intervals ----
@pytest.mark.parametrize("text, expected", [
    ("[5.2, 10.4]", (5.2, 10.4)), ("(5.2, 10.4)", (5.2, 10.4)), ("<answer>5.2 - 10.4</answer>", (5.2, 10.4)),
    ("5.2 to 10.4", (5.2, 10.4)), ("from 5.2 to 10.4 seconds", (5.2, 10.4)), ("5s-10s", (5.0, 10.0)),
    ("between 3 s and 7 s", (3.0, 7.0)), ("00:05 - 00:10", (5.0, 10.0)), ("from 1:05 to 2:10.5", (65.0, 130.5)),
    ("[01:02:03, 01:02:10.5]", (3723.0, 3730.5)), ("start: 2.5, end: 7", (2.5, 7.0)),
    ("{'start': 3, 'end': 9.5}", (3.0, 9.5)), ("5.2, 10.4", (5.2, 10.4)), ("[0.0, 0.0]", (0.0, 0.0)),
    ("<glue>[0.0, 3.8]</glue>", (0.0, 3.8)), ("<answer>Anomaly</answer><glue>[1, 2]</glue>", (1.0, 2.0)),
    ("<think>from 1 to 2</think><answer>[3, 4]</answer>", (3.0, 4.0)), ("[.5, 2]", (0.5, 2.0)),
])
def test_parse_interval_formats(text, expected):
    assert parse_interval(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", [
    "[-1, -1]", "[10, 5]", "[0, 5] and [6, 10]", "<answer></answer>", "no interval here", "[nan, inf]",
    "[1e3, 2e3]", "2024-05-10", "[" + "9" * 5000 + ", 1]", "[1+1, 2*3]", "[__import__('os'), 3]",
    "<glue></glue><answer>[1, 2]</answer>", "12:75 - 13:00",
])
def test_parse_interval_gives_none_for_invalid_or_ambiguous(text):
    assert parse_interval(text) is None


# Every interval pattern, with {s} and {e} for the two times.
INTERVAL_TEMPLATES = ("[{s}, {e}]", "({s}, {e})", "[{s} - {e}]", "{s} - {e}", "{s} to {e}", "from {s} to {e}",
                      "from {s} to {e} seconds", "between {s} and {e}", "start: {s}, end: {e}",
                      "{{'start': {s}, 'end': {e}}}", "{s}, {e}", "<answer>{s} - {e}</answer>",
                      "<glue>[{s}, {e}]</glue>")


@pytest.mark.parametrize("template", INTERVAL_TEMPLATES)
def test_a_negative_start_is_read_with_its_sign_and_makes_the_interval_invalid(template):
    # docs/rewards.md: an interval with a negative start is invalid (scores 0), in every format
    assert parse_interval(template.format(s="-2", e="5")) is None
    assert parse_interval(template.format(s="2", e="5")) == (2.0, 5.0)


signed_times = st.one_of(
    st.decimals(-999, 999, places=2, allow_nan=False, allow_infinity=False).map(lambda d: f"{d:.2f}"),
    st.tuples(st.integers(-59, 59), st.integers(0, 59)).map(lambda t: f"{t[0]}:{t[1]:02d}"),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(INTERVAL_TEMPLATES), signed_times, signed_times)
def test_signed_numbers_keep_their_sign_in_every_interval_pattern(template, start, end):
    text = template.format(s=start, e=end)
    s, e = parse_seconds(start), parse_seconds(end)
    expected = (round(s, 6), round(e, 6)) if 0.0 <= s <= e else None
    assert parse_interval(text) == expected, text


def test_parse_seconds_clock_formats():
    assert parse_seconds("1:02:03.5") == pytest.approx(3723.5)
    assert parse_seconds("02:03") == 123.0
    assert parse_seconds("12.5s") == 12.5
    assert parse_seconds("twelve") is None


# ------------------------------------------------------------------------------------------------ classes ----
@pytest.mark.parametrize("text, expected", [
    ("fire", "Fire"), ("<answer> People_falling </answer>", "People Falling"), ("PEOPLE-FALLING", "People Falling"),
    ("traffic   accidents", "Traffic Accident"), ("natural_hazard.", "Natural Hazard"), ("Normal", "Normal"),
    ("Absence_of_anomaly", "Normal"), ("no anomaly", "Normal"), ("It is a traffic accident.", "Traffic Accident"),
])
def test_parse_class_variants(text, expected):
    assert parse_class(text, CLASSES) == expected


@pytest.mark.parametrize("text", ["Fire or Fighting", "", "<answer></answer>", "Burglary", "fir", "fires and fighting"])
def test_parse_class_none_for_ambiguous_or_unknown(text):
    assert parse_class(text, CLASSES) is None


def test_parse_class_defaults_to_the_task_class_list():
    from vau.tasks import ANOMALY_CLASSES

    assert parse_class(ANOMALY_CLASSES[0].lower().replace(" ", "_")) == ANOMALY_CLASSES[0]


@pytest.mark.parametrize("text, expected", [
    ("Yes", True), ("yes, there is a fight", True), ("anomalous", True), ("Fighting", True), ("No", False),
    ("normal", False), ("no anomaly", False), ("<answer>Absence_of_anomaly</answer>", False), ("maybe", None),
    ("", None),
])
def test_parse_anomalous(text, expected):
    assert parse_anomalous(text, CLASSES) is expected


def test_normalize_label():
    assert normalize_label(" Road_Accidents. ") == normalize_label("road accident") == "road accident"


# ------------------------------------------------------------------------------------ IoU and convention ----
def test_iou_values_and_normal_convention():
    assert interval_iou((0.0, 10.0), (5.0, 15.0)) == pytest.approx(1 / 3)
    assert interval_iou((0.0, 0.0), (0.0, 0.0)) == 1.0
    assert interval_iou((0.0, 0.0), (0.0, 4.0)) == 0.0
    assert is_normal_interval((0, 0)) and not is_normal_interval((0, 1)) and not is_normal_interval(None)


interval = st.tuples(st.floats(0, 1e4, allow_nan=False), st.floats(0, 1e4, allow_nan=False)).map(
    lambda t: (min(t), max(t)))


@settings(max_examples=300, deadline=None)
@given(interval, interval)
def test_iou_is_bounded_and_symmetric(a, b):
    value = interval_iou(a, b)
    assert 0.0 <= value <= 1.0
    assert value == interval_iou(b, a)
    assert interval_iou(a, a) == 1.0


@settings(max_examples=200, deadline=None)
@given(interval, st.floats(0, 1e3, allow_nan=False), st.floats(0, 1e3, allow_nan=False))
def test_iou_of_disjoint_intervals_is_zero(a, gap, length):
    b = (a[1] + gap, a[1] + gap + length)
    if b != a:  # a zero gap and length reproduce a zero-length ``a``
        assert interval_iou(a, b) == 0.0


# ------------------------------------------------------------------------------------------------ fuzzing ----
@settings(max_examples=300, deadline=None)
@given(any_text)
def test_no_parser_raises_on_any_text(text):
    reply = parse_reply(text, ("think", "answer"), OPTIONS, CLASSES)
    assert reply.choice in (None, "A", "B", "C", "D")
    assert reply.anomaly_class is None or reply.anomaly_class in CLASSES
    if reply.interval is not None:
        start, end = reply.interval
        assert 0.0 <= start <= end < float("inf")


def test_parsing_never_evaluates_text():
    source = Path(__file__).resolve().parent.parent.joinpath("vau", "parsing.py").read_text()
    # bare eval/exec/compile calls, literal_eval or the ast module; re.compile is fine
    assert not re.search(r"(?<![\w.])(eval|exec|compile)\s*\(|literal_eval|\bimport ast\b", source)
