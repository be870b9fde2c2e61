"""A real HTTP server on 127.0.0.1 (port 0) that answers like an OpenAI ``/chat/completions`` endpoint.

The test gives a ``reply(request_json) -> (status, text)`` function; the server wraps ``text`` as a chat completion
when the status is 200 and sends it raw otherwise (``bytes`` are always sent raw). It records every request (body, Authorization header) and the
most requests it ever served at once, holding each for ``delay`` seconds so that concurrent ones overlap.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    def __init__(self, reply: Callable[[dict], tuple[int, str]], delay: float = 0.02) -> None:
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
                    status, text = server.reply(body)
                finally:
                    with server.lock:
                        server.in_flight -= 1
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
