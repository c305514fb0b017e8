"""The operator's own HTTP to the API server: kopf's login, the token a 401 renews, errors as the API
server's status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from tooltune_operator import kube

from tests.harness.operator_process import REPO, as_in_the_image


def kubeconfig(path: Path, user: dict[str, Any]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u", "namespace": "team"}}],
        "current-context": "ctx",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_login_reads_a_token_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "config", {"token": "t0k3n"})))
    info = kube.login(settings=kopf.OperatorSettings(), logger=None)
    assert (info.server, info.token, info.default_namespace) == ("http://127.0.0.1:1", "t0k3n", "team")
    assert info.as_http_headers() == {"Authorization": "Bearer t0k3n"}


@pytest.mark.parametrize(
    ("host", "server"), [("10.96.0.1", "https://10.96.0.1:443"), ("fd00::1", "https://[fd00::1]:443")]
)
def test_in_a_pod_the_api_is_where_the_kubelet_says(
    monkeypatch: pytest.MonkeyPatch, host: str, server: str
) -> None:
    """kopf's service-account login names https://kubernetes.default.svc; the pod's environment has the
    address itself (no cluster DNS needed), as client libraries use it. kopf's reading of the token file is
    replaced here: this machine is not a pod."""
    account = kopf.ConnectionInfo(
        server="https://kubernetes.default.svc", token="sa-token", ca_path="/ca.crt"
    )
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    info = kube.login(settings=kopf.OperatorSettings(), logger=None)
    assert (info.server, info.token, info.ca_path) == (server, "sa-token", "/ca.crt")


def test_an_exec_plugin_user_without_the_kubernetes_client_says_what_to_install(tmp_path: Path) -> None:
    """As in the operator image: the kubernetes client is not there to run the plugin (aws eks get-token)."""
    plugin = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws", "args": ["eks"]}}
    config = kubeconfig(tmp_path / "config", plugin)
    code = as_in_the_image() + (
        "import kopf\nfrom tooltune_operator import kube\n"
        "kube.login(settings=kopf.OperatorSettings(), logger=None)\n"
    )
    env = {
        **os.environ,
        "KUBECONFIG": str(config),
        "PYTHONPATH": f"{REPO / 'api'}{os.pathsep}{REPO / 'operator'}",
    }
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "LoginError" in result.stderr and "exec or auth-provider plugin" in result.stderr
    assert "pip install kubernetes" in result.stderr


class Server(ThreadingHTTPServer):
    token = "new"
    seen: list[tuple[str, str, str]]


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self.server.seen.append(("GET", self.path, self.headers.get("Authorization", "")))
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self.answer(
                401, {"kind": "Status", "code": 401, "reason": "Unauthorized", "message": "Unauthorized"}
            )
        elif self.path.endswith("/missing"):
            self.answer(
                404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": '"missing" not found'}
            )
        else:
            self.answer(200, {"kind": "ConfigMap", "metadata": {"name": self.path.rsplit("/", 1)[-1]}})

    def answer(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def test_a_401_logs_in_again_once_and_retries(server: Server) -> None:
    """A service account token rotates under a running operator: the next request gets a 401."""
    tokens = iter(["old", "new"])
    url = f"http://127.0.0.1:{server.server_address[1]}"
    connection = kube.Connection(lambda: kopf.ConnectionInfo(server=url, token=next(tokens)))
    got = kube.Kube(connection).get("v1", "ConfigMap", "default", "contract")
    assert got == {"kind": "ConfigMap", "metadata": {"name": "contract"}}
    assert [auth for *_, auth in server.seen] == ["Bearer old", "Bearer new"]
    assert kube.Kube(connection).get("v1", "ConfigMap", "default", "missing") is None  # 404: gone, no error


def test_a_refusal_carries_the_api_servers_status(server: Server) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}"
    connection = kube.Connection(lambda: kopf.ConnectionInfo(server=url, token="stale"))
    with pytest.raises(kube.ApiError) as refused:
        connection.request("GET", "/api/v1/namespaces/default/configmaps/x")
    assert refused.value.status == 401
    assert json.loads(refused.value.body)["reason"] == "Unauthorized"
    assert len(server.seen) == 2  # the first answer and the one after logging in again
