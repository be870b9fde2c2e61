"""Run many chat prompts: bounded concurrency, retries with exponential backoff, and a resumable cache.

The cache is a JSON-lines file with one ``{"key": ..., "reply": ...}`` object per answered prompt, appended (and
flushed) as each reply arrives, so a run that is interrupted -- Ctrl-C, a crash, a killed job -- keeps every reply
it got and the next run asks only the rest. A key is the SHA-256 of the conversation (which holds the row's content
and the prompt) plus the backend's :meth:`~vau.chat.backends.ChatBackend.identity` and a caller's ``salt`` (prompt
version): change the model, the decoding budget or the prompt, and nothing stale is reused. Failed prompts are not
cached; a later run asks them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from vau.chat.backends import MAX_REPLY_BYTES, ChatBackend, ChatError, LocalChat, Messages
from vau.chat.parse import loads_bounded

log = logging.getLogger(__name__)
CACHE_LINE_CHARS = 8 * MAX_REPLY_BYTES  # the longest reply a backend returns, with room for JSON escapes


@dataclass
class Reply:
    """The outcome of one prompt: ``text`` (None when it failed), ``error`` (why), requests made, cache hit."""

    text: str | None
    error: str | None = None
    attempts: int = 0
    cached: bool = False


def cache_key(messages: Messages, identity: dict, salt: str = "") -> str:
    blob = json.dumps({"messages": [dict(m) for m in messages], "backend": identity, "salt": salt}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def read_cache(path: Path) -> dict[str, str]:
    """Replies by key. A line that cannot be read -- torn (a run killed mid-write), not UTF-8, not a
    ``{key, reply}`` object, nested absurdly deep -- is skipped: one warning names the file and counts them, and
    their prompts are simply asked again."""
    found: dict[str, str] = {}
    if not path.is_file():
        return found
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cache {path} cannot be read: {err}; fix it or give another cache=FILE (none = off)") from None
    bad: list[int] = []
    # line by line, not the whole file decoded at once: one corrupt line must not cost the replies around it
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = loads_bounded(line, max_depth=4, max_chars=CACHE_LINE_CHARS)
            found[str(record["key"])] = str(record["reply"])
        except (ValueError, KeyError, TypeError):
            bad.append(number)
    if bad:
        log.warning("cache %s: %d line(s) unreadable (not UTF-8 or not a {key, reply} object), e.g. line %d; "
                    "ignored, their prompts are asked again", path, len(bad), bad[0])
    return found


class ChatRunner:
    """Ask a backend many conversations.

    Args:
        backend: the chat model.
        cache: JSON-lines cache file (created with its folder); None = no cache.
        concurrency: at most this many requests in flight at once.
        attempts: requests per prompt at most (1 = no retry); only retryable errors are retried.
        backoff: seconds before the first retry; doubled for each further one.
        salt: mixed into every cache key (bump it when the prompt's wording changes).
        desc: progress bar label.
        batch_size: for a local backend, conversations per ``generate`` call.
    """

    def __init__(self, backend: ChatBackend, cache: str | Path | None = None, concurrency: int = 4,
                 attempts: int = 4, backoff: float = 1.0, salt: str = "", desc: str = "chat",
                 batch_size: int = 8) -> None:
        if int(concurrency) < 1 or int(attempts) < 1:
            raise ValueError(f"concurrency={concurrency} and retries/attempts={attempts} must be at least 1")
        self.backend = backend
        self.cache = Path(cache) if cache else None
        self.concurrency = int(concurrency)
        self.attempts = int(attempts)
        self.backoff = float(backoff)
        self.salt = salt
        self.desc = desc
        self.batch_size = max(1, int(batch_size))
        self.requests = 0  # HTTP requests / generate conversations made by this runner, retries included
        self._lock = threading.Lock()

    def _ask(self, messages: Messages) -> Reply:
        error = None
        for attempt in range(1, self.attempts + 1):
            with self._lock:
                self.requests += 1
            try:
                return Reply(self.backend.complete(messages), attempts=attempt)
            except ChatError as err:
                error = str(err)
                if not err.retryable or attempt == self.attempts:
                    return Reply(None, error, attempt)
                log.info("retry %d/%d in %.2fs: %s", attempt, self.attempts - 1,
                         self.backoff * 2 ** (attempt - 1), err)
                time.sleep(self.backoff * 2 ** (attempt - 1))
        return Reply(None, error, self.attempts)

    def _ask_batch(self, batch: Sequence[Messages]) -> list[Reply]:
        with self._lock:
            self.requests += len(batch)
        try:
            return [Reply(t, attempts=1) for t in self.backend.complete_batch(batch)]
        except ChatError as err:
            return [Reply(None, str(err), 1) for _ in batch]

    def _store(self, handle, key: str, reply: Reply) -> None:
        if handle is not None and reply.text is not None:
            with self._lock:
                handle.write(json.dumps({"key": key, "reply": reply.text}, ensure_ascii=False) + "\n")
                handle.flush()

    def run(self, conversations: Sequence[Messages],
            on_reply: Callable[[int, Reply], None] | None = None) -> list[Reply]:
        """One :class:`Reply` per conversation, in order.

        ``on_reply(index, reply)`` is called in the calling thread as each new reply arrives (not for cache hits);
        an exception it raises (or Ctrl-C) stops the run after the requests in flight finish; their replies are
        in the cache.
        """
        keys = [cache_key(m, self.backend.identity(), self.salt) for m in conversations]
        known = read_cache(self.cache) if self.cache else {}
        replies: list[Reply | None] = [Reply(known[k], cached=True) if k in known else None for k in keys]
        todo = [i for i, r in enumerate(replies) if r is None]
        first: dict[str, int] = {}
        for i in todo:  # identical conversations are asked once
            first.setdefault(keys[i], i)
        ask = list(first.values())
        counts = {"ok": 0, "failed": 0, "cached": len(conversations) - len(todo)}
        bar = tqdm(total=len(conversations), initial=counts["cached"], desc=self.desc, unit="row", leave=False,
                   disable=None)
        handle = None
        if self.cache is not None:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            torn = self.cache.is_file() and self.cache.stat().st_size > 0 and not self.cache.read_bytes().endswith(b"\n")
            handle = self.cache.open("a", encoding="utf-8")
            if torn:  # a run killed mid-write: end its torn line, or it would swallow the first reply appended now
                handle.write("\n")
        local = isinstance(self.backend, LocalChat)
        groups = ([ask[i:i + self.batch_size] for i in range(0, len(ask), self.batch_size)] if local
                  else [[i] for i in ask])
        pool = ThreadPoolExecutor(max_workers=1 if local else self.concurrency)
        try:
            def job(group: list[int]) -> list[Reply]:
                out = (self._ask_batch([conversations[i] for i in group]) if local
                       else [self._ask(conversations[group[0]])])
                for i, reply in zip(group, out):
                    self._store(handle, keys[i], reply)  # in the worker: a reply that arrived is kept
                return out

            pending = {pool.submit(job, g): g for g in groups}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    group = pending.pop(future)
                    for i, reply in zip(group, future.result()):
                        replies[i] = reply
                        counts["ok" if reply.text is not None else "failed"] += 1
                        if reply.text is None and counts["failed"] == 1:  # say why once (e.g. HTTP 401)
                            log.warning("%s: a request failed after %d attempt(s): %s", self.desc, reply.attempts,
                                        reply.error)
                        bar.update(1)
                        bar.set_postfix(counts, refresh=False)
                        if on_reply is not None:
                            on_reply(i, reply)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            if handle is not None:
                handle.close()
        for i in todo:  # duplicates take the reply of their first copy
            if replies[i] is None:
                source = replies[first[keys[i]]]
                replies[i] = Reply(source.text, source.error, 0, cached=source.text is not None)
        log.info("%s: %d asked, %d failed, %d from the cache (%d requests)", self.desc, counts["ok"] +
                 counts["failed"], counts["failed"], counts["cached"], self.requests)
        return replies  # type: ignore[return-value]


RUNNER_KEYS = ("concurrency", "retries", "backoff", "cache", "batch_size")


def runner_from_options(backend: ChatBackend, options: dict, where: str, default_cache: Path, salt: str,
                        desc: str) -> ChatRunner:
    """A :class:`ChatRunner` from ``concurrency``/``retries``/``backoff``/``cache``/``batch_size`` options (keys
    without the ``where.`` prefix); ``cache=none`` turns the cache off."""
    try:
        concurrency = int(options.get("concurrency") or 4)
        attempts = int(options.get("retries") if options.get("retries") not in (None, "") else 3) + 1
        backoff = float(options.get("backoff") if options.get("backoff") not in (None, "") else 1.0)
        batch_size = int(options.get("batch_size") or 8)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}.concurrency/retries/backoff/batch_size must be numbers: {err}") from None
    cache = options.get("cache")
    off = cache is not None and str(cache).strip().lower() in ("none", "null", "false", "off")
    cache_path = None if off else Path(str(cache or default_cache))
    return ChatRunner(backend, cache_path, concurrency=concurrency, attempts=attempts, backoff=backoff, salt=salt,
                      desc=desc, batch_size=batch_size)
