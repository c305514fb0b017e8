"""What the operator reads of the objects it watches: small detached views and the questions asked of them.

The operator indexes every ToolTuneJob, Job and Pod it owns; whole bodies (pod templates, managedFields,
kopf's annotations) cost tens of KB each, these views a few hundred bytes, and kopf's live ``Body`` must
not leak into code that runs later in a thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from tooltune_api import ANNOTATION_GENERATION, ANNOTATION_GROUP_RESTARTS, LABEL_ATTEMPT, LABEL_JOB

from tooltune_operator.kueue import LABEL_PRIORITY_CLASS, LABEL_QUEUE

# What the status writer and kopf.event read of a ToolTuneJob's metadata.
OWNER_METADATA = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
)


def owner_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """A ToolTuneJob as the status writer reads it: spec and status whole, metadata without annotations."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {key: meta[key] for key in OWNER_METADATA if key in meta},
        "spec": detached(dict(body.get("spec") or {})),
        "status": detached(dict(body.get("status") or {})),
    }


JOB_ANNOTATIONS = (ANNOTATION_GENERATION, ANNOTATION_GROUP_RESTARTS)  # what a Job view keeps of them


def job_view(job: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Job that the phase machine and the reconciler read."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "uid": meta.get("uid"),  # what Kueue's Workload of the Job names it by
            "labels": _picked(
                meta.get("labels"), (LABEL_JOB, LABEL_ATTEMPT, LABEL_QUEUE, LABEL_PRIORITY_CLASS)
            ),
            "annotations": _picked(meta.get("annotations"), JOB_ANNOTATIONS),
        },
        "spec": {"suspend": bool((job.get("spec") or {}).get("suspend"))},
        "status": detached(_picked(status, ("conditions", "failed", "startTime"))),
    }


def pod_view(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Pod that the phase machine reads (see job_view)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    wanted = {"PodScheduled", "DisruptionTarget"}
    conditions = [cond for cond in status.get("conditions") or [] if cond.get("type") in wanted]
    return {
        "metadata": {
            "name": meta.get("name"),
            "labels": _picked(meta.get("labels"), (LABEL_JOB, LABEL_ATTEMPT)),
        },
        "status": {
            "phase": status.get("phase"),
            "reason": status.get("reason"),
            "message": status.get("message"),
            "startTime": status.get("startTime"),
            "containerStatuses": [
                {"state": detached(container.get("state") or {})}
                for container in status.get("containerStatuses") or []
            ],
            "conditions": detached(conditions),
        },
    }


def detached(value: Any) -> Any:
    """A deep copy of JSON data (a body's parts are JSON): through the C codec, several times faster than
    copy.deepcopy, which was the operator's biggest cost per watch event."""
    return json.loads(json.dumps(value))


def _picked(mapping: Mapping[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: mapping[key] for key in keys if key in (mapping or {})}  # type: ignore[index]


def of_attempt(objects: Iterable[dict[str, Any]] | None, attempt: int) -> list[dict[str, Any]]:
    """The views of one attempt's objects (by their attempt label)."""
    return [o for o in objects or [] if o["metadata"].get("labels", {}).get(LABEL_ATTEMPT) == str(attempt)]


def job_condition(job: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The Job's condition of that type when it is True."""
    for condition in ((job or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def job_generation(job: dict[str, Any] | None) -> int | None:
    """The ToolTuneJob generation a Job was built from (its annotation)."""
    value = ((job or {}).get("metadata", {}).get("annotations") or {}).get(ANNOTATION_GENERATION)
    return int(value) if value else None


def group_restarts(job: dict[str, Any] | None) -> int | None:
    """The counted group restarts before a multi-node Job's attempt; None for a Job of one pod."""
    value = ((job or {}).get("metadata", {}).get("annotations") or {}).get(ANNOTATION_GROUP_RESTARTS)
    return int(value) if value is not None else None


def termination(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The pod's container termination state, once its container has ended."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return dict(terminated)
    return None
