"""A stand-in for the two Kubernetes calls a trainer pod makes: merge patches on a ToolTuneJob's status,
and Events about it.

Enough for a subprocess's StatusReporter (kubernetes client, configured through KUBECONFIG) to report
to something a test can read; the full API emulator lives in tests/harness.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import yaml

from tests.fakes.server import JsonHandler, LocalServer

STATUS_PATH = re.compile(r"^/apis/tooltune\.dev/v1alpha1/namespaces/([^/]+)/tooltunejobs/([^/]+)/status$")
EVENTS_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")


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


class StatusRecorder(LocalServer):
    def __init__(self) -> None:
        super().__init__(type("Handler", (_Handler,), {"recorder": self}), "fake-kube-status")
        self.patches: list[dict[str, Any]] = []  # bodies as received
        self.statuses: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> merged status
        self.events: list[dict[str, Any]] = []  # Event bodies as created
        self._lock = threading.Lock()

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self.statuses.get((namespace, name), {})))

    @property
    def url(self) -> str:
        return self.origin

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


class _Handler(JsonHandler):
    recorder: StatusRecorder

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if EVENTS_PATH.match(self.path.split("?")[0]) is None:
            self.answer(404, {"kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound"})
            return
        with self.recorder._lock:
            self.recorder.events.append(body)
        self.answer(201, body)

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        match = STATUS_PATH.match(self.path.split("?")[0])
        if match is None:
            self.answer(404, {"kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound"})
            return
        key = (match.group(1), match.group(2))
        with self.recorder._lock:
            self.recorder.patches.append(body)
            status = merge_patch(self.recorder.statuses.get(key, {}), body.get("status", {}))
            self.recorder.statuses[key] = status
        self.answer(
            200,
            {
                "apiVersion": "tooltune.dev/v1alpha1",
                "kind": "ToolTuneJob",
                "metadata": {"namespace": key[0], "name": key[1]},
                "status": status,
            },
        )
