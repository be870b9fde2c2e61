"""``python -m vau judge``: VAU-Eval style scoring of descriptions and reasoning by a judge model, against a real
local OpenAI-compatible server and with the tiny local checkpoint (gibberish: every reply is a fallback)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.chat_server import ChatServer, Raw, http_reply
from vau.data.annotations import write_annotations
from vau.eval.judge import DIMENSIONS, judged_text, main, parse_scores

ROOT = Path(__file__).resolve().parents[1]
SCORES = {"classification": 8, "key_object_action": 6, "fluency": 9, "informativeness": 5, "factual_consistency": 7}


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    rows = [{"Video Name": f"ucf_{i}.mp4", "Question": "-1", "Option 1": "", "Option 2": "", "Option 3": "",
             "Option 4": "", "Correct Option": "-1", "Key Object": "flames", "Description": f"A shop burns ({i}).",
             "Reasoning": "Fire spreads from the counter.", "Anomaly Class": "Fire", "Start Time": "1",
             "End Time": "3"} for i in range(5)]
    rows.append({**rows[0], "Video Name": "ucf_blank.mp4", "Description": "", "Reasoning": ""})
    annotations = tmp_path / "test.csv"
    write_annotations(annotations, rows)
    records = [
        {"video": "ucf_0.mp4", "task": "describe", "response": "A shop is on fire. json"},
        {"video": "ucf_1.mp4", "task": "describe", "response": "Smoke fills a store. lines"},
        {"video": "ucf_2.mp4", "task": "describe", "response": "Nothing to see. garbage"},
        {"video": "ucf_3.mp4", "task": "qa", "response": "<think>Flames at the counter. limited</think><answer>B</answer>"},
        {"video": "ucf_4.mp4", "task": "cls", "response": "<answer>Fire</answer>"},  # no reasoning: skipped
        {"video": "ucf_3.mp4", "task": "qa", "shift": 1, "response": "<think>other order</think><answer>A</answer>"},
        {"video": "ucf_9.mp4", "task": "describe", "response": "Unknown clip."},  # no annotation row
        {"video": "ucf_blank.mp4", "task": "describe", "response": "A quiet street."},  # nothing to compare with
        {"video": "ucf_4.mp4", "task": "tag_reflect", "response": "<think>fire starts json</think><answer>[1, 2]"
                                                                  "</answer><reflect>ok</reflect><think>still json"
                                                                  "</think><answer>[1, 3]</answer>"},
    ]
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in records))
    return annotations, predictions


class Judge:
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, body: dict) -> tuple[int, str]:
        text = body["messages"][-1]["content"].split("to score:", 1)[1]
        with self.lock:
            self.calls[text] = self.calls.get(text, 0) + 1
            first = self.calls[text] == 1
        if "limited" in text and first:
            return 429, "slow down"
        if "lines" in text:
            return 200, "\n".join(f"{d.replace('_', ' ').title()}: {v}" for d, v in SCORES.items())
        if "garbage" in text:
            return 200, "I would rate this quite well overall."
        return 200, "```json\n" + json.dumps({**SCORES, "fluency": 10}) + "\n```"


def test_judge_end_to_end_against_a_server(tmp_path):
    annotations, predictions = write_inputs(tmp_path)
    out = tmp_path / "judged"
    with ChatServer(Judge(), delay=0.02) as server:
        args = ["judge", f"predictions={predictions}", f"annotations={annotations}", f"out={out}",
                f"judge.base_url={server.base_url}", "judge.model=judge-m", "judge.api_key_env=VAU_JUDGE_KEY",
                "judge.concurrency=2", "judge.backoff=0.01"]
        done = subprocess.run([sys.executable, "-m", "vau", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "VAU_JUDGE_KEY": "sk-judge"})
        assert done.returncode == 0, done.stderr
        assert len(server.requests) == 5 + 1 and set(server.auth) == {"Bearer sk-judge"}  # one 429, retried
        assert server.max_in_flight <= 2 and all(r["temperature"] == 0 for r in server.requests)
        report = json.loads((out / "judge.json").read_text())
        assert report["asked"] == 5 and report["n"] == 4 and report["fallback"] == 1 and report["errors"] == 0
        assert report["parsed"] == {"json": 3, "text": 1}
        assert report["skipped"] == {"nothing_to_judge": 1, "no_annotation_row": 1, "no_reference_text": 1,
                                     "qa_shift_not_0": 1}
        assert report["means"]["fluency"] == (3 * 10 + 9) / 4 and report["means"]["classification"] == 8
        assert report["total_mean"] == sum(SCORES.values()) + 3 / 4
        assert report["by_task"]["qa"]["n"] == 1 and report["by_task"]["describe"]["n"] == 2
        rows = [json.loads(line) for line in (out / "judge.jsonl").read_text().splitlines()]
        assert len(rows) == 5 and sum(r["status"] == "fallback" and r["scores"] is None for r in rows) == 1
        reflect = next(r for r in rows if r["task"] == "tag_reflect")
        assert reflect["judged"] == "fire starts json\nstill json"  # every <think> block, no answers
        assert "Fluency and coherence" in done.stdout and "1 fallback" in done.stdout
        assert (out / "judge.md").read_text().strip() in done.stdout
        # the cache makes a second run ask nothing and report the same
        assert main(args[1:]) == 0 and len(server.requests) == 6
        assert json.loads((out / "judge.json").read_text()) == report


def test_judge_with_the_tiny_local_model_reports_fallbacks_and_writes_outputs(tiny_path, tmp_path, capsys):
    annotations, predictions = write_inputs(tmp_path)
    out = tmp_path / "tiny"
    code = main([f"predictions={predictions}", f"annotations={annotations}", f"out={out}", "tasks=describe,qa",
                 f"judge.path={tiny_path}", "judge.max_new_tokens=8", "judge.dtype=float32", "judge.device=cpu"])
    assert code == 0
    report = json.loads((out / "judge.json").read_text())
    assert report["asked"] == 4 and report["fallback"] == 4 and report["n"] == 0 and report["total_mean"] is None
    assert report["skipped"]["task_not_selected"] == 2 and report["judge"]["backend"] == "local"
    assert len((out / "judge.jsonl").read_text().splitlines()) == 4
    assert len((out / "judge_cache.jsonl").read_text().splitlines()) == 4
    assert "4 fallback" in capsys.readouterr().out


def test_judge_reading_is_robust_and_never_executes_text():
    scores, how = parse_scores('{"scores": {"Classification": "9/10", "key object": 4, "Fluency": 7, '
                               '"informativeness": 3, "factual consistency": 0}}')
    assert how == "json" and scores == {"classification": 9.0, "key_object_action": 4.0, "fluency": 7.0,
                                        "informativeness": 3.0, "factual_consistency": 0.0}
    assert parse_scores('{"classification": "__import__(\'os\').system(\'x\')"}') == (None, "fallback")
    partial = '{"classification": 5} and then\nfluency: 6\nkey object and action: 7\ninformativeness: 8\nfactual: 9'
    assert parse_scores(partial)[1] == "text" and set(parse_scores(partial)[0]) == set(DIMENSIONS)
    assert judged_text("qa", "<answer>B</answer>") == "" and judged_text("describe", "<p>x</p> y") == "x y"


def test_judge_arguments_fail_with_a_clear_message(tmp_path, capsys):
    annotations, predictions = write_inputs(tmp_path)
    assert main([f"predictions={predictions}", f"annotations={annotations}"]) == 2
    assert "exactly one of judge.path" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4"}\n')
    assert main([f"predictions={bad}", f"annotations={annotations}", "judge.base_url=http://127.0.0.1:9",
                 "judge.model=m"]) == 2
    assert f"{bad}, line 1" in capsys.readouterr().err
    assert main([f"predictions={predictions}"]) == 2
    assert "missing annotations=FILE" in capsys.readouterr().err
    assert main([f"predictions={predictions}", f"annotations={annotations}", "judge.model=m", "outt=x"]) == 2
    assert "unknown argument 'outt=x'" in capsys.readouterr().err
    # format= (the annotation reader) is one of judge's own keys: it reaches the reader, which names a wrong one
    assert main([f"predictions={predictions}", f"annotations={annotations}", "format=nope",
                 "judge.base_url=http://127.0.0.1:9", "judge.model=m"]) == 2
    assert "unknown annotation format 'nope'" in capsys.readouterr().err


def lines(scores: dict) -> str:
    return "\n".join(f"{d.replace('_', ' ').title()}: {v}" for d, v in scores.items())


def test_scores_outside_0_to_10_make_the_reply_unreadable_not_clamped():
    """A judge answering on another scale (0-100) or with a negative number gives no usable score."""
    hundred = {d: v * 10 for d, v in SCORES.items()}
    assert parse_scores(json.dumps(hundred)) == (None, "fallback")
    assert parse_scores(json.dumps({**SCORES, "fluency": 14})) == (None, "fallback")
    assert parse_scores(json.dumps({**SCORES, "factual_consistency": -5})) == (None, "fallback")
    assert parse_scores(json.dumps({**SCORES, "classification": "85/100"})) == (None, "fallback")
    assert parse_scores(lines(hundred)) == (None, "fallback")
    assert parse_scores(lines({**SCORES, "fluency": -5})) == (None, "fallback")
    assert parse_scores(json.dumps({**SCORES, "fluency": 10, "classification": 0}))[1] == "json"  # the bounds
    assert parse_scores(lines(SCORES)) == ({d: float(v) for d, v in SCORES.items()}, "text")


def test_a_refusal_that_contains_score_lines_does_not_score():
    refusal = ("I'm sorry, but I cannot evaluate this reply. If I had to fill the template it would read:\n"
               + lines(dict.fromkeys(SCORES, 10)))
    assert parse_scores(refusal) == (None, "fallback")
    inline = ("As requested I will not judge this; classification: 10, key object: 10, fluency: 10, "
              "informativeness: 10, factual consistency: 10 is what a perfect reply would get.")
    assert parse_scores(inline) == (None, "fallback")
    twice = lines(SCORES) + "\nFluency: 3"  # a dimension scored twice: which one?
    assert parse_scores(twice) == (None, "fallback")
    # a genuine answer in lines, with a short note, still reads
    noted = "Scores:\n" + lines(SCORES) + "\nThe description misses the key object's action."
    assert parse_scores(noted) == ({d: float(v) for d, v in SCORES.items()}, "text")
    bullets = "\n".join(f"- **{d}**: {v}/10" for d, v in SCORES.items())
    assert parse_scores(bullets)[1] == "text"


def test_a_deeply_nested_judge_reply_is_a_fallback_fresh_and_from_the_cache(tmp_path, capsys):
    annotations, predictions = write_inputs(tmp_path)
    out = tmp_path / "nested"
    with ChatServer(lambda body: (200, '{"classification": ' + "[" * 100_000), delay=0.0) as server:
        args = [f"predictions={predictions}", f"annotations={annotations}", f"out={out}",
                f"judge.base_url={server.base_url}", "judge.model=m"]
        assert main(args) == 0  # every request got a reply: none is usable, which the report says
        report = json.loads((out / "judge.json").read_text())
        assert report["asked"] == 5 and report["fallback"] == 5 and report["n"] == 0 and report["errors"] == 0
        assert main(args) == 0 and len(server.requests) == 5  # the cached replies are read the same way
    assert json.loads((out / "judge.json").read_text()) == report


def test_judge_fails_with_one_line_when_no_request_succeeded_and_not_when_some_did(tmp_path, capsys):
    annotations, predictions = write_inputs(tmp_path)
    with ChatServer(lambda body: (503, "overloaded"), delay=0.0) as server:
        out = tmp_path / "down"
        assert main([f"predictions={predictions}", f"annotations={annotations}", f"out={out}", "judge.retries=1",
                     "judge.backoff=0.01", f"judge.base_url={server.base_url}", "judge.model=m"]) == 1
        assert len(server.requests) == 10  # five prompts, each retried once
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: judge: none of the 5 requests succeeded")
    assert "HTTP 503" in err[0] and json.loads((out / "judge.json").read_text())["errors"] == 5  # still written

    judge_model = Judge()

    def some(body):
        return (403, "no") if "garbage" in body["messages"][-1]["content"] else judge_model(body)

    with ChatServer(some, delay=0.0) as server:
        out = tmp_path / "some"
        assert main([f"predictions={predictions}", f"annotations={annotations}", f"out={out}", "judge.backoff=0.01",
                     f"judge.base_url={server.base_url}", "judge.model=m"]) == 0
    captured = capsys.readouterr()
    assert "1 request errors" in captured.out and "error:" not in captured.err


def test_a_non_utf8_judge_cache_is_read_around_not_a_traceback(tmp_path, caplog):
    annotations, predictions = write_inputs(tmp_path)
    out = tmp_path / "cached"
    out.mkdir()
    (out / "judge_cache.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    with ChatServer(Judge(), delay=0.0) as server, caplog.at_level(logging.WARNING):
        assert main([f"predictions={predictions}", f"annotations={annotations}", f"out={out}",
                     f"judge.base_url={server.base_url}", "judge.model=m", "judge.backoff=0.01"]) == 0
    assert str(out / "judge_cache.jsonl") in caplog.text
    assert json.loads((out / "judge.json").read_text())["n"] == 4


def test_judge_timeout_bounds_a_trickling_server(tmp_path, capsys):
    annotations, predictions = write_inputs(tmp_path)
    data = http_reply(b'{"choices": []}')
    with ChatServer(lambda body: Raw(data, every=0.2, slow=15), delay=0.0) as server:
        out = tmp_path / "slow"
        assert main([f"predictions={predictions}", f"annotations={annotations}", f"out={out}", "judge.timeout=0.3",
                     "judge.retries=0", "judge.concurrency=5", f"judge.base_url={server.base_url}",
                     "judge.model=m"]) == 1
    assert "within 0.3" in capsys.readouterr().err
