"""vau.chat: the OpenAI-compatible backend against a real local HTTP server, the job runner (concurrency, retries,
cache, resume) and the local transformers backend on the tiny Qwen2.5-VL twin."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from tests.chat_server import ChatServer, Raw, completion, http_reply
from vau.chat import ChatError, ChatRunner, LocalChat, OpenAIChat, first_json_object, read_cache


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def echo(body: dict) -> tuple[int, str]:
    return 200, "echo: " + body["messages"][-1]["content"]


def test_endpoint_request_shape_and_api_key_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("VAU_TEST_KEY", "sk-secret-123")
    with ChatServer(echo) as server:
        chat = OpenAIChat(server.base_url, "judge-7b", api_key_env="VAU_TEST_KEY", max_new_tokens=33)
        assert chat.complete(conv("hi")) == "echo: hi"
        monkeypatch.delenv("VAU_TEST_KEY")
        assert chat.complete(conv("again")) == "echo: again"
    assert server.paths == ["/v1/chat/completions"] * 2
    assert server.auth == ["Bearer sk-secret-123", None]  # no variable: no header
    body = server.requests[0]
    assert body["model"] == "judge-7b" and body["temperature"] == 0 and body["max_tokens"] == 33
    assert body["messages"] == conv("hi")
    assert "sk-secret" not in json.dumps(chat.identity())  # the cache key never holds the key


def test_endpoint_errors_name_the_url_and_status_and_say_whether_to_retry():
    replies = {"missing": (404, "no such model"), "busy": (503, "overloaded"), "slow": (429, "rate limited"),
               "junk": (200, b"<html>not json</html>")}
    with ChatServer(lambda body: replies[body["messages"][-1]["content"]]) as server:
        chat = OpenAIChat(server.base_url, "m")
        for text, (status, retry) in {"missing": (404, False), "busy": (503, True), "slow": (429, True)}.items():
            with pytest.raises(ChatError) as caught:
                chat.complete(conv(text))
            assert caught.value.status == status and caught.value.retryable is retry
            assert f"HTTP {status}" in str(caught.value) and chat.url in str(caught.value)
        with pytest.raises(ChatError, match="not an OpenAI chat completion") as caught:
            chat.complete(conv("junk"))
        assert not caught.value.retryable
        url = server.base_url
    with pytest.raises(ChatError, match="is the server running") as caught:  # the server is gone: refused
        OpenAIChat(url, "m", timeout=5).complete(conv("x"))
    assert caught.value.retryable


def test_runner_limits_concurrency_retries_only_what_can_succeed_and_caches(tmp_path):
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def reply(body):
        text = body["messages"][-1]["content"]
        with lock:
            seen[text] = seen.get(text, 0) + 1
            count = seen[text]
        if text == "flaky" and count == 1:
            return 500, "boom"
        if text == "limited" and count == 1:
            return 429, "slow down"
        if text == "forbidden":
            return 403, "no"
        return echo(body)

    texts = [f"row {i}" for i in range(10)] + ["flaky", "limited", "forbidden"]
    cache = tmp_path / "cache.jsonl"
    with ChatServer(reply, delay=0.05) as server:
        runner = ChatRunner(OpenAIChat(server.base_url, "m"), cache, concurrency=3, attempts=3, backoff=0.01)
        replies = runner.run([conv(t) for t in texts])
        assert 2 <= server.max_in_flight <= 3
        assert [r.text for r in replies[:-1]] == [f"echo: {t}" for t in texts[:-1]]
        assert replies[-1].text is None and "HTTP 403" in replies[-1].error and replies[-1].attempts == 1
        assert seen["flaky"] == 2 and seen["limited"] == 2 and seen["forbidden"] == 1  # 4xx is not retried
        assert replies[10].attempts == 2 and len(server.requests) == runner.requests == 15
        assert len(read_cache(cache)) == 12  # the failure is not cached
        again = ChatRunner(OpenAIChat(server.base_url, "m"), cache, concurrency=3, attempts=1).run(
            [conv(t) for t in texts])
        assert server.user_texts()[15:] == ["forbidden"]  # only the failed prompt is asked again
        assert [r.text for r in again] == [r.text for r in replies] and all(r.cached for r in again[:-1])
        other = ChatRunner(OpenAIChat(server.base_url, "other-model"), cache, attempts=1).run([conv("row 0")])
        assert other[0].cached is False and len(server.requests) == 17  # another model: another key


@pytest.mark.parametrize("where", ["status line", "body"])
def test_timeout_is_a_deadline_for_the_whole_request_not_per_read(where):
    """A server trickling one byte every 0.2 s never trips a per-read timeout of 0.5 s; the deadline must."""
    data = http_reply(completion("late"))
    start = 0 if where == "status line" else data.index(b"\r\n\r\n") + 4
    with ChatServer(lambda body: Raw(data, every=0.2, slow=15, start=start), delay=0.0) as server:
        chat = OpenAIChat(server.base_url, "m", timeout=0.5)
        began = time.monotonic()
        with pytest.raises(ChatError, match="within 0.5") as caught:
            chat.complete(conv("x"))  # the trickle would finish after 3 s
        assert caught.value.retryable and time.monotonic() - began < 1.5
        runner = ChatRunner(chat, None, attempts=2, backoff=0.01)
        began = time.monotonic()
        [reply] = runner.run([conv("y")])
        assert reply.text is None and reply.attempts == 2 and "within 0.5" in reply.error  # retried, then failed
        assert time.monotonic() - began < 2.5


def test_every_transport_error_is_retried_then_counted_never_aborts_the_run():
    """A body shorter than its Content-Length (IncompleteRead) and a hang-up are retried like a refused connection."""
    seen: dict[str, int] = {}
    lock = threading.Lock()
    short = http_reply(completion("cut"), length=500)  # the server announces more than it sends, then closes

    def reply(body):
        text = body["messages"][-1]["content"]
        with lock:
            seen[text] = seen.get(text, 0) + 1
            count = seen[text]
        if text == "short once" and count == 1 or text == "always short":
            return Raw(short)
        if text == "hang up once" and count == 1 or text == "always hang up":
            return Raw(b"")
        return echo(body)

    texts = ["short once", "always short", "hang up once", "always hang up", "fine"]
    with ChatServer(reply, delay=0.0) as server:
        runner = ChatRunner(OpenAIChat(server.base_url, "m", timeout=5), None, concurrency=2, attempts=3,
                            backoff=0.01)
        replies = runner.run([conv(t) for t in texts])
    by_text = dict(zip(texts, replies))
    assert by_text["short once"].text == "echo: short once" and by_text["short once"].attempts == 2
    assert by_text["hang up once"].text == "echo: hang up once" and by_text["hang up once"].attempts == 2
    for text in ("always short", "always hang up"):
        assert by_text[text].text is None and by_text[text].attempts == 3 and server.base_url in by_text[text].error
    assert "IncompleteRead" in by_text["always short"].error
    assert by_text["fine"].text == "echo: fine" and seen["always short"] == 3


def test_deeply_nested_or_oversized_endpoint_json_is_a_failed_request_not_a_crash(tmp_path):
    replies = {"deep": (200, b"[" * 100_000), "deep content": (200, '{"a": ' + "[" * 100_000),
               "deep valid": (200, b'{"choices": ' + b"[" * 5000 + b"]" * 5000 + b"}")}
    cache = tmp_path / "cache.jsonl"
    with ChatServer(lambda body: replies[body["messages"][-1]["content"]], delay=0.0) as server:
        chat = OpenAIChat(server.base_url, "m")
        for text in ("deep", "deep valid"):
            with pytest.raises(ChatError, match="not an OpenAI chat completion") as caught:
                chat.complete(conv(text))
            assert not caught.value.retryable  # the same body would come back
        runner = ChatRunner(chat, cache, attempts=2, backoff=0.01)
        out = runner.run([conv(t) for t in replies])
    assert [r.text is None for r in out] == [True, False, True]  # counted, the run goes on
    assert out[1].text.endswith("[" * 100) and runner.requests == 3
    began = time.monotonic()
    assert first_json_object(out[1].text) is None and first_json_object("[" * 100_000 + '{"a": 1}') == {"a": 1}
    assert first_json_object('{"a": ' * 40 + "1" + "}" * 40) is None  # deeper than a reply object needs
    assert first_json_object("x{" * 200_000) is None and time.monotonic() - began < 1.0


def test_read_cache_skips_lines_it_cannot_read_and_says_how_many(tmp_path, caplog):
    cache = tmp_path / "cache.jsonl"
    good = json.dumps({"key": "k1", "reply": "kept"})
    cache.write_bytes(b"\xff\xfe not utf-8 \x80\n" + b"[" * 100_000 + b"\n" + good.encode() + b"\n")
    with caplog.at_level(logging.WARNING, logger="vau.chat.runner"):
        assert read_cache(cache) == {"k1": "kept"}
    assert str(cache) in caplog.text and "2 line" in caplog.text
    with ChatServer(echo, delay=0.0) as server:  # a run on such a cache asks what it lacks and appends
        replies = ChatRunner(OpenAIChat(server.base_url, "m"), cache).run([conv("new")])
    assert replies[0].text == "echo: new" and len(read_cache(cache)) == 2


class Stop(Exception):
    pass


def test_an_interrupted_run_resumes_asking_only_the_rest(tmp_path):
    cache = tmp_path / "cache.jsonl"
    texts = [f"row {i}" for i in range(12)]
    with ChatServer(echo, delay=0.03) as server:
        got = []

        def stop_after_four(index, reply):
            got.append(index)
            if len(got) == 4:
                raise Stop

        with pytest.raises(Stop):
            ChatRunner(OpenAIChat(server.base_url, "m"), cache, concurrency=2).run([conv(t) for t in texts],
                                                                                    on_reply=stop_after_four)
        first = set(server.user_texts())
        assert 4 <= len(first) < len(texts) and len(read_cache(cache)) == len(first)  # in-flight replies kept too
        replies = ChatRunner(OpenAIChat(server.base_url, "m"), cache, concurrency=2).run([conv(t) for t in texts])
        second = server.user_texts()[len(first):]
        assert sorted(second) == sorted(set(texts) - first)  # nothing answered before is asked again
    assert [r.text for r in replies] == [f"echo: {t}" for t in texts]


def test_a_torn_last_cache_line_does_not_swallow_the_next_reply(tmp_path):
    """A run killed mid-write leaves a line without its newline; the next run's first reply must still be kept."""
    cache = tmp_path / "cache.jsonl"
    with ChatServer(echo) as server:
        ChatRunner(OpenAIChat(server.base_url, "m"), cache, concurrency=1).run([conv("a")])
        cache.write_text(cache.read_text() + '{"key": "torn', encoding="utf-8")  # killed while writing a line
        ChatRunner(OpenAIChat(server.base_url, "m"), cache, concurrency=1).run([conv("b")])
        asked = len(server.user_texts())
        replies = ChatRunner(OpenAIChat(server.base_url, "m"), cache, concurrency=1).run([conv("a"), conv("b")])
        assert len(server.user_texts()) == asked  # both cached: nothing asked again
    assert [r.text for r in replies] == ["echo: a", "echo: b"]


def test_first_json_object_skips_chatter_and_broken_braces():
    assert first_json_object('{broken {"a": {"b": 1}} tail {"c": 2}') == {"a": {"b": 1}}
    assert first_json_object("[1, 2] no object") is None and first_json_object(None) is None


def test_local_backend_generates_text_from_the_tiny_vl_checkpoint(tiny_path, tmp_path):
    chat = LocalChat(tiny_path, max_new_tokens=6, dtype="float32", device="cpu")
    first = chat.complete(conv("What happens in the video?"))
    assert isinstance(first, str) and first == chat.complete(conv("What happens in the video?"))  # greedy
    batch = chat.complete_batch([conv("a"), conv("a much longer question about the video")])
    assert len(batch) == 2 and all(isinstance(b, str) for b in batch)
    cache = tmp_path / "local.jsonl"
    runner = ChatRunner(chat, cache, batch_size=2)
    replies = runner.run([conv("one"), conv("two"), conv("three")])
    assert runner.requests == 3 and len(read_cache(cache)) == 3
    again = ChatRunner(chat, cache)
    assert [r.text for r in again.run([conv("one"), conv("two"), conv("three")])] == [r.text for r in replies]
    assert again.requests == 0


def test_local_backend_refuses_a_folder_without_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        LocalChat(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "no_such_model"}')
    with pytest.raises(ValueError, match=f"path={tmp_path}: cannot load"):
        LocalChat(tmp_path).complete(conv("hi"))
