"""The reconciler with an API that refuses: the ToolTuneJob says why, and kopf is asked to try again."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest
from prometheus_client import CollectorRegistry
from tooltune_api.models import now_iso, parse_spec
from tooltune_operator import reconcile
from tooltune_operator.kube import ApiError
from tooltune_operator.metrics import OperatorMetrics
from tooltune_operator.settings import Settings
from tooltune_operator.status_writer import StatusWriter

REFUSAL = (
    'Job.batch "demo-1" is invalid: spec.template.spec.priorityClassName: Invalid value: "gold": '
    "no such class"
)


def tooltunejob() -> dict[str, Any]:
    return {
        "apiVersion": "tooltune.dev/v1alpha1",
        "kind": "ToolTuneJob",
        "metadata": {
            "name": "demo",
            "namespace": "ns",
            "uid": "u-1",
            "generation": 1,
            "resourceVersion": "3",
        },
        "spec": {
            "baseModel": "org/model",
            "dataset": {"train": "s3://b/t.jsonl"},
            "output": {"uri": "s3://b/o/"},
        },
        "status": {},
    }


class RefusingKube:
    """An API that has nothing, refuses every create with 422, and answers status patches."""

    def __init__(self) -> None:
        self.status_patches: list[dict[str, Any]] = []

    def get(self, *_: Any) -> None:
        return None

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        if body["kind"] in {"ServiceAccount", "Role", "RoleBinding"}:
            return body
        status = {"kind": "Status", "message": REFUSAL, "reason": "Invalid", "code": 422}
        raise ApiError(422, "Unprocessable Entity", json.dumps(status))

    def patch(self, *args: Any) -> dict[str, Any]:
        self.status_patches.append(copy.deepcopy(args[4]["status"]))
        return {
            "metadata": {"resourceVersion": str(len(self.status_patches) + 10)},
            "status": args[4]["status"],
        }


def operator_memo(kube: Any) -> kopf.Memo:
    """What the operator's startup puts in memo, around a fake API."""
    metrics = OperatorMetrics(CollectorRegistry())
    return kopf.Memo(
        kube=kube,
        settings=Settings(),
        metrics=metrics,
        status_writer=StatusWriter(kube, metrics),
        rbac_namespaces=set(),
    )


def test_a_refused_job_shows_the_api_servers_reason_and_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str, str]] = []
    monkeypatch.setattr(
        kopf, "event", lambda _, *, type, reason, message: events.append((type, reason, message))
    )
    kube = RefusingKube()
    memo = operator_memo(kube)
    raw = tooltunejob()
    with pytest.raises(kopf.TemporaryError, match="priorityClassName"):
        reconcile.converge(memo, raw, {}, {}, restart=True)
    (status,) = kube.status_patches
    assert status["phase"] == "Pending"
    assert status["message"] == f"the API server refused the Job: {REFUSAL}"
    assert events == [("Warning", "JobRefused", REFUSAL)]


def owner(name: str, uri: str, created: str, phase: str | None = None) -> dict[str, Any]:
    body = tooltunejob()
    body["metadata"].update(name=name, uid=f"uid-{name}", creationTimestamp=created)
    body["spec"]["output"] = {"uri": uri}
    body["status"] = {"phase": phase} if phase else {}
    return body


@pytest.mark.parametrize(
    ("theirs", "phase", "holds"),
    [
        ("s3://b/out/", None, True),  # the same output, trailing slash or not
        ("s3://b/out/run-2", "Running", True),  # nested inside
        ("s3://b/", "Pending", True),  # containing it
        ("s3://b/out2/", "Running", False),  # a sibling that shares a prefix of characters only
        ("s3://other/out/", "Running", False),
        ("s3://b/out", "Succeeded", False),  # finished: the output is free
        ("runs/out", "Running", False),  # a path: each pod has its own
    ],
)
def test_an_older_unfinished_job_holds_an_output_that_overlaps(
    theirs: str, phase: str | None, holds: bool
) -> None:
    spec = parse_spec({**tooltunejob()["spec"], "output": {"uri": "s3://b/out"}})
    me = owner("me", "s3://b/out", "2026-11-25T10:00:01Z")
    older = owner("older", theirs, "2026-11-25T10:00:00Z", phase)
    younger = owner("younger", "s3://b/out", "2026-11-25T10:00:02Z")
    index = {("ns", "older"): [older], ("ns", "younger"): [younger], ("ns", "me"): [me]}
    holder = reconcile.output_holder(me, spec, index)
    assert (holder is not None and holder["metadata"]["name"] == "older") == holds


class StoringKube:
    """An API that keeps what is created, in order, and applies merge patches of metadata."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.created: list[tuple[str, str]] = []

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind, name)))

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append((body["kind"], body["metadata"]["name"]))
        stored = copy.deepcopy(body)
        stored["metadata"]["uid"] = f"uid-{body['metadata']['name']}"
        self.objects.setdefault((body["kind"], body["metadata"]["name"]), stored)
        return copy.deepcopy(self.objects[(body["kind"], body["metadata"]["name"])])

    def patch(self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any], *_: Any):
        if (kind, name) in self.objects and "metadata" in body:
            self.objects[(kind, name)]["metadata"].update(body["metadata"])
        return {"metadata": {"resourceVersion": "1"}, "status": body.get("status", {})}


def fail(kube: StoringKube, job: str, reason: str, message: str) -> None:
    condition = {"type": "Failed", "status": "True", "reason": reason, "message": message}
    kube.objects[("Job", job)]["status"] = {"conditions": [condition], "failed": 1}


def test_a_group_restarts_as_the_next_attempt_counting_crashes_not_disruptions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "event", lambda _, *, type, reason, message: events.append((reason, message)))
    kube = StoringKube()
    memo = operator_memo(kube)
    raw = tooltunejob()
    raw["spec"]["resources"] = {"nodes": 2, "gpus": 1}
    assert reconcile.converge(memo, raw, {}, {}, restart=True) == 1
    # The Service first (its pods' names resolve from their start), then the Job, which then owns it.
    assert kube.created[-3:] == [("ConfigMap", "demo-1-contract"), ("Service", "demo-1"), ("Job", "demo-1")]
    owners = kube.objects[("Service", "demo-1")]["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"]) for o in owners] == [("Job", "demo-1")]

    fail(kube, "demo-1", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    raw["status"] = {"attempts": 1, "phase": "Pending"}
    assert reconcile.converge(memo, raw, {}, {}) == 2
    assert kube.objects[("Job", "demo-2")]["metadata"]["annotations"]["tooltune.dev/group-restarts"] == "1"
    assert ("Service", "demo-2") in kube.objects

    disrupted = "Pod ns/demo-2-0-abcde has condition DisruptionTarget matching FailJob rule at index 1"
    fail(kube, "demo-2", "PodFailurePolicy", disrupted)
    raw["status"] = {"attempts": 2, "phase": "Pending"}
    assert reconcile.converge(memo, raw, {}, {}) == 3
    assert kube.objects[("Job", "demo-3")]["metadata"]["annotations"]["tooltune.dev/group-restarts"] == "1"
    told = [message for reason, message in events if reason == "GroupRestarting"]
    assert "(counted against" in told[0] and "(uncounted against" in told[1], told

    invalid = (
        "Container trainer for pod ns/demo-3-1-abcde failed with exit code 2 matching FailJob rule at index 0"
    )
    fail(kube, "demo-3", "PodFailurePolicy", invalid)
    raw["status"] = {"attempts": 3, "phase": "Failed"}
    assert reconcile.converge(memo, raw, {}, {}) == 3, "invalid data is not retried"


@pytest.mark.parametrize(
    ("age", "status", "converged"),
    [
        (1, {}, False),  # new and not reconciled yet: the create handler's turn
        (10, {}, True),  # older than 3 resync periods and still no status: its create was lost
        (1, {"phase": "Pending"}, True),
    ],
)
def test_the_resync_leaves_a_new_job_to_its_create_handler_then_makes_a_lost_create(
    monkeypatch: pytest.MonkeyPatch, age: int, status: dict[str, Any], converged: bool
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(reconcile, "converge", lambda *args, **kwargs: calls.append(args))
    raw = tooltunejob()
    raw["status"] = status
    raw["metadata"]["creationTimestamp"] = now_iso(datetime.now(UTC) - timedelta(seconds=age))
    asyncio.run(reconcile.resync(kopf.Memo(settings=Settings(resync_seconds=2.0)), raw, {}, {}, {}))
    assert bool(calls) is converged


def test_the_resync_loop_rounds_on_the_unfinished_jobs_and_survives_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One loop for the operator: each round resyncs what needs_resync watches (not a finished job) once
    it is older than a period (not a new one), and an API error of one job is logged, not the end of the
    loop."""
    rounds: list[str] = []

    async def resync(memo: Any, raw: dict[str, Any], *_: Any) -> None:
        rounds.append(raw["metadata"]["name"])
        if raw["metadata"]["name"] == "flaky":
            raise kopf.TemporaryError("API answered 500", delay=1)

    monkeypatch.setattr(reconcile, "resync", resync)
    owners = {}
    for name, phase in [("flaky", "Running"), ("done", "Succeeded"), ("running", "Running"), ("new", "")]:
        raw = tooltunejob()
        raw["metadata"]["name"], raw["status"] = name, {"phase": phase, "specGeneration": 1}
        raw["metadata"]["creationTimestamp"] = now_iso(datetime.now(UTC) - timedelta(seconds=60))
        owners[("default", name)] = [raw]

    async def two_rounds() -> None:
        loop = asyncio.create_task(
            reconcile.resync_forever(kopf.Memo(settings=Settings(resync_seconds=0.05)), owners, {}, {})
        )
        while len(rounds) < 4:
            await asyncio.sleep(0.01)
        loop.cancel()

    # younger than a period in every round (the rounds here are 50 ms apart)
    owners[("default", "new")][0]["metadata"]["creationTimestamp"] = now_iso(
        datetime.now(UTC) + timedelta(hours=1)
    )
    asyncio.run(asyncio.wait_for(two_rounds(), 5))
    assert rounds[:4] == ["flaky", "running", "flaky", "running"]
