"""The ``teacher`` reflection builder: ``python -m vau data reflect builder=teacher`` against a real local
OpenAI-compatible server, and with the tiny local checkpoint (gibberish replies: every chain fails, counted)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.chat_server import ChatServer
from tests.shared_data import SHARED
from vau.data.annotations import read_annotations, write_annotations
from vau.datatools.reflection import build_chains, reflect_file
from vau.datatools.teacher import read_reply, validate
from vau.tasks import Sample, get_task
from vau.tasks.reflect import CONFIRMING, CORRECTIVE, Chain

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ("Nothing unusual happens", "A fire breaks out", "A fight starts", "Someone steals a bag")


def _field(text: str, label: str) -> str:
    match = re.search(rf"^{label}: (.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


class Teacher:
    """What the test server answers: a well-formed chain, except for rows whose key object says otherwise."""

    def __init__(self) -> None:
        self.seen: Counter = Counter()
        self.lock = threading.Lock()

    def __call__(self, body: dict) -> tuple[int, str]:
        text = body["messages"][-1]["content"]
        truth, first, key = (_field(text, label) for label in ("Correct answer", "First attempt answer", "Key object"))
        with self.lock:
            self.seen[key] += 1
            count = self.seen[key]
        if key == "flaky" and count == 1:
            return 500, "temporarily broken"
        if key == "rude" and count == 1:
            return 429, "rate limited"
        if key == "babbler":
            return 200, "I am not sure what you want me to write."
        answer = "D" if key == "liar" else truth
        wrong = "is WRONG" in text
        reflection = (f"Looking again, {first} does not fit: the {key} shows otherwise." if wrong
                      else f"Checking {first} against the {key}: it holds.")
        if key == "json-speaker":
            return 200, "Here you go: " + json.dumps({"reflection": reflection, "revised_reasoning": f"So {truth}.",
                                                      "final_answer": answer})
        return 200, f"<reflect>{reflection}</reflect>\n<think>The {key} settles it: {truth}.</think>\n<answer>{answer}</answer>"


def write_rows(path: Path, keys: list[str]) -> None:
    rows = []
    for i, key in enumerate(keys):
        rows.append({"Video Name": f"msad_{i}.mp4", "Question": "What happens?", "Option 1": OPTIONS[0],
                     "Option 2": OPTIONS[1], "Option 3": OPTIONS[2], "Option 4": OPTIONS[3],
                     "Correct Option": "B" if i % 2 else "C", "Key Object": key,
                     "Description": f"Something happens around the {key}.", "Reasoning": f"The {key} is decisive.",
                     "Anomaly Class": "Fire", "Start Time": "1.0", "End Time": "4.0"})
    write_annotations(path, rows)


def run_reflect(*args: str, key: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "VAU_TEACHER_KEY": key}
    return subprocess.run([sys.executable, "-m", "vau", "data", "reflect", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_data_reflect_builder_teacher_end_to_end_against_a_server(tmp_path):
    keys = ["flames", "smoke", "flaky", "rude", "babbler", "liar", "json-speaker", "bag"]
    source, out = tmp_path / "val.csv", tmp_path / "out" / "val_reflect.csv"
    write_rows(source, keys)
    teacher = Teacher()
    with ChatServer(teacher, delay=0.03) as server:
        args = (f"annotations={source}", f"out={out}", "builder=teacher", "tasks=qa_reflect",
                f"teacher.base_url={server.base_url}", "teacher.model=teacher-70b", "teacher.api_key_env=VAU_TEACHER_KEY",
                "teacher.concurrency=3", "teacher.retries=2", "teacher.backoff=0.01", "teacher.max_new_tokens=300")
        done = run_reflect(*args, key="sk-teach")
        assert done.returncode == 0, done.stderr
        assert len(server.requests) == len(keys) + 2  # one 500 and one 429, each retried once
        assert server.max_in_flight <= 3 and set(server.auth) == {"Bearer sk-teach"}
        assert {r["model"] for r in server.requests} == {"teacher-70b"}
        assert {r["max_tokens"] for r in server.requests} == {300}
        # the template decides which rows are corrective; the two refused replies fail whatever their kind
        rows = read_annotations(source)
        template, _ = build_chains(rows, ["qa_reflect"])
        corrective = {rows[i].key_object for (i, _), chain in template.items() if chain.kind == CORRECTIVE}
        failing = {"babbler", "liar"}
        expected = (f"qa_reflect: {len(corrective - failing)} corrective, "
                    f"{len(set(keys) - corrective - failing)} confirming, 2 failed")
        assert expected in done.stdout, done.stdout
        assert "failed because: 1 no_reflection, 1 wrong_final_answer" in done.stdout
        with out.open(newline="", encoding="utf-8") as handle:
            written = list(csv.DictReader(handle))
        cache = out.with_name("val_reflect.teacher_cache.jsonl")
        assert cache.is_file() and len(cache.read_text().splitlines()) == len(keys)  # invalid replies are cached too
        by_key = {row["Key Object"]: row for row in written}
        assert len(written) == len(keys) and all(r["Chain Task"] == "qa_reflect" for r in written)
        for key in ("babbler", "liar"):
            assert by_key[key]["Reflection"] == "" and by_key[key]["Chain Kind"] == ""
        for key in set(keys) - {"babbler", "liar"}:
            row = by_key[key]
            assert f"the {key}" in row["Reflection"] and row["Revised Reasoning"].endswith(f"{row['Correct Option']}.")
            assert (row["Initial Answer"] != row["Correct Option"]) == (row["Chain Kind"] == CORRECTIVE)
        # a second run reads every reply from the cache and writes the same file
        first = out.read_text()
        again = run_reflect(*args, key="sk-teach")
        assert again.returncode == 0, again.stderr
        assert len(server.requests) == len(keys) + 2 and out.read_text() == first


def test_teacher_validation_refuses_what_would_teach_the_wrong_thing():
    qa = get_task("qa_reflect")
    sample = Sample(task="qa_reflect", video="q.mp4", question="What happens?", options=OPTIONS, answer="B",
                    anomaly_class="Fire", key_object="flames", description="Flames rise.", reasoning="Fire.")
    wrong = Chain("It looks calm.", "A", "", "", kind=CORRECTIVE, task="qa_reflect")
    right = Chain("Flames rise.", "B", "", "", kind=CONFIRMING, task="qa_reflect")

    def reply(reflection, answer="B", think="Flames, so B."):
        return f"<reflect>{reflection}</reflect><think>{think}</think><answer>{answer}</answer>"

    chain, reason = validate(qa, sample, wrong, reply("Looking again, A does not fit the flames."))
    assert reason is None and chain.reflection.startswith("Looking again") and chain.initial_answer == "A"
    assert validate(qa, sample, wrong, reply("The flames rise high."))[1] == "rejects_nothing"
    assert validate(qa, sample, right, reply("My answer B was wrong."))[1] == "rejects_right_answer"
    assert validate(qa, sample, right, reply("B holds.", answer="C"))[1] == "wrong_final_answer"
    assert validate(qa, sample, right, reply("B holds.", think=" "))[1] == "no_revised_reasoning"
    assert validate(qa, sample, right, None)[1] == "request_failed"
    assert read_reply('{"reflection": "ok", "revised_reasoning": "r", "final_answer": "B"}') == ("ok", "r", "B")
    # a reply nested past any sane depth is an unreadable reply, not a RecursionError that ends the run
    assert validate(qa, sample, right, "{" * 100_000)[1] == "no_reflection"
    assert validate(qa, sample, right, '{"reflection": ' * 100_000)[1] == "no_reflection"


def test_teacher_needs_exactly_one_model_and_known_options():
    with pytest.raises(ValueError, match="exactly one of teacher.path"):
        build_chains([], builder="teacher")
    with pytest.raises(ValueError, match="unknown option"):
        build_chains([], builder="teacher", **{"teacher.base_url": "http://x", "teacher.modle": "m"})
    with pytest.raises(ValueError, match="unknown option.*teacher.modle"):  # the nested (config) form
        build_chains([], builder="teacher", teacher={"base_url": "http://x", "modle": "m"})


def test_teacher_from_a_config_node_builds_chains_in_memory(tmp_path):
    from omegaconf import OmegaConf

    from vau.data.annotations import read_annotations as read
    from vau.datatools.reflection import attach_chains

    source = tmp_path / "val.csv"
    write_rows(source, ["flames", "smoke"])
    with ChatServer(Teacher(), delay=0.0) as server:
        node = OmegaConf.create({"builder": "teacher", "teacher": {"base_url": server.base_url, "model": "m",
                                                                   "cache": str(tmp_path / "c.jsonl")}})
        rows = attach_chains(read(source), ["qa_reflect"], **dict(node))
    chains = [get_task("qa_reflect").sample(row).extra["reflection"] for row in rows]
    assert all(f"the {row.key_object}" in chain.reflection for row, chain in zip(rows, chains))  # the model's text
    assert len(server.requests) == 2 and (tmp_path / "c.jsonl").is_file()


def test_teacher_on_real_val_rows_every_task(tmp_path):
    val = SHARED / "val.csv"
    if not val.is_file():
        pytest.skip(f"VAU-Bench val annotations not on this machine ({val})")
    with val.open(newline="", encoding="utf-8-sig") as handle:
        head = list(csv.reader(handle))[:7]  # header + 6 rows
    small = tmp_path / "val6.csv"
    with small.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(head)
    with ChatServer(Teacher(), delay=0.0) as server:
        counts = reflect_file(small, tmp_path / "r.csv", builder="teacher", **{
            "teacher.base_url": server.base_url, "teacher.model": "m", "teacher.concurrency": 4})
    kinds = Counter(kind for (task, kind), n in counts.items() for _ in range(n) if task != "reason")
    assert kinds["failed"] == 0 and kinds[CORRECTIVE] > 0 and kinds[CONFIRMING] > 0
    assert {task for task, _ in counts} >= {"qa_reflect", "tag_reflect", "cls_reflect", "cls_binary_reflect"}
    assert len(server.requests) == kinds[CORRECTIVE] + kinds[CONFIRMING]


def test_teacher_with_the_tiny_local_model_counts_every_gibberish_reply_as_failed(tiny_path, tmp_path):
    source, out = tmp_path / "val.csv", tmp_path / "val_reflect.csv"
    write_rows(source, ["flames", "smoke", "bag"])
    counts = reflect_file(source, out, builder="teacher", tasks=["qa_reflect"],
                          **{"teacher.path": str(tiny_path), "teacher.max_new_tokens": 8, "teacher.dtype": "float32",
                             "teacher.device": "cpu"})
    assert counts[("qa_reflect", "failed")] == 3 and counts[("qa_reflect", CORRECTIVE)] == 0
    assert sum(n for (task, _), n in counts.items() if task == "reason") == 3
    with out.open(newline="", encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 3 and all(r["Chain Task"] == "qa_reflect" and not r["Reflection"] for r in written)
    assert len(out.with_name("val_reflect.teacher_cache.jsonl").read_text().splitlines()) == 3


def test_teacher_fails_with_one_line_when_no_request_succeeded(tmp_path, capsys):
    from vau.datatools.reflection import main as reflect_main  # what `python -m vau data reflect` runs

    source, out = tmp_path / "val.csv", tmp_path / "out.csv"
    write_rows(source, ["flames", "smoke", "bag"])
    with ChatServer(lambda body: (503, "overloaded"), delay=0.0) as server:
        code = reflect_main([f"annotations={source}", f"out={out}", "builder=teacher", "tasks=qa_reflect",
                             f"teacher.base_url={server.base_url}", "teacher.model=m", "teacher.retries=1",
                             "teacher.backoff=0.01", f"teacher.cache={tmp_path / 'c.jsonl'}"])
        assert len(server.requests) == 6  # three prompts, each retried once
    captured = capsys.readouterr()
    assert code != 0, captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: teacher: none of the 3 requests succeeded")
    assert "HTTP 503" in err[0] and not out.exists()  # no file of template-only fallbacks
