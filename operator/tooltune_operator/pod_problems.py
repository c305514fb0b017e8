"""What keeps an attempt's pod from starting, or ended it, read as the kubelet and the scheduler report it.

Pure. A real kubelet says some things only in Events: a ConfigMap or Secret volume that cannot be mounted
leaves the container waiting in ``ContainerCreating`` with an empty message and posts ``FailedMount``
(``MountVolume.SetUp failed for volume "data-0" : configmap "task-api-data" not found``); others in the
pod's status too (``CreateContainerConfigError``: ``secret "s3-credentials" not found``, ``ErrImagePull``,
``ImagePullBackOff``, the scheduler's ``PodScheduled=False`` with ``0/3 nodes are available: ...``). So
both are read: the pod views, and the Warning Events the operator collects for pods that stay Pending.

``blocker`` → (reason, message) for the ToolTuneJob while its pod cannot start; ``incidents`` → the
ends of pods that the Job retries but a user should hear of (out of memory, evicted).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from tooltune_operator import conditions as c

CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError"}
IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
NOT_FOUND = re.compile(r'(secret|configmap)s? "([^"]+)" not found', re.IGNORECASE)
MISSING_KEY = re.compile(r"couldn't find key (\S+) in (Secret|ConfigMap) (\S+)")
PULL_FAILED = re.compile(r'^Failed to pull image "([^"]+)": (.*)$')


def event_view(event: dict[str, Any]) -> dict[str, Any]:
    """What the operator keeps of an Event about a pod."""
    return {key: event.get(key) for key in ("type", "reason", "message", "lastTimestamp")}


def blocker(pods: Iterable[dict[str, Any]], events: Iterable[dict[str, Any]]) -> tuple[str, str] | None:
    """Why the attempt's pod cannot start, with what to do about it; None when nothing is known."""
    events = list(events)
    for pod in pods:
        status = pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason, message = waiting.get("reason") or "", waiting.get("message") or ""
            if reason in CONFIG_ERRORS and message:
                return c.CONFIG_MISSING, explain_missing(message)
            if reason in IMAGE_ERRORS:
                return c.IMAGE_PULL_FAILED, explain_pull(message, events)
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return c.UNSCHEDULABLE, explain_unschedulable(condition.get("message") or "")
    for event in reversed(events):  # newest last: the latest word wins
        message = event.get("message") or ""
        if event.get("reason") == "FailedMount" and NOT_FOUND.search(message):
            return c.CONFIG_MISSING, explain_missing(message)
        if event.get("reason") == "FailedScheduling":
            return c.UNSCHEDULABLE, explain_unschedulable(message)
    return None


def explain_missing(message: str) -> str:
    found = NOT_FOUND.search(message)
    if found:
        kind = "Secret" if found[1].lower() == "secret" else "ConfigMap"
        return (
            f"{message}: the pod waits for {kind} {found[2]}, which will not appear by itself; create it in "
            "the ToolTuneJob's namespace (or fix the spec field that names it)"
        )
    key = MISSING_KEY.search(message)
    if key:
        return f"{message}: the pod waits for it; add key {key[1]} to {key[2]} {key[3]}"
    return message


def explain_pull(message: str, events: list[dict[str, Any]]) -> str:
    for event in reversed(events):
        failed = PULL_FAILED.match(event.get("message") or "")
        if failed:
            return (
                f"cannot pull image {failed[1]}: {failed[2]}; check spec.image (or the operator's trainer "
                "image) and the registry's pull credentials"
            )
    return f"cannot pull the image: {message or 'ImagePullBackOff'}; check spec.image and the registry"


def explain_unschedulable(message: str) -> str:
    return (
        f"no node can run the pod: {message} Check resources.gpus, resources.gpuResourceName, "
        "resources.nodeSelector and resources.tolerations against the cluster's nodes"
    )


def incidents(pods: Iterable[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(pod name, reason, message) for each pod that ran out of memory or was evicted."""
    found = []
    for pod in pods:
        name, status = (pod.get("metadata") or {}).get("name") or "", pod.get("status") or {}
        if status.get("reason") == "Evicted":
            found.append(
                (name, c.POD_EVICTED, f"pod {name} was evicted: {(status.get('message') or '').strip()}")
            )
            continue
        for container in status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated.get("reason") == "OOMKilled":
                message = (
                    f"pod {name} ran out of memory (OOMKilled, exit code {terminated.get('exitCode', 137)}): "
                    "raise resources.memory, or lower hyperparameters.batchSize or maxSeqLength"
                )
                found.append((name, c.OOM_KILLED, message))
    return found
