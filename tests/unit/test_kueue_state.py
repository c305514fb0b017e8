"""Kueue's view of a job: queue_state row by row, the Queued phase, the status writer's Workloads."""

from __future__ import annotations

from typing import Any

import pytest
from tooltune_api.models import Phase
from tooltune_operator import kueue
from tooltune_operator.status import Observed, compute_status, decide_phase
from tooltune_operator.status_writer import StatusWriter
from tooltune_operator.views import job_view

QUEUE = "team-a"
QUOTA = (
    "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor f, 1 more needed"
)
PREEMPTION = (
    "Preempted to accommodate a workload (UID: w-1, JobUID: j-1) due to prioritization in the ClusterQueue"
)


def workload(*conditions: tuple[str, str, str, str], active: bool = True, **status: Any) -> dict[str, Any]:
    """A Workload as Kueue writes it: conditions are (type, status, reason, message)."""
    return kueue.workload_view(
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "metadata": {
                "name": "job-tune-1-abcde",
                "namespace": "ml",
                "labels": {kueue.LABEL_JOB_UID: "j-1"},
            },
            "spec": {"active": active, "queueName": QUEUE},
            "status": {
                "conditions": [
                    dict(zip(("type", "status", "reason", "message"), c, strict=True)) for c in conditions
                ],
                **status,
            },
        }
    )


PENDING = ("QuotaReserved", "False", "Pending", QUOTA)
RESERVED = ("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue cq")
ADMITTED = ("Admitted", "True", "Admitted", "The workload is admitted")
EVICTED = ("Evicted", "True", "Preempted", PREEMPTION)


@pytest.mark.parametrize(
    ("seen", "reason", "words"),
    [
        (None, kueue.WAITING_FOR_KUEUE, "is Kueue installed"),
        (workload(), kueue.WAITING_FOR_QUOTA, "waiting for a quota reservation"),
        (workload(PENDING), kueue.WAITING_FOR_QUOTA, QUOTA),
        (
            workload(("QuotaReserved", "False", "Inadmissible", "LocalQueue team-a doesn't exist")),
            kueue.INADMISSIBLE,
            "LocalQueue team-a doesn't exist",
        ),
        (
            workload(
                RESERVED,
                ("Admitted", "False", "NoReservation", ""),
                admission={"clusterQueue": "cq"},
                admissionChecks=[{"name": "dws-prov", "state": "Pending", "message": "waiting for capacity"}],
            ),
            kueue.WAITING_FOR_ADMISSION_CHECKS,
            "dws-prov Pending (waiting for capacity)",
        ),
        (workload(RESERVED, ADMITTED, admission={"clusterQueue": "cq"}), kueue.ADMITTED, "ClusterQueue cq"),
        (workload(RESERVED, ADMITTED, EVICTED), kueue.PREEMPTED, PREEMPTION),
        (workload(PENDING, EVICTED), kueue.PREEMPTED, f"; now {QUOTA}"),
        (
            workload(RESERVED, ("Evicted", "True", "PodsReadyTimeout", "Exceeded the PodsReady timeout")),
            kueue.EVICTED,
            "(PodsReadyTimeout): Exceeded the PodsReady timeout",
        ),
        (
            workload(PENDING, ("Evicted", "True", "Deactivated", "deactivated"), active=True),
            kueue.WAITING_FOR_QUOTA,
            QUOTA,
        ),
        (
            workload(
                PENDING, ("Evicted", "True", "Deactivated", "The workload is deactivated"), active=False
            ),
            kueue.EVICTED,
            "(Deactivated)",
        ),
    ],
)
def test_queue_state_follows_its_table(seen: dict[str, Any] | None, reason: str, words: str) -> None:
    got_reason, message = kueue.queue_state(seen, QUEUE, reading=True)
    assert got_reason == reason and words in message, (got_reason, message)


def test_no_workload_for_a_job_naming_a_priority_class_points_at_the_class() -> None:
    reason, message = kueue.queue_state(None, QUEUE, reading=True, priority_class="urgent")
    assert reason == kueue.WAITING_FOR_KUEUE and "does WorkloadPriorityClass urgent exist" in message


def test_without_reading_workloads_the_state_says_how_to_see_why() -> None:
    reason, message = kueue.queue_state(workload(PENDING), QUEUE, reading=False)
    assert reason == kueue.WAITING_FOR_KUEUE and "kueue.enabled" in message


def queued_job(suspend: bool) -> dict[str, Any]:
    labels = {"tooltune.dev/attempt": "1", kueue.LABEL_QUEUE: QUEUE}
    return job_view(
        {"metadata": {"name": "tune-1", "uid": "j-1", "labels": labels}, "spec": {"suspend": suspend}}
    )


def test_a_suspended_queued_job_is_queued_and_an_admitted_one_goes_on_as_usual() -> None:
    seen = Observed(generation=1, job=queued_job(True), workload=workload(PENDING), kueue_reading=True)
    phase, reason, message = decide_phase(seen)
    assert (phase, reason) == (Phase.QUEUED, kueue.WAITING_FOR_QUOTA) and QUOTA in message
    status = compute_status(seen)
    assert {c.type: c.status for c in status.conditions}["Queued"] == "True"
    running = [{"metadata": {"labels": {"tooltune.dev/attempt": "1"}}, "status": {"phase": "Running"}}]
    admitted = Observed(
        generation=1, job=queued_job(False), pods=running, workload=workload(RESERVED, ADMITTED)
    )
    assert decide_phase(admitted)[0] == Phase.VALIDATING


def test_spec_suspend_wins_over_the_queue_unless_it_cannot_reach_the_workload() -> None:
    seen = Observed(
        generation=1, suspend=True, job=queued_job(True), workload=workload(PENDING), kueue_reading=True
    )
    assert decide_phase(seen)[0] == Phase.SUSPENDED
    running = [{"metadata": {"labels": {"tooltune.dev/attempt": "1"}}, "status": {"phase": "Running"}}]
    unreachable = Observed(generation=1, suspend=True, job=queued_job(False), pods=running)
    assert (
        decide_phase(unreachable)[0] == Phase.VALIDATING
    )  # Kueue runs it: the status does not say otherwise


def test_the_writer_keeps_each_jobs_newest_workload_and_finds_its_owner() -> None:
    writer = StatusWriter(kube=None, metrics=None, kueue_reading=True)  # type: ignore[arg-type]
    raw = {
        "metadata": {"name": "tune", "namespace": "ml", "uid": "t-1"},
        "spec": {},
        "status": {"attempts": 1},
    }
    body = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "metadata": {"name": "job-tune-1-abcde", "namespace": "ml", "labels": {kueue.LABEL_JOB_UID: "j-1"},
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"conditions": [dict(zip(("type", "status", "reason", "message"), PENDING, strict=True))]},
    }  # fmt: skip
    assert writer.workload_event("ADDED", body) is None  # the Job not seen yet: kept for when it is
    seen = writer.observe(raw, [queued_job(True)], []).seen
    assert seen.workload is not None and seen.workload["metadata"]["name"] == "job-tune-1-abcde"
    older = {
        **body,
        "metadata": {**body["metadata"], "name": "old", "creationTimestamp": "2025-01-01T00:00:00Z"},
    }
    assert writer.workload_event("MODIFIED", older) == ("ml", "tune")
    assert writer.workloads["j-1"]["metadata"]["name"] == "job-tune-1-abcde"
    assert writer.workload_event("DELETED", body) == ("ml", "tune")
    assert "j-1" not in writer.workloads
