"""An in-memory Kubernetes API for tests: kmock's KubernetesEmulator with the semantics kopf and kubectl need.

kmock 0.8 serves discovery and stores objects verbatim. This subclass keeps its own store and adds what
real clients rely on:

- ``metadata.resourceVersion`` (one cluster-wide counter), ``uid``, ``creationTimestamp``, ``namespace``,
  ``generation`` (bumped when anything but metadata and status changes), ``generateName``;
- the status subresource split: for resources that declare it, writes to the object ignore ``status`` and
  writes to ``/status`` change only ``status``;
- merge patches (strategic merge is treated as JSON merge), JSON patches (a failed ``test`` is 422),
  PUT (replace, 409 on a stale resourceVersion), no-op patches that do not bump the resourceVersion;
- finalizers and ``deletionTimestamp``; ``propagationPolicy: Orphan`` (the API's default for batch/v1 Jobs)
  strips the owner references of dependents; cascading deletion is the test kubelet's garbage collector;
- LIST with ``kind: <Kind>List``, the current resourceVersion, equality/set label selectors and
  ``metadata.name``/``metadata.namespace`` field selectors; WATCH that resumes after ``?resourceVersion=``
  (events are kept for the emulator's lifetime), honours ``timeoutSeconds`` and ``sendInitialEvents``;
- the meta.k8s.io Table format for ``kubectl get`` (printer columns from the CRD file);
- what a real API server refuses in names, labels and Job updates (tests/harness/validation.py);
- Secrets' ``stringData`` folded into base64 ``data``; Job validation of restartPolicy; the CRD's structural
  defaults and pruning of unknown fields for ToolTuneJobs (tests/harness/crd_schema.py);
- Namespace objects (kmock reads /api/v1/namespaces/<name> as a namespace); deleting a namespace deletes
  its objects; ``kubectl logs`` from the test kubelet's log files.

- RBAC for requests made as a ServiceAccount, from the stored Roles and bindings (tests/harness/rbac.py).

Not emulated: admission (the CRD's openAPIV3Schema is checked by tests/unit/test_crd_schema.py),
server-side apply, ``dryRun`` (refused with 400), protobuf bodies (kubectl's imperative
``create <kind>`` sends them: use ``apply -f``), OpenAPI documents (so ``kubectl apply --validate=false``),
``limit``/``continue`` paging, namespaces' existence on create, graceful pod deletion (pods go at once;
the kubelet then stops the process).
What is served is declared in `RESOURCES` (a CustomResourceDefinition posted to the emulator is stored,
not served); `serve` adds a resource to one emulator, as installing its CRD does (tests/harness/kueue.py).
`admission_hooks` play mutating webhooks: each sees every object created or updated before it is stored.
kmock's ``emulator.objects`` stays empty: read the store with `get_object`/`list_objects`.
Everything runs on the emulator's event loop; other threads go through `RunningCluster` (``call``, ``get``,
``list``, ``create``, ``patch``, ``delete``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import datetime
import itertools
import json
import pickle
import random
import re
import string
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import rendering

from tests.harness import crd_schema, rbac, tables, validation

T = TypeVar("T")

ALL_VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}
STARTUP_TIMEOUT = 10.0
DEFAULT_WATCH_SECONDS = 300.0  # a watch without timeoutSeconds ends after this; clients reconnect
DISCONNECT_CHECK_SECONDS = 1.0  # how often an idle watch checks that its client is still there
NAME_SUFFIX_LENGTH = 5
# generateName suffixes from the OS, not the global `random`: code under test in this process reseeds that
# (transformers' set_seed), and two Events named alike would then collide with 409 AlreadyExists.
_NAME_SUFFIXES = random.SystemRandom()
ORPHAN = "Orphan"


def _info(
    kind: str,
    *,
    namespaced: bool = True,
    status: bool = False,
    short: tuple[str, ...] = (),
    categories: tuple[str, ...] = (),
) -> kmock.ResourceInfo:
    return kmock.ResourceInfo(
        kind=kind,
        singular=kind.lower(),
        namespaced=namespaced,
        verbs=set(ALL_VERBS),
        subresources={"status"} if status else set(),
        shortnames=set(short),
        categories=set(categories),
    )


# What the emulated cluster serves: group/version/plural → discovery info.
RESOURCES: dict[str, kmock.ResourceInfo] = {
    "tooltune.dev/v1alpha1/tooltunejobs": _info(
        "ToolTuneJob", status=True, short=("ttj",), categories=("all", "tooltune")
    ),
    "batch/v1/jobs": _info("Job", status=True, categories=("all",)),
    "v1/pods": _info("Pod", status=True, short=("po",), categories=("all",)),
    "v1/configmaps": _info("ConfigMap", short=("cm",)),
    "v1/secrets": _info("Secret"),
    "v1/services": _info("Service", status=True, short=("svc",), categories=("all",)),
    "v1/persistentvolumeclaims": _info("PersistentVolumeClaim", status=True, short=("pvc",)),
    "v1/serviceaccounts": _info("ServiceAccount", short=("sa",)),
    "v1/events": _info("Event", short=("ev",)),
    "v1/namespaces": _info("Namespace", namespaced=False, status=True, short=("ns",)),
    "events.k8s.io/v1/events": _info("Event", short=("ev",)),
    "coordination.k8s.io/v1/leases": _info("Lease"),
    "apps/v1/deployments": _info("Deployment", status=True, short=("deploy",), categories=("all",)),
    "rbac.authorization.k8s.io/v1/roles": _info("Role"),
    "rbac.authorization.k8s.io/v1/rolebindings": _info("RoleBinding"),
    "rbac.authorization.k8s.io/v1/clusterroles": _info("ClusterRole", namespaced=False),
    "rbac.authorization.k8s.io/v1/clusterrolebindings": _info("ClusterRoleBinding", namespaced=False),
    "apiextensions.k8s.io/v1/customresourcedefinitions": _info(
        "CustomResourceDefinition", namespaced=False, status=True, short=("crd", "crds")
    ),
}

# Well-known resource shortcuts for tests: TTJ, JOBS, PODS... are keys of RESOURCES.
TTJ = "tooltune.dev/v1alpha1/tooltunejobs"
JOBS = "batch/v1/jobs"
PODS = "v1/pods"
CONFIGMAPS = "v1/configmaps"
SECRETS = "v1/secrets"
SERVICES = "v1/services"
EVENTS = "v1/events"
NAMESPACES = "v1/namespaces"


def resource_key(resource: Any) -> str:
    """``group/version/plural`` of a kmock resource (core group: ``v1/plural``)."""
    group, version, plural = resource.group, resource.version, resource.plural
    return f"{group}/{version}/{plural}" if group else f"{version}/{plural}"


def api_version_of(key: str) -> str:
    return key.rsplit("/", 1)[0]


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """A Kubernetes API failure, rendered as a v1 Status."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
        }


def not_found(key: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{key.rsplit("/", 1)[-1]} "{name}" not found')


# ---------------------------------------------------------------- selectors


def parse_label_selector(selector: str | None) -> list[tuple[str, str, set[str]]]:
    """``a=b,c!=d,e,!f,g in (x,y),h notin (z)`` → [(key, op, values)]; raises ValueError on anything else."""
    requirements: list[tuple[str, str, set[str]]] = []
    if not selector:
        return requirements
    parts, depth, current = [], 0, ""
    for char in selector:  # split on commas outside parentheses
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    for raw in (part.strip() for part in parts):
        if " notin " in raw or " in " in raw:
            op = "notin" if " notin " in raw else "in"
            key, values = raw.split(f" {op} ", 1)
            requirements.append((key.strip(), op, {v.strip() for v in values.strip("() ").split(",")}))
        elif "!=" in raw:
            key, value = raw.split("!=", 1)
            requirements.append((key.strip(), "!=", {value.strip()}))
        elif "=" in raw:
            key, value = raw.replace("==", "=").split("=", 1)
            requirements.append((key.strip(), "=", {value.strip()}))
        elif raw.startswith("!"):
            requirements.append((raw[1:].strip(), "!exists", set()))
        elif raw and all(c.isalnum() or c in "-_./" for c in raw):
            requirements.append((raw, "exists", set()))
        else:
            raise ValueError(f"unable to parse requirement {raw!r} in label selector {selector!r}")
    return requirements


def labels_match(labels: dict[str, str], requirements: list[tuple[str, str, set[str]]]) -> bool:
    for key, op, values in requirements:
        value = labels.get(key)
        ok = {
            "=": value in values,
            "in": value in values,
            "!=": value not in values,
            "notin": value not in values,
            "exists": key in labels,
            "!exists": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def parse_field_selector(selector: str | None) -> list[tuple[str, bool, str]]:
    """``a.b=x,c!=y`` → [(path, equal, value)]. Any field path is accepted (the API allows a few per kind)."""
    requirements = []
    for raw in filter(None, (selector or "").split(",")):
        equal = "!=" not in raw
        key, _, value = raw.replace("!=", "=").replace("==", "=").partition("=")
        if not key or not _:
            raise ValueError(f"invalid field selector {raw!r}: expected <field>=<value> or <field>!=<value>")
        requirements.append((key.strip(), equal, value.strip()))
    return requirements


def field_value(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class Query:
    """Which objects a LIST or WATCH selects."""

    namespace: str | None = None
    labels: list[tuple[str, str, set[str]]] = field(default_factory=list)
    fields: list[tuple[str, bool, str]] = field(default_factory=list)

    @classmethod
    def from_params(cls, namespace: str | None, params: dict[str, str]) -> Query:
        try:
            return cls(
                namespace,
                parse_label_selector(params.get("labelSelector")),
                parse_field_selector(params.get("fieldSelector")),
            )
        except ValueError as error:
            raise ApiError(400, "BadRequest", str(error)) from None

    def matches(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if any((field_value(obj, path) == value) != equal for path, equal, value in self.fields):
            return False
        return labels_match(meta.get("labels") or {}, self.labels)


# ---------------------------------------------------------------- copying and patching


def clone(value: T) -> T:
    """A deep copy of the store's JSON data: a pickle round trip is several times faster than `copy.deepcopy`,
    which every read and write of the store pays for."""
    try:
        return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
    except (pickle.PicklingError, TypeError, AttributeError):
        return copy.deepcopy(value)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch; keys starting with ``$`` (strategic-merge directives) are dropped."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_patch(body: dict[str, Any], patch: Any) -> dict[str, Any]:
    if isinstance(patch, list):
        try:
            return jsonpatch.apply_patch(clone(body), patch, in_place=True)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as error:
            raise ApiError(
                422, "Invalid", f"the server rejected our request due to an error in our request: {error}"
            ) from None
    if isinstance(patch, dict):
        return merge_patch(body, patch)
    raise ApiError(400, "BadRequest", "a patch must be a JSON object (merge patch) or a list (JSON patch)")


def select_job_pods(job: dict[str, Any]) -> None:
    """What the API server adds to a new Job: the selector and the labels its pods carry."""
    spec, meta = job.setdefault("spec", {}), job["metadata"]
    if spec.get("manualSelector"):
        return
    labels = {
        "batch.kubernetes.io/controller-uid": meta["uid"],
        "batch.kubernetes.io/job-name": meta["name"],
        "controller-uid": meta["uid"],
        "job-name": meta["name"],
    }
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": meta["uid"]}}
    template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
    template_meta["labels"] = {**(template_meta.get("labels") or {}), **labels}


def _essence(obj: dict[str, Any]) -> dict[str, Any]:
    """What `metadata.generation` tracks: everything but metadata and status."""
    return {key: value for key, value in obj.items() if key not in {"metadata", "status"}}


# ---------------------------------------------------------------- the emulator


@dataclass
class WatchEvent:
    resource_version: int
    resource: str
    type: str
    object: dict[str, Any]  # never changed once published: every watcher shares it
    _line: bytes | None = field(default=None, repr=False)

    def line(self) -> bytes:
        """The event as one line of a watch stream, encoded once however many watchers send it."""
        if self._line is None:
            self._line = json.dumps({"type": self.type, "object": self.object}).encode() + b"\n"
        return self._line


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with a store that behaves like an API server for kopf, kubectl and the kubelet."""

    printer_columns: dict[str, list[dict[str, Any]]] = attrs.field(factory=dict)
    schemas: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # resource → openAPIV3Schema
    pod_logs: Callable[[str, str], str] | None = None  # (name, namespace) → log text: `kubectl logs`
    _store: dict[tuple[str, str | None, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    # The same objects by resource, so that a LIST reads only its own kind.
    _by_resource: collections.defaultdict[str, dict[tuple[str, str | None, str], dict[str, Any]]] = (
        attrs.field(factory=lambda: collections.defaultdict(dict), init=False)
    )
    _events: list[WatchEvent] = attrs.field(factory=list, init=False)
    _revision: int = attrs.field(default=0, init=False)
    _outcomes: dict[int, tuple[int, dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _tick: asyncio.Future[None] | None = attrs.field(default=None, init=False)
    closing: bool = attrs.field(default=False, init=False)
    watches_started: int = attrs.field(default=0, init=False)  # how many watch requests were served
    # Requests served, by kind: "create tooltunejobs", "patch tooltunejobs/status", "watch pods"...
    request_counts: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _request_ids: Iterator[int] = attrs.field(factory=itertools.count, init=False)
    _own_reactions: int = attrs.field(default=0, init=False)  # kmock reactions this class registers
    served: dict[str, kmock.ResourceInfo] = attrs.field(factory=lambda: dict(RESOURCES), init=False)
    # (resource, object, created) → None: a mutating webhook's change to an object before it is stored
    admission_hooks: list[Callable[[str, dict[str, Any], bool], None]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, info in RESOURCES.items():
            self.resources[key] = info
        self.fallback[kmock.method.PUT] << self._serve_outcome
        self._own_reactions = len(self._payloads)
        self.printer_columns = {
            **tables.BUILTIN_COLUMNS,
            **tables.crd_printer_columns(),
            **self.printer_columns,
        }
        self.schemas = {TTJ: crd_schema.served_schema(crd_schema.load_crd()), **self.schemas}

    def serve(self, key: str, info: kmock.ResourceInfo) -> None:
        """Serve one more resource (group/version/plural) from now on, as a newly installed CRD is."""
        self.served[key] = self.resources[key] = info

    # ------------------------------------------------------------ the store (call on the emulator's loop)

    @property
    def revision(self) -> int:
        """The cluster's current resourceVersion."""
        return self._revision

    def get_object(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self._store.get((resource, namespace if self._namespaced(resource) else None, name))
        return clone(obj) if obj is not None else None

    def list_objects(self, resource: str, query: Query | None = None) -> list[dict[str, Any]]:
        query = query or Query()
        found = [obj for obj in self._by_resource[resource].values() if query.matches(obj)]
        return clone(
            sorted(found, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        )

    def peek_objects(self, resource: str) -> list[dict[str, Any]]:
        """The stored objects of a resource themselves, not copies, for harness code that scans the store on
        every change (the test kubelet): read them, never change them, and do not keep them across awaits."""
        return list(self._by_resource[resource].values())

    def create_object(
        self, resource: str, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        info = self._info(resource)
        obj = clone(body)
        meta = obj.setdefault("metadata", {})
        if info.namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            if meta.get("namespace", namespace) != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(
                    422,
                    "Invalid",
                    f"{info.kind}: metadata.name: Required value: name or generateName is required",
                )
            meta["name"] = validation.generated_name(
                meta["generateName"],
                "".join(_NAME_SUFFIXES.choices(string.ascii_lowercase + string.digits, k=NAME_SUFFIX_LENGTH)),
            )
        key = (resource, namespace, meta["name"])
        if key in self._store:
            raise ApiError(
                409, "AlreadyExists", f'{resource.rsplit("/", 1)[-1]} "{meta["name"]}" already exists'
            )
        if info.subresources and "status" in info.subresources and resource != NAMESPACES:
            obj.pop("status", None)
        obj["apiVersion"], obj["kind"] = api_version_of(resource), info.kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso(), generation=1)
        if resource == JOBS:
            select_job_pods(obj)
        meta.pop("deletionTimestamp", None)
        self._validate(obj)
        self._admit(resource, obj, created=True)
        return self._commit(key, obj, "ADDED")

    def patch_object(
        self, resource: str, namespace: str | None, name: str, patch: Any, *, subresource: str | None = None
    ) -> dict[str, Any]:
        """Merge patch (a dict) or JSON patch (a list), of the object or of its status subresource."""
        key, current = self._existing(resource, namespace, name)
        if isinstance(patch, dict):
            expected = (patch.get("metadata") or {}).get("resourceVersion")
            if expected is not None and expected != current["metadata"]["resourceVersion"]:
                raise self._conflict(resource, name)
        return self._write(key, current, apply_patch(current, patch), subresource)

    def replace_object(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        body: dict[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        key, current = self._existing(resource, namespace, name)
        expected = (body.get("metadata") or {}).get("resourceVersion")
        if expected and expected != current["metadata"]["resourceVersion"]:
            raise self._conflict(resource, name)
        return self._write(key, current, clone(body), subresource)

    def delete_object(
        self, resource: str, namespace: str | None, name: str, *, propagation: str | None = None
    ) -> dict[str, Any]:
        key, current = self._existing(resource, namespace, name)
        if resource == NAMESPACES:  # the namespace controller's job, done at once
            for res, obj_namespace, obj_name in [k for k in self._store if k[1] == name]:
                self.delete_object(res, obj_namespace, obj_name, propagation="Background")
        if propagation == ORPHAN or (propagation is None and resource == JOBS):
            self._orphan_dependents(current["metadata"]["uid"])
        if current["metadata"].get("finalizers"):
            if current["metadata"].get("deletionTimestamp"):
                return clone(current)
            marked = clone(current)
            marked["metadata"].update(deletionTimestamp=now_iso(), deletionGracePeriodSeconds=0)
            return self._commit(key, marked, "MODIFIED")
        return self._remove(key, current)

    async def next_change(self, timeout: float) -> None:
        """Wait until anything in the store changes (or the timeout passes)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._change_future()), timeout)

    # ------------------------------------------------------------ store internals

    def _info(self, resource: str) -> kmock.ResourceInfo:
        if resource not in self.served:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({resource})")
        return self.served[resource]

    def _namespaced(self, resource: str) -> bool:
        return bool(self._info(resource).namespaced)

    def _existing(self, resource: str, namespace: str | None, name: str) -> tuple[Any, dict[str, Any]]:
        key = (resource, namespace if self._namespaced(resource) else None, name)
        if key not in self._store:
            raise not_found(resource, name)
        return key, self._store[key]

    def _conflict(self, resource: str, name: str) -> ApiError:
        return ApiError(
            409,
            "Conflict",
            f"Operation cannot be fulfilled on {resource.rsplit('/', 1)[-1]} "
            f'"{name}": the object has been modified; please apply your changes to the latest '
            "version and try again",
        )

    def _write(self, key: Any, current: dict[str, Any], new: dict[str, Any], subresource: str | None):
        resource = key[0]
        info = self._info(resource)
        if subresource not in (None, "status") or (
            subresource == "status" and "status" not in info.subresources
        ):
            raise ApiError(
                404,
                "NotFound",
                f"the server could not find the requested resource ({resource}/{subresource})",
            )
        if subresource == "status":
            new = {**clone(current), "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif "status" in info.subresources:
            new = {k: v for k, v in new.items() if k != "status"}
            if "status" in current:
                new["status"] = clone(current["status"])
        meta = new["metadata"] = dict(new.get("metadata") or {})  # the stored object's own: never changed
        kept = ("uid", "creationTimestamp", "name", "namespace", "generation", "deletionTimestamp")
        for name in kept:
            if name in current["metadata"]:
                meta[name] = current["metadata"][name]
        new["apiVersion"], new["kind"] = current["apiVersion"], current["kind"]
        if _essence(new) != _essence(current):
            meta["generation"] = current["metadata"].get("generation", 1) + 1
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        if new == current:
            return clone(current)  # a no-op write keeps the resourceVersion, as the API server does
        self._validate(new, current)
        self._admit(resource, new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(key, new)
        return self._commit(key, new, "MODIFIED")

    @staticmethod
    def _validate(obj: dict[str, Any], current: dict[str, Any] | None = None) -> None:
        problems = validation.object_problems(obj, current)
        if problems:
            raise ApiError(422, "Invalid", validation.invalid_message(obj, problems))

    def _admit(self, resource: str, obj: dict[str, Any], created: bool = False) -> None:
        """Server-side rules clients rely on: Secret stringData, Job restartPolicy, CRD defaults, pruning;
        then the admission hooks."""
        if resource == SECRETS and "stringData" in obj:
            data = dict(obj.get("data") or {})  # a copy: the stored object may share it
            for name, value in obj.pop("stringData").items():
                data[name] = base64.b64encode(str(value).encode()).decode()
            obj["data"] = data
        if resource == JOBS:
            spec = obj.get("spec", {})
            policy = spec.get("template", {}).get("spec", {}).get("restartPolicy")
            if policy not in {"Never", "OnFailure"}:
                raise ApiError(
                    422,
                    "Invalid",
                    f'Job.batch "{obj["metadata"]["name"]}" is invalid: '
                    f"spec.template.spec.restartPolicy: Required value: valid values: "
                    f'"OnFailure", "Never" (got {policy!r})',
                )
            if spec.get("podFailurePolicy") and policy != "Never":
                raise ApiError(
                    422,
                    "Invalid",
                    f'Job.batch "{obj["metadata"]["name"]}" is invalid: '
                    'spec.template.spec.restartPolicy: Invalid value: only "Never" is supported '
                    "when podFailurePolicy is specified",
                )
        if resource == NAMESPACES:
            obj.setdefault("status", {"phase": "Active"})
        if resource in self.schemas:
            defaulted = crd_schema.default_and_prune(obj, self.schemas[resource])
            obj.clear()
            obj.update(defaulted)
        for hook in self.admission_hooks:
            hook(resource, obj, created)

    def _commit(self, key: Any, obj: dict[str, Any], kind: str) -> dict[str, Any]:
        self._revision += 1
        obj["metadata"]["resourceVersion"] = str(self._revision)
        self._store[key] = self._by_resource[key[0]][key] = obj
        self._publish(key[0], kind, obj)
        return clone(obj)

    def _remove(self, key: Any, obj: dict[str, Any]) -> dict[str, Any]:
        self._revision += 1
        final = clone(obj)
        final["metadata"]["resourceVersion"] = str(self._revision)
        del self._store[key], self._by_resource[key[0]][key]
        self._publish(key[0], "DELETED", final)
        return clone(final)

    def _orphan_dependents(self, uid: str) -> None:
        for key, obj in list(self._store.items()):
            owners = obj["metadata"].get("ownerReferences") or []
            if any(owner.get("uid") == uid for owner in owners):
                kept = [owner for owner in owners if owner.get("uid") != uid]
                self._write(key, obj, merge_patch(obj, {"metadata": {"ownerReferences": kept or None}}), None)

    def _publish(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        self._events.append(WatchEvent(self._revision, resource, kind, clone(obj)))
        future = self._change_future()
        self._tick = None
        future.set_result(None)

    def _change_future(self) -> asyncio.Future[None]:
        if self._tick is None:
            self._tick = asyncio.get_running_loop().create_future()
        return self._tick

    def _events_after(self, revision: int) -> int:
        """Index of the first kept event newer than the revision."""
        low, high = 0, len(self._events)
        while low < high:
            middle = (low + high) // 2
            if self._events[middle].resource_version <= revision:
                low = middle + 1
            else:
                high = middle
        return low

    async def watch(
        self,
        resource: str,
        query: Query,
        since: int | None,
        *,
        timeout: float,
        initial_events: bool = False,
        connected: Callable[[], bool] = lambda: True,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events as the API sends them: after `since`, or ADDED for what exists, then live.

        Ends after `timeout`, when the emulator closes, or soon after `connected()` turns false.
        """
        events = self._watch_events(
            resource, query, since, timeout=timeout, initial_events=initial_events, connected=connected
        )
        async for event in events:
            yield {"type": event.type, "object": clone(event.object)}

    async def _watch_events(
        self,
        resource: str,
        query: Query,
        since: int | None,
        *,
        timeout: float,
        initial_events: bool,
        connected: Callable[[], bool],
    ) -> AsyncIterator[WatchEvent]:
        """`watch` without copies: the events yielded are shared and must not be changed."""
        deadline = asyncio.get_running_loop().time() + timeout
        if since is None:
            position = len(self._events)
            for obj in self.list_objects(resource, query):
                yield WatchEvent(self._revision, resource, "ADDED", obj)
            if initial_events:
                bookmark = {
                    "apiVersion": api_version_of(resource),
                    "kind": self._info(resource).kind,
                    "metadata": {
                        "resourceVersion": str(self._revision),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                yield WatchEvent(self._revision, resource, "BOOKMARK", bookmark)
        else:
            position = self._events_after(since)
        while (remaining := deadline - asyncio.get_running_loop().time()) > 0 and connected():
            change = self._change_future()
            for event in self._events[position:]:  # a slice, not islice: O(new events), not O(history)
                if event.resource == resource and query.matches(event.object):
                    yield event
            position = len(self._events)
            if self.closing:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(change), min(remaining, DISCONNECT_CHECK_SECONDS))

    def close_watches(self) -> None:
        """End every watch stream (before the server stops, so no handler is left waiting)."""
        self.closing = True
        self._change_future().set_result(None)
        self._tick = None

    # ------------------------------------------------------------ HTTP

    async def __call__(self, raw_request: Any) -> Any:
        """Serve a request: the served resources directly, anything else (discovery) through kmock.

        kmock matches a request against its reactions by scanning every request it has recorded, so its
        cost grows with the history; the store's own requests are neither recorded nor matched (unless a
        test added reactions of its own), only counted in `request_counts`.
        """
        body = await raw_request.read()
        match = NAMESPACE_PATH.fullmatch(raw_request.path)
        if match is not None:
            request = self._namespace_request(raw_request, match, body)
        else:
            request = await rendering.Request._parse(raw_request, id=next(self._request_ids))
        resource = self._served(request)
        self.request_counts[request_kind(request, resource)] += 1
        refusal = self._authorize(request, resource, body)
        if refusal is not None:
            return self._respond(refusal.code, refusal.status())
        if resource is not None and len(self._payloads) == self._own_reactions:
            response = await self._serve_directly(resource, request)
            if response is not None:
                return response
        if match is None:
            return await super().__call__(raw_request)
        self._requests.append(request)
        try:
            return await self._handle(request)
        except kmock.KubernetesError as error:
            return await self._render_error(error)

    def _namespace_request(self, raw_request: Any, match: re.Match[str], body: bytes) -> rendering.Request:
        """Namespace objects: kmock reads /api/v1/namespaces/<name> as a namespace, not as an object."""
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        name, subresource = match.group("name"), match.group("subresource")
        params = dict(raw_request.query)
        method = kmock.method(raw_request.method)
        return rendering.Request(
            id=next(self._request_ids),
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=params,
            headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies),
            data=data,
            body=body,
            text=body.decode(errors="replace"),
            action=_guess_action(method, name, params),
            resource=kmock.resource("", "v1", "namespaces"),
            namespace=None,
            name=name,
            subresource=subresource,
        )

    async def _serve_directly(self, resource: str, request: rendering.Request) -> Any:
        """The store's answer to a request, or None for what only kmock serves (e.g. a collection DELETE)."""
        if request.method == kmock.method.GET:
            if self._is_watch(request):
                return await self._stream_watch(resource, request)
            read = self._serve_fetch if request.name else self._serve_list
            try:
                payload = await read(request)
            except kmock.KubernetesError as error:
                return await self._render_error(error)
            if isinstance(payload, bytes):
                return aiohttp.web.Response(body=payload)
            return aiohttp.web.json_response(payload)
        try:
            outcome = self._mutate(resource, request)
        except ApiError as error:
            return self._respond(error.code, error.status())
        return None if outcome is None else self._respond(*outcome)

    def _authorize(self, request: rendering.Request, resource: str | None, body: bytes) -> ApiError | None:
        """RBAC for requests made as a ServiceAccount (tests/harness/rbac.py); None when allowed."""
        account = rbac.serviceaccount(request.headers)
        if account is None or resource is None:
            return None  # an administrator; discovery is open to every authenticated user
        group = api_version_of(resource).rpartition("/")[0]
        plural = resource.rsplit("/", 1)[-1] + (f"/{request.subresource}" if request.subresource else "")
        verb = rbac.verb_of(str(request.method.value), request.name, self._is_watch(request))
        namespace = request.namespace if self._namespaced(resource) else None
        rules = rbac.rules_for(self.peek_objects, account, namespace)
        if not rbac.grants(rules, verb, group, plural, request.name):
            return ApiError(
                403, "Forbidden", rbac.forbidden(account, verb, group, plural, namespace, request.name)
            )
        if verb in {"create", "update"} and resource.startswith(rbac.RBAC):
            try:
                obj = {**json.loads(body or b"{}")}
            except ValueError:
                return None
            obj.setdefault("metadata", {}).setdefault("namespace", namespace)
            why = rbac.escalation(self.peek_objects, account, obj)
            if why is not None:
                what = obj.get("kind", "object")
                return ApiError(
                    403, "Forbidden", f'{what} "{obj["metadata"].get("name")}" is forbidden: {why}'
                )
        return None

    def _served(self, request: rendering.Request) -> str | None:
        if request.resource is None or request.resource.plural is None or request.resource.version is None:
            return None
        return resource_key(request.resource)

    async def _handle(self, request: rendering.Request) -> Any:
        """kmock's path: requests with a test's own reactions, and what `_serve_directly` leaves to kmock."""
        resource = self._served(request)
        if resource is None:
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        if request.method == kmock.method.GET and self._is_watch(request):
            return await self._stream_watch(resource, request)
        try:
            outcome = self._mutate(resource, request)
        except ApiError as error:
            return self._respond(error.code, error.status())
        if outcome is not None:
            self._outcomes[request.id] = outcome
        return await super(kmock.KubernetesEmulator, self)._handle(request)

    def _mutate(self, resource: str, request: rendering.Request) -> tuple[int, dict[str, Any]] | None:
        self._info(resource)
        if "protobuf" in request.headers.get("Content-Type", ""):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "protobuf bodies are not emulated (kubectl's imperative "
                "`create <kind>` sends them): use `kubectl apply -f` with a manifest",
            )
        if request.params.get("dryRun"):
            raise ApiError(
                400, "BadRequest", "dryRun is not emulated: the request would have changed the store"
            )
        method, name, data = request.method, request.name, request.data
        if method == kmock.method.POST and name is None:
            if not isinstance(data, dict):
                raise ApiError(400, "BadRequest", "the request body must be a JSON object")
            return 201, self.create_object(resource, data, request.namespace)
        if name is None:
            return None
        namespace, subresource = request.namespace, request.subresource
        if method == kmock.method.PATCH:
            if "apply-patch" in request.headers.get("Content-Type", ""):
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "server-side apply is not emulated; use `kubectl apply --server-side=false`",
                )
            return 200, self.patch_object(resource, namespace, name, data, subresource=subresource)
        if method == kmock.method.PUT:
            if not isinstance(data, dict):
                raise ApiError(400, "BadRequest", "the request body must be a JSON object")
            return 200, self.replace_object(resource, namespace, name, data, subresource=subresource)
        if method == kmock.method.DELETE:
            options = data if isinstance(data, dict) else {}
            policy = request.params.get("propagationPolicy") or options.get("propagationPolicy")
            return 200, self.delete_object(resource, namespace, name, propagation=policy)
        return None

    def _respond(self, code: int, body: dict[str, Any]) -> Any:
        return aiohttp.web.json_response(body, status=code)

    async def _serve_outcome(self, request: rendering.Request) -> Any:
        code, body = self._outcomes.pop(request.id)
        return kmock.Response(status=code, payload=body)

    _serve_create = _serve_outcome
    _serve_update = _serve_outcome
    _serve_delete = _serve_outcome

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        resource = self._served(request)
        if resource is None:
            raise NotImplementedError  # discovery, served by kmock
        if resource == PODS and request.subresource == "log" and self.pod_logs is not None:
            return self.pod_logs(request.name or "", request.namespace or "default").encode()
        with self._as_status():
            if request.subresource not in (None, "status"):
                raise ApiError(404, "NotFound", f"subresource {request.subresource} is not emulated")
            obj = self.get_object(resource, request.namespace, request.name or "")
            if obj is None:
                raise not_found(resource, request.name or "")
        if self._wants_table(request):
            return tables.table(
                [obj], self.printer_columns.get(resource, [tables.AGE_COLUMN]), str(self._revision)
            )
        return obj

    async def _serve_list(self, request: rendering.Request) -> Any:
        resource = self._served(request)
        if resource is None:
            raise NotImplementedError  # discovery, served by kmock
        with self._as_status():
            info = self._info(resource)
            items = self.list_objects(resource, Query.from_params(request.namespace, dict(request.params)))
        if self._wants_table(request):
            return tables.table(
                items, self.printer_columns.get(resource, [tables.AGE_COLUMN]), str(self._revision)
            )
        return {
            "apiVersion": api_version_of(resource),
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": str(self._revision)},
            "items": items,
        }

    async def _stream_watch(self, resource: str, request: rendering.Request) -> Any:
        """A watch, served here rather than by kmock, so the stream says it is JSON (kubectl insists)."""
        params = dict(request.params)
        try:
            query = Query.from_params(request.namespace, params)
        except ApiError as error:
            return self._respond(error.code, error.status())
        if request.name:
            query.fields.append(("metadata.name", True, request.name))
        since_text = params.get("resourceVersion", "")
        initial = params.get("sendInitialEvents") == "true"
        since = int(since_text) if since_text not in ("", "0") and not initial else None
        timeout = float(params.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        columns = (
            self.printer_columns.get(resource, [tables.AGE_COLUMN]) if self._wants_table(request) else None
        )
        self.watches_started += 1
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        raw = request._raw_request
        assert raw is not None  # only requests built by hand in kmock's own tests lack it
        await response.prepare(raw)

        def connected() -> bool:
            return raw.transport is not None and not raw.transport.is_closing()

        with contextlib.suppress(ConnectionError):
            events = self._watch_events(
                resource, query, since, timeout=timeout, initial_events=initial, connected=connected
            )
            async for event in events:
                if columns is not None and event.type != "BOOKMARK":  # `kubectl get -w` watches rows
                    revision = event.object["metadata"]["resourceVersion"]
                    row = tables.table([event.object], columns, revision)
                    await response.write(json.dumps({"type": event.type, "object": row}).encode() + b"\n")
                else:
                    await response.write(event.line())
            await response.write_eof()
        return response

    @staticmethod
    @contextlib.contextmanager
    def _as_status() -> Any:
        """Errors of reads become kmock Status responses (a returned Response would stick to the reaction)."""
        try:
            yield
        except ApiError as error:
            raise kmock.KubernetesError(
                status=error.code, reason=error.reason, message=error.message, details={"code": error.code}
            ) from None

    async def _serve_version(self, request: rendering.Request) -> Any:
        """Discovery of one group/version: subresources without short names, as the API server lists them."""
        assert request.resource is not None
        prefix = (
            f"{request.resource.group}/{request.resource.version}"
            if request.resource.group
            else (request.resource.version or "")
        )
        served = {key: info for key, info in self.served.items() if api_version_of(key) == prefix}
        if not served:
            raise kmock.KubernetesResourceNotFoundError()
        entries: list[dict[str, Any]] = []
        for key, info in served.items():
            plural = key.rsplit("/", 1)[-1]
            entries.append(
                {
                    "name": plural,
                    "singularName": info.singular,
                    "namespaced": info.namespaced,
                    "kind": info.kind,
                    "verbs": sorted(info.verbs),
                    "shortNames": sorted(info.shortnames),
                    "categories": sorted(info.categories),
                }
            )
            entries += [
                {
                    "name": f"{plural}/{sub}",
                    "singularName": "",
                    "namespaced": info.namespaced,
                    "kind": info.kind,
                    "verbs": ["get", "patch", "update"],
                }
                for sub in info.subresources
            ]
        return {"apiVersion": "v1", "kind": "APIResourceList", "groupVersion": prefix, "resources": entries}

    @staticmethod
    def _is_watch(request: rendering.Request) -> bool:
        """`?watch=True` (the Python client) is a watch too: the API server parses it as a Go bool."""
        return request.params.get("watch", "") in {"1", "t", "T", "true", "TRUE", "True"}

    @staticmethod
    def _wants_table(request: rendering.Request) -> bool:
        return "as=Table" in request.headers.get("Accept", "")


NAMESPACE_PATH = re.compile(
    r"/api/v1/namespaces(?:/(?P<name>[^/]+)(?:/(?P<subresource>status|finalize))?)?/?"
)


def request_kind(request: rendering.Request, resource: str | None) -> str:
    """How `request_counts` files a request: ``<verb> <plural>[/<subresource>]``, or ``discovery``."""
    if resource is None:
        return "discovery"
    target = resource.rsplit("/", 1)[-1] + (f"/{request.subresource}" if request.subresource else "")
    if request.method == kmock.method.GET:
        verb = "watch" if ClusterEmulator._is_watch(request) else "get" if request.name else "list"
    else:
        verb = {
            kmock.method.POST: "create",
            kmock.method.PATCH: "patch",
            kmock.method.PUT: "update",
            kmock.method.DELETE: "delete",
        }.get(request.method, str(request.method).lower())
    return f"{verb} {target}"


def _guess_action(method: Any, name: str | None, params: dict[str, str]) -> Any:
    """kmock's action for a request, which its path parser cannot work out for Namespace objects."""
    if method == kmock.method.GET:
        if params.get("watch") in {"1", "t", "T", "true", "TRUE", "True"}:
            return kmock.action.WATCH
        return kmock.action.FETCH if name else kmock.action.LIST
    actions = {
        kmock.method.POST: kmock.action.CREATE,
        kmock.method.PATCH: kmock.action.UPDATE,
        kmock.method.DELETE: kmock.action.DELETE,
    }
    return actions.get(method) if (method == kmock.method.POST) != bool(name) else None


# ---------------------------------------------------------------- running it


@dataclass
class RunningCluster:
    """An emulator serving on 127.0.0.1 from its own thread and event loop."""

    emulator: ClusterEmulator
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    url: str
    kubeconfig: Path
    _stop: asyncio.Event

    def call(self, fn: Callable[[], T] | Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a function or coroutine on the emulator's loop and return its result (from any thread)."""

        async def run() -> T:
            return await fn if asyncio.iscoroutine(fn) else fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    # Thread-safe shortcuts to the store, for test code.
    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.call(lambda: self.emulator.get_object(resource, namespace, name))

    def list(
        self, resource: str, namespace: str | None = None, labels: str | None = None
    ) -> list[dict[str, Any]]:
        return self.call(
            lambda: self.emulator.list_objects(resource, Query(namespace, parse_label_selector(labels)))
        )

    def create(self, resource: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        return self.call(lambda: self.emulator.create_object(resource, body, namespace))

    def patch(
        self, resource: str, namespace: str | None, name: str, patch: Any, subresource: str | None = None
    ) -> dict[str, Any]:
        return self.call(
            lambda: self.emulator.patch_object(resource, namespace, name, patch, subresource=subresource)
        )

    def delete(self, resource: str, namespace: str | None, name: str, propagation: str | None = None) -> dict:
        return self.call(
            lambda: self.emulator.delete_object(resource, namespace, name, propagation=propagation)
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise RuntimeError(f"the Kubernetes emulator did not stop within {timeout} s")


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": namespace}}
        ],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def start_cluster(directory: Path, namespaces: tuple[str, ...] = ("default",)) -> RunningCluster:
    """Start the emulator on a free localhost port in a background thread; write its kubeconfig."""
    started: dict[str, Any] = {}
    ready = threading.Event()

    async def serve() -> None:
        try:
            stop = asyncio.Event()
            emulator = ClusterEmulator()
            async with emulator, kmock.Server(emulator) as server:
                for namespace in namespaces:
                    emulator.create_object(NAMESPACES, {"metadata": {"name": namespace}})
                started.update(emulator=emulator, url=str(server.url).rstrip("/"), stop=stop)
                ready.set()
                await stop.wait()
                emulator.close_watches()
        except BaseException as error:
            started["error"] = error
            ready.set()
            raise

    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=run, name="k8s-emulator", daemon=True)
    thread.start()
    if not ready.wait(STARTUP_TIMEOUT) or "error" in started:
        raise RuntimeError(f"the Kubernetes emulator did not start: {started.get('error')!r}")
    url = started["url"]
    directory.mkdir(parents=True, exist_ok=True)
    kubeconfig = write_kubeconfig(directory / "kubeconfig", url)
    return RunningCluster(started["emulator"], loop, thread, url, kubeconfig, started["stop"])
