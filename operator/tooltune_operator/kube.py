"""One small, idempotent wrapper over the Kubernetes REST API for every kind the operator touches.

Creating what exists is success (409 → fetch it), deleting what is gone is success (404), and
transient answers (429, 5xx, connection errors) become ``kopf.TemporaryError`` so kopf retries the
handler after a short delay instead of the handler sleeping.

It speaks HTTP through urllib3 with the credentials kopf logs in with (``login``): the operator image has
no kubernetes client, which kopf imports whenever it is installed (40 MB of generated models, a third of
the operator's memory). A 401 logs in again once, as kopf does: service-account tokens rotate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.parse
from collections.abc import Callable
from typing import Any

import kopf
import urllib3
import yaml

from tooltune_operator import kueue

# apiVersion/kind → plural, for the kinds the operator creates, reads or patches.
PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Pod"): "pods",
    ("v1", "Service"): "services",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("v1", "Event"): "events",
    ("batch/v1", "Job"): "jobs",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("tooltune.dev/v1alpha1", "ToolTuneJob"): "tooltunejobs",
    **{(version, "Workload"): "workloads" for version in kueue.API_VERSIONS},
}
RETRY_DELAY_SECONDS = 2.0


class ApiError(Exception):
    """An answer of the API server other than 2xx: its status, reason and body (a Status object)."""

    def __init__(self, status: int, reason: str, body: str):
        super().__init__(f"{status} {reason}: {body[:300]}")
        self.status, self.reason, self.body = status, reason, body


def login(**kwargs: Any) -> kopf.ConnectionInfo:
    """In a pod its service account (at the API address the kubelet gives every pod), elsewhere the
    kubeconfig (KUBECONFIG or ~/.kube/config), as kopf reads them. A kubeconfig user that runs a program
    for its token (``exec``, ``auth-provider``: EKS, GKE, OIDC) goes through the kubernetes client, which
    runs it, when that is installed."""
    info = kopf.login_with_service_account(**kwargs)
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if info is not None and host and port:  # the kubelet's address of the API, as client libraries use it
        info = dataclasses.replace(info, server=f"https://{f'[{host}]' if ':' in host else host}:{port}")
    if info is None and needs_client_plugin():
        info = kopf.login_via_client(**kwargs)
        if info is None:
            raise kopf.LoginError(
                "the kubeconfig's user gets its token from an exec or auth-provider plugin: install the "
                "kubernetes client (pip install kubernetes) to run it, or use a kubeconfig with a token"
            )
    info = info or kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig (set KUBECONFIG)")
    return info


def needs_client_plugin() -> bool:
    """Whether the current kubeconfig user has no credentials of its own, only a plugin that makes them."""
    paths = [
        os.path.expanduser(p) for p in (os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)
    ]
    for path in (p for p in paths if p and os.path.isfile(p)):
        with open(path, encoding="utf-8") as file:
            config = yaml.safe_load(file) or {}
        context = next((c.get("context") or {} for c in config.get("contexts") or []
                        if c.get("name") == config.get("current-context")), None)  # fmt: skip
        if context is None:
            continue
        user = next((u.get("user") or {} for u in config.get("users") or []
                     if u.get("name") == context.get("user")), {})  # fmt: skip
        return bool(user.get("exec") or user.get("auth-provider"))
    return False


class Connection:
    """HTTP to one API server with kopf's credentials; logs in again on a 401 (a rotated token)."""

    def __init__(self, login: Callable[[], kopf.ConnectionInfo]):
        self.login = login
        self.connect()

    def connect(self) -> None:
        info = self.login()
        self.server = info.server.rstrip("/")
        self.headers = {"Accept": "application/json", **info.as_http_headers()}
        tls: dict[str, Any] = {}
        if self.server.startswith("https:"):
            tls = {"ssl_context": info.as_ssl_context(), "assert_hostname": False if info.insecure else None}
        self.pool = urllib3.PoolManager(maxsize=8, timeout=urllib3.Timeout(total=30), retries=False, **tls)

    def request(self, method: str, url: str, body: Any = None, content_type: str = "application/json") -> Any:
        """The answer's JSON (None if empty); ApiError for any answer but 2xx."""
        payload = None if body is None else json.dumps(body).encode()
        response = self.send(method, url, payload, content_type)
        if response.status == 401:  # a rotated token: log in again, once
            self.connect()
            response = self.send(method, url, payload, content_type)
        if response.status >= 300:
            raise ApiError(response.status, response.reason or "", response.data.decode(errors="replace"))
        return json.loads(response.data) if response.data else None

    def send(self, method: str, url: str, payload: bytes | None, content_type: str) -> Any:
        headers = {**self.headers, "Content-Type": content_type}
        return self.pool.request(method, self.server + url, body=payload, headers=headers)


def path(api_version: str, kind: str, namespace: str, name: str = "", subresource: str = "") -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [prefix, "namespaces", namespace, PLURALS[(api_version, kind)], name, subresource]
    return "/".join(p for p in parts if p)


class Kube:
    """The operator's view of the API: a handful of verbs, all idempotent."""

    def __init__(self, connection: Connection):
        self.connection = connection

    def _call(self, method: str, url: str, body: Any = None, content_type: str = "application/json") -> Any:
        try:
            return self.connection.request(method, url, body, content_type)
        except ApiError as error:
            if error.status == 429 or error.status >= 500:
                raise kopf.TemporaryError(
                    f"API answered {error.status} to {method} {url}", delay=RETRY_DELAY_SECONDS
                ) from error
            raise
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise kopf.TemporaryError(
                f"API unreachable for {method} {url}: {error}", delay=RETRY_DELAY_SECONDS
            ) from error

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", path(api_version, kind, namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def list(
        self, api_version: str, kind: str, namespace: str, field_selector: str = ""
    ) -> list[dict[str, Any]]:
        query = "?" + urllib.parse.urlencode({"fieldSelector": field_selector}) if field_selector else ""
        answer = self._call("GET", path(api_version, kind, namespace) + query) or {}
        return list(answer.get("items") or [])

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create body, or return the object of that name that already exists."""
        meta = body["metadata"]
        url = path(body["apiVersion"], body["kind"], meta["namespace"])
        try:
            created = self._call("POST", url, body)
        except ApiError as error:
            if error.status != 409:
                raise
            created = None
        # Some servers answer a create without the object; fetching it keeps callers simple.
        if not created or "metadata" not in created or "uid" not in created.get("metadata", {}):
            created = self.get(body["apiVersion"], body["kind"], meta["namespace"], meta["name"])
        return created or body

    def patch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        body: dict[str, Any],
        subresource: str = "",
    ) -> dict[str, Any] | None:
        try:
            return self._call(
                "PATCH",
                path(api_version, kind, namespace, name, subresource),
                body,
                content_type="application/merge-patch+json",
            )
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            self._call("DELETE", path(api_version, kind, namespace, name), body)
        except ApiError as error:
            if error.status != 404:
                raise
