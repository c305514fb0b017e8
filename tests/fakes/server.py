"""What the fake HTTP services share: a threaded localhost server and a handler that answers JSON."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

HOST = "127.0.0.1"


class LocalServer:
    """Serves `handler` (a BaseHTTPRequestHandler subclass) on a free localhost port in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str):
        self.handler = handler
        self.name = name
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Self:
        self._server = ThreadingHTTPServer((HOST, 0), self.handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        assert self._server is not None, f"start() the {self.name} server first"
        return f"http://{HOST}:{self._server.server_port}"


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, code: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass
