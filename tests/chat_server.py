"""A real HTTP server on 127.0.0.1 (port 0) that answers like an OpenAI ``/chat/completions`` endpoint.

The test gives a ``reply(request_json) -> (status, text)`` function; the server wraps ``text`` as a chat completion
when the status is 200 and sends it raw otherwise (``bytes`` are always sent raw). It records every request (body, Authorization header) and the
most requests it ever served at once, holding each for ``delay`` seconds so that concurrent ones overlap.

``reply`` may instead return a :class:`Raw`: bytes written to the socket as they are, status line included, to
misbehave like a real broken server does (trickle bytes, send a body shorter than its Content-Length, hang up).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Raw:
    """A reply written byte for byte: ``data`` holds the status line, headers and body (:func:`http_reply`).

    The ``slow`` bytes from offset ``start`` go one at a time, ``every`` seconds apart (a server that trickles);
    the rest goes at once. ``b""`` hangs up without a reply.
    """

    data: bytes
    every: float = 0.0
    slow: int = 0
    start: int = 0


def completion(text: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


def http_reply(body: bytes, length: int | None = None, status: int = 200) -> bytes:
    """A whole HTTP/1.0 response; ``length`` (the Content-Length announced) may lie about ``body``."""
    head = (f"HTTP/1.0 {status} OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n")
    return head.encode("ascii") + body


def _send_raw(wfile, raw: Raw) -> None:
    stop = raw.start + raw.slow
    try:
        wfile.write(raw.data[:raw.start])
        for offset in range(raw.start, min(stop, len(raw.data))):  # bounded: one pass over the slow bytes
            wfile.write(raw.data[offset:offset + 1])
            wfile.flush()
            time.sleep(raw.every)
        wfile.write(raw.data[stop:])
        wfile.flush()
    except OSError:  # the client gave up (its deadline): nothing left to do
        pass


class ChatServer:
    def __init__(self, reply: Callable[[dict], tuple[int, str | bytes] | Raw], delay: float = 0.02) -> None:
        self.reply = reply
        self.delay = delay
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server.lock:
                    server.requests.append(body)
                    server.auth.append(self.headers.get("Authorization"))
                    server.paths.append(self.path)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    answer = server.reply(body)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                if isinstance(answer, Raw):
                    self.close_connection = True
                    _send_raw(self.wfile, answer)
                    return
                status, text = answer
                if isinstance(text, bytes):  # a raw body (e.g. not JSON at all)
                    payload = text
                else:
                    payload = (json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                                "content": text}}]})
                               if status == 200 else text).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def user_texts(self) -> list[str]:
        return [r["messages"][-1]["content"] for r in self.requests]
