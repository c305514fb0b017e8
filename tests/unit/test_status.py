"""The phase machine as a table: observed Job and Pods (and the previous status) → expected status."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest
from tooltune_api import ANNOTATION_GENERATION, LABEL_ATTEMPT, LABEL_JOB
from tooltune_api.models import ToolTuneJobStatus
from tooltune_operator import conditions as c
from tooltune_operator.status import (
    COUNTED,
    UNCOUNTED,
    Observed,
    compute_status,
    group_restart,
    needs_resync,
    retry_wanted,
    status_patch,
)
from tooltune_operator.views import job_generation, job_view, pod_view

NOW = "2026-11-25T10:00:00Z"


def job(*conditions: tuple[str, str], failed: int = 0, suspend: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": "demo-1"},
        "spec": {"suspend": suspend},
        "status": {
            "failed": failed,
            "startTime": "2026-11-25T09:00:00Z",
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": f"{t} {r}"} for t, r in conditions
            ],
        },
    }


def group_job(*conditions: tuple[str, str, str], restarts: int = 0) -> dict[str, Any]:
    """A multi-node group's Job view: the counted restarts before it, conditions (type, reason, message)."""
    return {
        "metadata": {"name": "demo-2", "annotations": {"tooltune.dev/group-restarts": str(restarts)}},
        "spec": {"suspend": False},
        "status": {
            "failed": 1,
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions
            ],
        },
    }


CRASHED = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
EVICTED = (
    "Failed",
    "PodFailurePolicy",
    "Pod default/demo-2-1-x7k2p has condition DisruptionTarget matching FailJob rule at index 1",
)
INVALID = (
    "Failed",
    "PodFailurePolicy",
    "Container trainer for pod default/demo-2-0-abcde failed with exit code 2 "
    "matching FailJob rule at index 0",
)


def pod(phase: str, exit_code: int | None = None, message: str = "", reason: str = "") -> dict[str, Any]:
    state: dict[str, Any] = {}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "message": message, "reason": reason}}
    elif phase == "Pending":
        state = {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "s3" not found'}}
    return {
        "metadata": {"name": "demo-1-abcde"},
        "status": {
            "phase": phase,
            "startTime": "2026-11-25T09:00:00Z",
            "containerStatuses": [{"state": state}],
        },
    }


def waiting_pod(reason: str, message: str) -> dict[str, Any]:
    waiting = {"reason": reason, **({"message": message} if message else {})}
    return {
        "metadata": {"name": "demo-1-abcde"},
        "status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": waiting}}]},
    }


def unscheduled_pod(message: str) -> dict[str, Any]:
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
    return {"metadata": {"name": "demo-1-abcde"}, "status": {"phase": "Pending", "conditions": [condition]}}


TRAINING = ToolTuneJobStatus.model_validate(
    {"phase": "Running", "attempts": 1, "progress": {"step": 5, "totalSteps": 90}}
)
RUNNING_BEFORE = ToolTuneJobStatus.model_validate({"phase": "Running", "attempts": 1, "jobName": "demo-1"})
SUCCEEDED_BEFORE = ToolTuneJobStatus.model_validate(
    {
        "phase": "Succeeded",
        "attempts": 1,
        "message": "training finished",
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed"}],
    }
)
CANCELLED_REMOTE = ToolTuneJobStatus.model_validate(
    {"phase": "Running", "attempts": 1, "openai": {"status": "cancelled"}}
)

# (case, observed, expected phase, expected reason, expected message fragment)
WAITING_FOR_OUTPUT = ToolTuneJobStatus(
    phase="Pending", reason=c.OUTPUT_IN_USE, attempts=1,
    message="spec.output.uri is also written by ToolTuneJob default/first, which has not finished",
)  # fmt: skip

TABLE = [
    (
        "invalid spec",
        Observed(1, spec_problems=["spec.baseModel: is required"]),
        "Failed",
        c.VALIDATION_FAILED,
        "spec.baseModel",
    ),
    ("no job yet", Observed(1), "Pending", c.JOB_CREATED, "creating"),
    (
        "an event while the output is held: only the reconciler knows, its answer stands",
        Observed(1, previous=WAITING_FOR_OUTPUT),
        "Pending",
        c.OUTPUT_IN_USE,
        "ToolTuneJob default/first",
    ),
    (
        "the reconciler finds the output free",
        Observed(1, previous=WAITING_FOR_OUTPUT, reconciled=True),
        "Pending",
        c.JOB_CREATED,
        "creating",
    ),
    (
        "pod waits for a secret",
        Observed(1, job=job(), pods=[pod("Pending")]),
        "Pending",
        c.CONFIG_MISSING,
        'secret "s3" not found: the pod waits for Secret s3, which will not appear by itself',
    ),
    (
        "a volume's ConfigMap is missing: said only in a FailedMount Event",
        Observed(
            1,
            job=job(),
            pods=[waiting_pod("ContainerCreating", "")],
            pod_events=[
                {
                    "type": "Warning",
                    "reason": "FailedMount",
                    "message": 'MountVolume.SetUp failed for volume "data-0" : configmap "data" not found',
                }
            ],
        ),
        "Pending",
        c.CONFIG_MISSING,
        "the pod waits for ConfigMap data",
    ),
    (
        "the image cannot be pulled",
        Observed(
            1,
            job=job(),
            pods=[waiting_pod("ImagePullBackOff", 'Back-off pulling image "ghcr.io/x/trainer:9"')],
            pod_events=[
                {
                    "type": "Warning",
                    "reason": "Failed",
                    "message": 'Failed to pull image "ghcr.io/x/trainer:9": not found',
                }
            ],
        ),
        "Pending",
        c.IMAGE_PULL_FAILED,
        "cannot pull image ghcr.io/x/trainer:9: not found; check spec.image",
    ),
    (
        "no node has the GPU",
        Observed(
            1, job=job(), pods=[unscheduled_pod("0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")]
        ),
        "Pending",
        c.UNSCHEDULABLE,
        "no node can run the pod: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    ),
    (
        "the pod waits, nothing said yet",
        Observed(1, job=job(), pods=[waiting_pod("ContainerCreating", "")]),
        "Pending",
        c.POD_PENDING,
        "ContainerCreating",
    ),
    (
        "pod runs, no step yet",
        Observed(1, job=job(), pods=[pod("Running")]),
        "Validating",
        c.VALIDATING_DATA,
        "",
    ),
    (
        "pod runs and reports steps",
        Observed(1, job=job(), pods=[pod("Running")], previous=TRAINING),
        "Running",
        c.TRAINING,
        "",
    ),
    (
        "job complete",
        Observed(1, job=job(("Complete", "")), pods=[pod("Succeeded", 0)]),
        "Succeeded",
        c.COMPLETED,
        "",
    ),
    (
        "exit 2 with gate_failed: the model missed its evaluation gate",
        Observed(
            1,
            job=job(("Failed", "PodFailurePolicy")),
            pods=[
                pod(
                    "Failed",
                    2,
                    "gate_failed: evaluation gate failed: toolNameAccuracy 0.5 < 0.9 (atLeast 0.9)",
                )
            ],
        ),
        "Failed",
        c.EVALUATION_GATE_FAILED,
        "evaluation gate failed: toolNameAccuracy 0.5 < 0.9",
    ),
    (
        "exit 2: invalid data",
        Observed(
            1,
            job=job(("Failed", "PodFailurePolicy")),
            pods=[pod("Failed", 2, "line 7: tool 'delete_task' is not in tools")],
        ),
        "Failed",
        c.INVALID_DATA,
        "line 7: tool 'delete_task'",
    ),
    (
        "retries exhausted, OOM",
        Observed(
            1,
            job=job(("Failed", "BackoffLimitExceeded"), failed=4),
            pods=[pod("Failed", 137, reason="OOMKilled")],
        ),
        "Failed",
        c.BACKOFF_LIMIT_EXCEEDED,
        "code 137",
    ),
    (
        "deadline",
        Observed(1, job=job(("Failed", "DeadlineExceeded")), pods=[]),
        "Failed",
        c.DEADLINE_EXCEEDED,
        "DeadlineExceeded",
    ),
    (
        "remote job cancelled",
        Observed(
            1, job=job(("Failed", "BackoffLimitExceeded")), pods=[pod("Failed", 1)], previous=CANCELLED_REMOTE
        ),
        "Cancelled",
        c.CANCELLED,
        "",
    ),
    (
        "suspended",
        Observed(1, suspend=True, job=job(suspend=True)),
        "Suspended",
        c.SUSPENDED_BY_USER,
        "suspend",
    ),
    (
        "suspend asked, the Job still runs its pod until the reconciler's patch lands",
        Observed(1, suspend=True, job=job(), pods=[pod("Running")], previous=RUNNING_BEFORE),
        "Validating",
        c.VALIDATING_DATA,
        "validating data",
    ),
    ("job deleted mid-run", Observed(1, job=None, previous=RUNNING_BEFORE), "Failed", c.JOB_LOST, "demo-1"),
    (
        "succeeded, job cleaned up by TTL",
        Observed(1, job=None, previous=SUCCEEDED_BEFORE),
        "Succeeded",
        c.COMPLETED,
        "finished",
    ),
    (
        "a group with one of two pods running waits for the other",
        Observed(
            1,
            nodes=2,
            job=group_job(),
            pods=[pod("Running"), {"metadata": {"name": "demo-2-1-abcde"}, "status": {"phase": "Pending"}}],
        ),
        "Pending",
        c.GROUP_STARTING,
        "1 of 2 pods run",
    ),
    (
        "a group whose other pod cannot be scheduled says why",
        Observed(1, nodes=2, job=group_job(), pods=[pod("Running"), unscheduled_pod("")]),
        "Pending",
        c.UNSCHEDULABLE,
        "",
    ),
    (
        "a group whose pods all run trains",
        Observed(1, nodes=2, job=group_job(), pods=[pod("Running"), pod("Running")], previous=TRAINING),
        "Running",
        c.TRAINING,
        "training",
    ),
    (
        "a group's crashed pod restarts the group, counted",
        Observed(1, nodes=2, job=group_job(CRASHED, restarts=1), pods=[pod("Failed", 137)]),
        "Pending",
        c.GROUP_RESTARTING,
        "restart 2 of 3 (spec.backoffLimit)",
    ),
    (
        "a group's evicted pod restarts the group, uncounted",
        Observed(1, nodes=2, job=group_job(EVICTED, restarts=3)),
        "Pending",
        c.GROUP_RESTARTING,
        "not counted against spec.backoffLimit",
    ),
    (
        "a group already failing (its pods stopping) shows the restart to come",
        Observed(1, nodes=2, job=group_job(("FailureTarget", *CRASHED[1:]))),
        "Pending",
        c.GROUP_RESTARTING,
        "whole group restarts",
    ),
    (
        "a group out of restarts fails",
        Observed(1, nodes=2, job=group_job(CRASHED, restarts=3), pods=[pod("Failed", 1, "boom")]),
        "Failed",
        c.BACKOFF_LIMIT_EXCEEDED,
        "boom",
    ),
    (
        "a group pod's invalid data fails the job at once",
        Observed(1, nodes=2, job=group_job(INVALID), pods=[pod("Failed", 2, "train.jsonl:3: bad JSON")]),
        "Failed",
        c.INVALID_DATA,
        "train.jsonl:3",
    ),
    (
        "new attempt after failure",
        Observed(
            1,
            attempt=2,
            job=None,
            previous=ToolTuneJobStatus.model_validate({"phase": "Failed", "attempts": 1}),
        ),
        "Pending",
        c.JOB_CREATED,
        "",
    ),
]


@pytest.mark.parametrize(
    ("case", "seen", "phase", "reason", "fragment"), TABLE, ids=[row[0] for row in TABLE]
)
def test_transition_table(case: str, seen: Observed, phase: str, reason: str, fragment: str) -> None:
    seen.now = NOW
    status = compute_status(seen)
    assert status.phase == phase
    true = [cond for cond in status.conditions if cond.status == "True" and cond.type != c.VALIDATED]
    assert len(true) <= 1, "at most one of Running / Succeeded / Failed / Suspended holds"
    if phase not in {"Pending"}:
        assert true and true[0].reason == reason
        assert fragment in true[0].message
    else:
        assert reason in {cond.reason for cond in status.conditions} and status.reason == reason
        assert fragment in (status.message or "")
        blocked = next(cond for cond in status.conditions if cond.type == c.BLOCKED)
        assert (blocked.status == "True") == (
            reason in {c.CONFIG_MISSING, c.IMAGE_PULL_FAILED, c.UNSCHEDULABLE, c.OUTPUT_IN_USE}
        )
    assert status.observed_generation == seen.generation


def test_validated_condition_names_the_fields() -> None:
    status = compute_status(
        Observed(3, spec_problems=["spec.hyperparameters.learningRate: must be > 0"], now=NOW)
    )
    validated = next(cond for cond in status.conditions if cond.type == c.VALIDATED)
    assert (validated.status, validated.reason) == ("False", c.VALIDATION_FAILED)
    assert "learningRate" in validated.message
    assert status.failure_reason and "learningRate" in status.failure_reason


def test_retries_and_times_come_from_the_job() -> None:
    status = compute_status(Observed(1, job=job(("Failed", "BackoffLimitExceeded"), failed=4), now=NOW))
    assert status.retries == 3  # backoffLimit 3: the first pod and three retries failed
    assert status.start_time == "2026-11-25T09:00:00Z"
    assert status.completion_time == NOW


def test_a_groups_retries_are_its_counted_restarts() -> None:
    assert compute_status(Observed(1, nodes=2, job=group_job(restarts=2), now=NOW)).retries == 2
    assert compute_status(Observed(1, nodes=2, job=group_job(CRASHED, restarts=2), now=NOW)).retries == 3
    assert compute_status(Observed(1, nodes=2, job=group_job(EVICTED, restarts=2), now=NOW)).retries == 2
    exhausted = Observed(1, nodes=2, backoff_limit=2, job=group_job(CRASHED, restarts=2), now=NOW)
    assert compute_status(exhausted).retries == 2  # the failure that ends the job is no retry


def test_the_restart_rule_starts_a_group_again_only_once_its_job_failed() -> None:
    assert group_restart(group_job(CRASHED), 3) == COUNTED
    assert group_restart(group_job(EVICTED, restarts=3), 3) == UNCOUNTED
    assert group_restart(group_job(CRASHED, restarts=3), 3) is None
    assert group_restart(group_job(INVALID), 3) is None
    assert group_restart(group_job(("Failed", "DeadlineExceeded", "")), 3) is None
    assert group_restart(job(("Failed", "BackoffLimitExceeded")), 3) is None  # one pod: the Job retries
    assert retry_wanted(True, 1, 1, False, COUNTED) and not retry_wanted(True, 1, 1, True, COUNTED)
    assert not retry_wanted(True, 1, 1, False, None)


def test_workers_show_nodes_times_gpus() -> None:
    assert compute_status(Observed(1, nodes=2, gpus=4, now=NOW)).workers == "2x4"
    assert compute_status(Observed(1, gpus=0, now=NOW)).workers == "1xCPU"


def test_a_failure_that_was_never_retried_is_not_a_retry() -> None:
    failed_at_once = job(("Failed", "PodFailurePolicy"), failed=1)
    assert compute_status(Observed(1, job=failed_at_once, now=NOW)).retries == 0
    assert compute_status(Observed(1, job=job(failed=2), pods=[pod("Running")], now=NOW)).retries == 2


def test_a_spec_refused_at_validation_never_started() -> None:
    status = compute_status(
        Observed(1, spec_problems=["spec.output.uri: unsupported scheme ftp://"], now=NOW)
    )
    assert status.phase == "Failed" and status.start_time is None and status.completion_time == NOW


def test_transition_times_only_move_when_a_condition_flips() -> None:
    first = compute_status(
        Observed(1, job=job(), pods=[pod("Running")], previous=TRAINING, now="2026-11-25T10:00:00Z")
    )
    later = compute_status(
        Observed(1, job=job(), pods=[pod("Running")], previous=first, now="2026-11-25T10:05:00Z")
    )
    running = next(cond for cond in later.conditions if cond.type == c.RUNNING)
    assert running.last_transition_time == "2026-11-25T10:00:00Z"


def test_patch_holds_only_changed_operator_fields() -> None:
    seen = Observed(1, job=job(), pods=[pod("Running")], previous=TRAINING, now=NOW)
    new = compute_status(seen)
    previous = new.model_dump(by_alias=True, mode="json")
    previous["progress"] = {"step": 5}  # trainer-owned: never in the operator's patch
    assert status_patch(previous, new) == {}
    previous["phase"] = "Validating"
    assert status_patch(previous, new) == {"phase": "Running"}


def as_watched(body: dict[str, Any]) -> dict[str, Any]:
    """body as the API serves it: labels, annotations, managedFields and a pod template around it."""
    watched = copy.deepcopy(body)
    watched["metadata"].update(
        labels={LABEL_JOB: "demo", LABEL_ATTEMPT: "1", "app": "x"},
        annotations={
            ANNOTATION_GENERATION: "3",
            "kubectl.kubernetes.io/last-applied": "{" + "x" * 4000 + "}",
        },
        managedFields=[{"manager": "kube-controller-manager", "fieldsV1": {"f:status": {"x": 1}}}] * 20,
    )
    watched.setdefault("spec", {})["template"] = {"spec": {"containers": [{"env": [{"name": "X"}] * 50}]}}
    watched["status"]["conditions"] = [
        *watched["status"].get("conditions", []),
        {"type": "PodScheduled", "status": "False", "message": "0/3 nodes are available"},
        {"type": "Ready", "status": "False", "message": "containers not ready"},
    ]
    return watched


@pytest.mark.parametrize("row", [row for row in TABLE if row[1].job], ids=lambda row: row[0])
def test_views_keep_all_that_the_phase_machine_reads(row: tuple[Any, ...]) -> None:
    seen: Observed = row[1]
    whole = dataclasses.replace(
        seen, now=NOW, job=as_watched(seen.job or {}), pods=[as_watched(p) for p in seen.pods]
    )
    viewed = dataclasses.replace(whole, job=job_view(whole.job or {}), pods=[pod_view(p) for p in whole.pods])
    assert compute_status(viewed) == compute_status(whole)


def test_views_are_small_and_detached() -> None:
    watched_job, watched_pod = as_watched(job(("Complete", ""))), as_watched(pod("Failed", 137))
    small_job, small_pod = job_view(watched_job), pod_view(watched_pod)
    assert small_job["metadata"]["labels"] == {LABEL_JOB: "demo", LABEL_ATTEMPT: "1"}
    assert small_pod["metadata"]["labels"][LABEL_ATTEMPT] == "1"
    assert job_generation(small_job) == 3
    for small, watched in ((small_job, watched_job), (small_pod, watched_pod)):
        assert len(json.dumps(small)) * 10 < len(json.dumps(watched))
        assert "managedFields" not in small["metadata"]
    watched_job["status"]["conditions"][0]["status"] = "False"
    watched_pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = 0
    assert small_job["status"]["conditions"][0]["status"] == "True"
    assert small_pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137


@pytest.mark.parametrize(
    ("status", "generation", "watched"),
    [
        ({}, 1, True),  # not reconciled yet: watched, in case its create is lost (resync waits first)
        ({"phase": "Pending"}, 1, True),
        ({"phase": "Running"}, 1, True),
        ({"phase": "Succeeded", "specGeneration": 1}, 2, False),  # a change after success is ignored
        ({"phase": "Failed", "specGeneration": 1}, 1, False),
        ({"phase": "Failed", "specGeneration": 1}, 2, True),  # the fix after a failure starts an attempt
    ],
)
def test_the_resync_watches_reconciled_jobs_until_they_end(
    status: dict[str, Any], generation: int, watched: bool
) -> None:
    assert needs_resync(status, {"generation": generation}, {}) is watched
