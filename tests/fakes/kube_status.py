"""A stand-in for the one Kubernetes call a trainer pod makes: merge patches on a ToolTuneJob's status.

Enough for a subprocess's StatusReporter (kubernetes client, configured through KUBECONFIG) to report
to something a test can read; the full API emulator lives in tests/harness.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

STATUS_PATH = re.compile(r"^/apis/tooltune\.dev/v1alpha1/namespaces/([^/]+)/tooltunejobs/([^/]+)/status$")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


class StatusRecorder:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []  # bodies as received
        self.statuses: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> merged status
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self.statuses.get((namespace, name), {})))

    def start(self) -> StatusRecorder:
        handler = type("Handler", (_Handler,), {"recorder": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-kube-status", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> StatusRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the recorder first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def write_kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        return path


class _Handler(BaseHTTPRequestHandler):
    recorder: StatusRecorder
    protocol_version = "HTTP/1.1"

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        match = STATUS_PATH.match(self.path.split("?")[0])
        if match is None:
            self._answer(404, {"kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound"})
            return
        key = (match.group(1), match.group(2))
        with self.recorder._lock:
            self.recorder.patches.append(body)
            status = merge_patch(self.recorder.statuses.get(key, {}), body.get("status", {}))
            self.recorder.statuses[key] = status
        self._answer(
            200,
            {
                "apiVersion": "tooltune.dev/v1alpha1",
                "kind": "ToolTuneJob",
                "metadata": {"namespace": key[0], "name": key[1]},
                "status": status,
            },
        )

    def _answer(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass
