"""One small, idempotent wrapper over the Kubernetes REST API for every kind the operator touches.

Creating what exists is success (409 → fetch it), deleting what is gone is success (404), and
transient answers (429, 5xx, connection errors) become ``kopf.TemporaryError`` so kopf retries the
handler after a short delay instead of the handler sleeping.
"""

from __future__ import annotations

import json
from typing import Any

import kopf
import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

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


def make_api_client() -> client.ApiClient:
    """In a pod: the service account. Elsewhere: the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


def path(api_version: str, kind: str, namespace: str, name: str = "", subresource: str = "") -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [prefix, "namespaces", namespace, PLURALS[(api_version, kind)], name, subresource]
    return "/".join(p for p in parts if p)


class Kube:
    """The operator's view of the API: a handful of verbs, all idempotent."""

    def __init__(self, api: client.ApiClient):
        self.api = api

    def _call(
        self,
        method: str,
        url: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        try:
            response = self.api.call_api(
                url,
                method,
                query_params=query or [],
                body=body,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=30,
            )
            data = response[0].data if isinstance(response, tuple) else response.data
            return json.loads(data) if data else None
        except ApiException as error:
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
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def list(
        self, api_version: str, kind: str, namespace: str, field_selector: str = ""
    ) -> list[dict[str, Any]]:
        query = [("fieldSelector", field_selector)] if field_selector else []
        answer = self._call("GET", path(api_version, kind, namespace), query=query) or {}
        return list(answer.get("items") or [])

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create body, or return the object of that name that already exists."""
        meta = body["metadata"]
        url = path(body["apiVersion"], body["kind"], meta["namespace"])
        try:
            created = self._call("POST", url, body)
        except ApiException as error:
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
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            self._call("DELETE", path(api_version, kind, namespace, name), body)
        except ApiException as error:
            if error.status != 404:
                raise
