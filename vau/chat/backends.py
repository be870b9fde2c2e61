"""Text chat backends behind one interface: ``complete(messages) -> str``, greedy (deterministic).

- :class:`LocalChat`: a transformers checkpoint in a local folder (``path=``), text-only generation through its
  chat template. Vision-language checkpoints (Qwen2.5-VL, ...) load with their image-text-to-text class and are
  simply given no images.
- :class:`OpenAIChat`: any OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp server, a hosted API),
  standard library only. The API key is read from an environment variable whose *name* is configurable; the key
  itself never appears in a message, a log line or the cache.

Errors carry whether a retry can help (:attr:`ChatError.retryable`): every transport error (refused or reset
connections, a reply cut short of its Content-Length, a request past its deadline), HTTP 429 and 5xx can; other
4xx and malformed bodies cannot. :class:`vau.chat.runner.ChatRunner` retries on that flag. ``timeout`` is a deadline
for the whole request -- connect, send, headers and body -- not a bound on each socket read, so a server that
trickles bytes cannot hold a request forever.
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from vau.chat.parse import loads_bounded

Messages = Sequence[Mapping[str, str]]
MAX_REPLY_BYTES = 8 * 1024 * 1024  # a chat completion of a few thousand tokens is kilobytes


class ChatError(RuntimeError):
    """A chat request that failed; the message names the URL (or model folder) and the HTTP status if any."""

    def __init__(self, message: str, retryable: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class ChatBackend:
    """One chat model. Subclasses implement :meth:`complete` and :meth:`identity`."""

    def complete(self, messages: Messages) -> str:
        """The model's reply to ``messages`` (``[{"role": ..., "content": str}, ...]``), greedy."""
        raise NotImplementedError

    def identity(self) -> dict:
        """What changes the replies (model, decoding settings): part of every cache key. Never secrets."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for logs."""
        return ", ".join(f"{k}={v}" for k, v in self.identity().items())


class _Deadline:
    """The end of one request: every socket operation gets only the time that is left of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete reply within {self.seconds:g}s (timeout)")
        return left


class _DeadlineReader(io.RawIOBase):
    """The response's socket reads; each may wait only for what is left of the deadline.

    A per-read timeout alone (what ``urlopen(timeout=...)`` gives) is reset by every byte that arrives.
    """

    def __init__(self, raw, sock, deadline: _Deadline) -> None:
        self._raw, self._sock, self._deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(self._deadline.left())
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()  # the socket's own reader: it holds the socket open until the body is read
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock, *args, deadline: _Deadline, **kwargs) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline))  # nothing read yet


class _DeadlineConnection:
    """Mixed into http.client's connections: connect, send and every read of the reply share one deadline."""

    def __init__(self, host, *, deadline: _Deadline, **kwargs) -> None:
        kwargs["timeout"] = deadline.left()
        super().__init__(host, **kwargs)  # type: ignore[call-arg]
        self.deadline = deadline
        self.response_class = functools.partial(_DeadlineResponse, deadline=deadline)

    def connect(self) -> None:
        self.timeout = self.deadline.left()
        super().connect()  # type: ignore[misc]
        self.sock.settimeout(self.deadline.left())  # type: ignore[attr-defined]

    def send(self, data) -> None:
        if self.sock is not None:  # type: ignore[attr-defined]
            self.sock.settimeout(self.deadline.left())  # type: ignore[attr-defined]
        super().send(data)  # type: ignore[misc]


class _HTTP(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _HTTPS(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(functools.partial(_HTTP, deadline=self.deadline), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req):
        return self.do_open(functools.partial(_HTTPS, deadline=self.deadline), req, context=self._context)


def _open(request: urllib.request.Request, seconds: float):
    """``urlopen`` (proxies from the environment, redirects, HTTPError) with ``seconds`` for the whole request."""
    deadline = _Deadline(seconds)
    opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline))
    return opener.open(request, timeout=deadline.left())


def _read_body(response) -> bytes:
    """The body, at most :data:`MAX_REPLY_BYTES`; a body cut short of its Content-Length raises IncompleteRead."""
    declared = response.length
    if declared is not None and declared > MAX_REPLY_BYTES:
        raise ValueError(f"a body of {declared} bytes, more than {MAX_REPLY_BYTES}")
    raw = response.read() if declared is not None else response.read(MAX_REPLY_BYTES + 1)
    if len(raw) > MAX_REPLY_BYTES:
        raise ValueError(f"a body of more than {MAX_REPLY_BYTES} bytes")
    return raw


def _why(err: BaseException, seconds: float) -> str:
    reason = getattr(err, "reason", None)
    reason = reason if isinstance(reason, BaseException) else err  # URLError wraps the socket error
    if isinstance(reason, TimeoutError):  # every socket wait ends with the deadline, so any timeout is past it
        return f"no complete reply within {seconds:g}s (timeout)"
    if isinstance(reason, http.client.HTTPException):  # the connection broke mid-reply
        return f"{type(reason).__name__}: {reason}"
    return f"{type(reason).__name__}: {reason} (is the server running?)"


class OpenAIChat(ChatBackend):
    """An OpenAI-compatible endpoint: ``POST {base_url}/chat/completions`` with temperature 0.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (vLLM) or ``http://127.0.0.1:8080/v1`` (llama.cpp server).
        model: the model name the server expects.
        api_key_env: NAME of the environment variable holding the key (sent as ``Authorization: Bearer``); a
            missing variable sends no header (local servers need none).
        max_new_tokens: ``max_tokens`` of the request.
        timeout: seconds for each whole request (connect, send, the reply's headers and body); an attempt past
            it is a retryable failure.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", max_new_tokens: int = 512,
                 timeout: float = 120.0) -> None:
        if not base_url:
            raise ValueError("base_url is empty: give the server's address, e.g. http://127.0.0.1:8000/v1")
        if not model:
            raise ValueError(f"model is empty: give the model name the server at {base_url} serves")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.max_new_tokens = int(max_new_tokens)
        self.timeout = float(timeout)

    def identity(self) -> dict:
        return {"backend": "openai", "url": self.url, "model": self.model, "max_new_tokens": self.max_new_tokens}

    def complete(self, messages: Messages) -> str:
        body = json.dumps({"model": self.model, "messages": [dict(m) for m in messages], "temperature": 0,
                           "max_tokens": self.max_new_tokens}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with _open(request, self.timeout) as response:
                raw = _read_body(response)
        except urllib.error.HTTPError as err:
            try:
                detail = err.read(300).decode("utf-8", "replace").strip()
            except (OSError, http.client.HTTPException):  # the error body itself broke off: the status says enough
                detail = ""
            retry = err.code == 429 or err.code >= 500
            raise ChatError(f"POST {self.url} answered HTTP {err.code}: {' '.join(detail.split()) or err.reason}",
                            retryable=retry, status=err.code) from None
        except ValueError as err:  # too large: the same request would get the same reply
            raise ChatError(f"POST {self.url}: {err}") from None
        except (OSError, http.client.HTTPException) as err:
            # every transport failure (refused, reset, hung up, cut short, past the deadline) may pass on a retry
            raise ChatError(f"POST {self.url} failed: {_why(err, self.timeout)}", retryable=True) from None
        try:
            content = loads_bounded(raw, max_chars=MAX_REPLY_BYTES)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            snippet = raw[:200].decode("utf-8", "replace")
            raise ChatError(f"POST {self.url}: the reply is not an OpenAI chat completion "
                            f"(no choices[0].message.content): {snippet!r}") from None
        return content if isinstance(content, str) else ""


class LocalChat(ChatBackend):
    """A transformers checkpoint in a local folder, text-only and greedy.

    Requests are served one batch at a time under a lock (the model is not thread-safe); the runner's
    ``concurrency`` then only overlaps the bookkeeping, so 1 is the sensible setting.

    Args:
        path: the checkpoint folder (``save_pretrained`` layout; nothing is downloaded).
        max_new_tokens: generation budget per reply.
        dtype: torch dtype name for the weights (``float32`` on CPU; ``bfloat16`` on a GPU).
        device: ``cpu``, ``cuda``, ...; default cuda when available.
    """

    def __init__(self, path: str | Path, max_new_tokens: int = 512, dtype: str = "auto", device: str | None = None):
        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise ValueError(f"path={path}: no config.json there; give a local transformers checkpoint folder")
        self.max_new_tokens = int(max_new_tokens)
        self.dtype = dtype
        self.device = device
        self._lock = threading.Lock()
        self._model = None
        self._processor = None

    def identity(self) -> dict:
        return {"backend": "local", "path": str(self.path.resolve()), "max_new_tokens": self.max_new_tokens}

    def _load(self) -> None:
        try:
            self._load_checkpoint()
        except (OSError, ValueError, KeyError, ImportError) as err:
            raise ValueError(f"path={self.path}: cannot load this checkpoint with transformers: {err}") from None

    def _load_checkpoint(self) -> None:
        import torch
        import transformers

        config = transformers.AutoConfig.from_pretrained(self.path, local_files_only=True)
        vision = type(config) in transformers.AutoModelForImageTextToText._model_mapping  # a VL model: its own class
        auto = transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM
        dtype = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._model = auto.from_pretrained(self.path, local_files_only=True, dtype=dtype).to(device).eval()
        try:
            self._processor = transformers.AutoProcessor.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError, TypeError):
            self._processor = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)

    @property
    def tokenizer(self):
        return getattr(self._processor, "tokenizer", self._processor)

    def _prompt(self, messages: Messages) -> str:
        # VL chat templates expect content parts; a text-only model's template takes plain strings
        plain = [{"role": m["role"], "content": str(m["content"])} for m in messages]
        parts = [{"role": m["role"], "content": [{"type": "text", "text": str(m["content"])}]} for m in messages]
        for shaped in ((parts, plain) if self._processor is not self.tokenizer else (plain, parts)):
            try:
                return self._processor.apply_chat_template(shaped, tokenize=False, add_generation_prompt=True)
            except (TypeError, ValueError, KeyError):
                continue
        raise ChatError(f"the chat template of {self.path} cannot render a text-only conversation")

    def complete_batch(self, batch: Sequence[Messages]) -> list[str]:
        """Greedy replies to several conversations in one left-padded ``generate`` call."""
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            tokenizer = self.tokenizer
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            texts = [self._prompt(m) for m in batch]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            inputs = {k: v.to(self._model.device) for k, v in inputs.items()}
            with torch.no_grad():
                out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id)
            new = out[:, inputs["input_ids"].shape[1]:]
            return [tokenizer.decode(row, skip_special_tokens=True) for row in new]

    def complete(self, messages: Messages) -> str:
        return self.complete_batch([messages])[0]


PREFIXES = ("judge.", "teacher.")


def backend_from_options(options: Mapping[str, object], where: str) -> ChatBackend:
    """The backend named by ``path=`` (local) or ``base_url=`` + ``model=`` (endpoint) in ``options``.

    Args:
        options: keys without their ``judge.``/``teacher.`` prefix: path, base_url, model, api_key_env,
            max_new_tokens, timeout, dtype, device.
        where: the option prefix for error messages (``judge`` / ``teacher``).
    """
    path, base_url = options.get("path"), options.get("base_url")
    if bool(path) == bool(base_url):
        raise ValueError(f"give exactly one of {where}.path=DIR (a local checkpoint) or {where}.base_url=URL "
                         f"{where}.model=NAME (an OpenAI-compatible server)")
    tokens = int(options.get("max_new_tokens") or 512)
    if path:
        return LocalChat(str(path), max_new_tokens=tokens, dtype=str(options.get("dtype") or "auto"),
                         device=options.get("device") or None)
    return OpenAIChat(str(base_url), str(options.get("model") or ""),
                      api_key_env=str(options.get("api_key_env") or "OPENAI_API_KEY"), max_new_tokens=tokens,
                      timeout=float(options.get("timeout") or 120.0))
