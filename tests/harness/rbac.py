"""RBAC as the API server enforces it, for requests made as a ServiceAccount.

A request whose bearer token is ``system:serviceaccount:<namespace>:<name>`` (write one into a kubeconfig
with `serviceaccount_kubeconfig`) is authorized against the Roles, ClusterRoles, RoleBindings and
ClusterRoleBindings stored in the emulator, as the API server's RBAC authorizer does: a ClusterRoleBinding
grants its role everywhere, a RoleBinding grants its Role or ClusterRole in its own namespace. A request
nothing grants is refused with 403 and the API server's message. Creating or updating a Role or
ClusterRole, or binding one, needs every permission it grants (the API server's escalation check).
Any other token (the harness's own ``test-token``) is an administrator, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

SA_PREFIX = "system:serviceaccount:"
RBAC = "rbac.authorization.k8s.io/v1/"
ROLES, CLUSTER_ROLES = RBAC + "roles", RBAC + "clusterroles"
ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS = RBAC + "rolebindings", RBAC + "clusterrolebindings"
Lister = Callable[[str], list[dict[str, Any]]]  # resource key → stored objects


def serviceaccount(headers: Any) -> tuple[str, str] | None:
    """(namespace, name) of the ServiceAccount a request is made as, None for an administrator."""
    token = (headers.get("Authorization") or "").removeprefix("Bearer ").strip()
    if not token.startswith(SA_PREFIX):
        return None
    namespace, _, name = token.removeprefix(SA_PREFIX).partition(":")
    return namespace, name


def verb_of(method: str, name: str | None, watch: bool) -> str:
    method = method.upper()
    if method == "GET":
        return "watch" if watch else "get" if name else "list"
    if method == "DELETE":
        return "delete" if name else "deletecollection"
    return {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method, method.lower())


def rules_for(objects: Lister, account: tuple[str, str], namespace: str | None) -> list[dict[str, Any]]:
    """Every rule granted to the account: cluster-wide ones, and those bound in namespace."""

    def bound(binding: dict[str, Any]) -> bool:
        return any(
            subject.get("kind") == "ServiceAccount"
            and (subject.get("namespace"), subject.get("name")) == account
            for subject in binding.get("subjects") or []
        )

    def role(kind: str, name: str, in_namespace: str | None) -> dict[str, Any]:
        stored = objects(CLUSTER_ROLES if kind == "ClusterRole" else ROLES)
        for obj in stored:
            meta = obj["metadata"]
            if meta["name"] == name and (kind == "ClusterRole" or meta.get("namespace") == in_namespace):
                return obj
        return {}

    rules: list[dict[str, Any]] = []
    for binding in objects(CLUSTER_ROLE_BINDINGS):
        if bound(binding):
            rules += role("ClusterRole", binding["roleRef"]["name"], None).get("rules") or []
    if namespace:
        for binding in objects(ROLE_BINDINGS):
            if binding["metadata"].get("namespace") == namespace and bound(binding):
                ref = binding["roleRef"]
                rules += role(ref["kind"], ref["name"], namespace).get("rules") or []
    return rules


def grants(rules: Iterable[dict[str, Any]], verb: str, group: str, resource: str, name: str | None) -> bool:
    for rule in rules:
        if not ({"*", verb} & set(rule.get("verbs") or [])):
            continue
        if not ({"*", group} & set(rule.get("apiGroups") or [])):
            continue
        if not ({"*", resource} & set(rule.get("resources") or [])):
            continue
        names = rule.get("resourceNames") or []
        if names and (name is None or name not in names):
            continue
        return True
    return False


def forbidden(account: tuple[str, str], verb: str, group: str, resource: str, namespace: str | None,
              name: str | None) -> str:  # fmt: skip
    """The API server's message for a refused request."""
    plural = resource.split("/")[0]
    what = f"{plural}.{group}" if group else plural
    subject = f'{what} "{name}"' if name else what
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    user = f"{SA_PREFIX}{account[0]}:{account[1]}"
    return (
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group "{group}" '
        f"{where}"
    )


def escalation(objects: Lister, account: tuple[str, str], obj: dict[str, Any]) -> str | None:
    """Why the account may not create a Role/ClusterRole, or a binding to one, that grants more than it
    holds itself (None when it may)."""
    namespace = (obj.get("metadata") or {}).get("namespace")
    if obj.get("kind") in {"Role", "ClusterRole"}:
        granted = obj.get("rules") or []
    else:
        ref = obj.get("roleRef") or {}
        key = CLUSTER_ROLES if ref.get("kind") == "ClusterRole" else ROLES
        matches = [
            o for o in objects(key)
            if o["metadata"]["name"] == ref.get("name")
            and (ref.get("kind") == "ClusterRole" or o["metadata"].get("namespace") == namespace)
        ]  # fmt: skip
        granted = (matches[0].get("rules") or []) if matches else []
    held = rules_for(objects, account, namespace)
    for rule in granted:
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    if not grants(held, verb, group, resource, None):
                        return (
                            "attempting to grant RBAC permissions not currently held: "
                            f'{{APIGroups:["{group}"], Resources:["{resource}"], Verbs:["{verb}"]}}'
                        )
    return None


def serviceaccount_token(namespace: str, name: str) -> str:
    return f"{SA_PREFIX}{namespace}:{name}"


def serviceaccount_kubeconfig(path: Path, server: str, namespace: str, name: str) -> Path:
    """A kubeconfig that makes requests as the ServiceAccount, as its mounted token would in a pod."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": name, "user": {"token": serviceaccount_token(namespace, name)}}],
        "contexts": [
            {"name": "sa", "context": {"cluster": "emulator", "user": name, "namespace": namespace}}
        ],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path
