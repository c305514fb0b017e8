"""The status writer: one patch per change, even when events arrive with a body that lags it."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from prometheus_client import CollectorRegistry
from tooltune_api import LABEL_ATTEMPT
from tooltune_operator.metrics import OperatorMetrics
from tooltune_operator.status_writer import StatusWriter, at_least
from tooltune_operator.views import job_view, pod_view

SPEC = {
    "baseModel": "Qwen/Qwen2.5-0.5B-Instruct",
    "dataset": {"train": "s3://bucket/train.jsonl"},
    "output": {"uri": "s3://bucket/out"},
}


class FakeKube:
    """Answers status patches like the API: the merged status, under a new resourceVersion."""

    def __init__(self, body: dict[str, Any]):
        self.body = copy.deepcopy(body)
        self.patches: list[dict[str, Any]] = []

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any], sub: str = ""
    ):
        self.patches.append(body["status"])
        self.body["status"] = {**self.body["status"], **body["status"]}
        self.body["metadata"]["resourceVersion"] = str(int(self.body["metadata"]["resourceVersion"]) + 1)
        return copy.deepcopy(self.body)


def tooltunejob() -> dict[str, Any]:
    return {
        "apiVersion": "tooltune.dev/v1alpha1",
        "kind": "ToolTuneJob",
        "metadata": {
            "name": "demo",
            "namespace": "ns",
            "uid": "u-1",
            "generation": 1,
            "resourceVersion": "7",
        },
        "spec": SPEC,
        "status": {},
    }


def job() -> dict[str, Any]:
    return job_view({"metadata": {"name": "demo-1", "labels": {LABEL_ATTEMPT: "1"}}, "status": {}})


def pod(phase: str) -> dict[str, Any]:
    return pod_view(
        {"metadata": {"name": "demo-1-x", "labels": {LABEL_ATTEMPT: "1"}}, "status": {"phase": phase}}
    )


def writer_of(body: dict[str, Any]) -> tuple[StatusWriter, FakeKube]:
    kube = FakeKube(body)
    return StatusWriter(kube, OperatorMetrics(CollectorRegistry())), kube  # type: ignore[arg-type]


def test_a_lagging_body_gets_no_duplicate_patch() -> None:
    stale = tooltunejob()
    writer, kube = writer_of(stale)
    writer.sync(writer.observe(stale, [job()], [pod("Pending")]))
    assert [p["phase"] for p in kube.patches] == ["Pending"]
    # Another event for the same job before the watch has delivered our patch: the same body again.
    writer.sync(writer.observe(stale, [job()], [pod("Pending")]))
    assert len(kube.patches) == 1
    # A real change seen from that stale body: only the change goes out, its transition times kept.
    writer.sync(writer.observe(stale, [job()], [pod("Running")]))
    assert [p["phase"] for p in kube.patches] == ["Pending", "Validating"]
    assert "observedGeneration" not in kube.patches[1]


def test_a_newer_body_is_read_as_it_is() -> None:
    body = tooltunejob()
    writer, kube = writer_of(body)
    writer.sync(writer.observe(body, [job()], [pod("Pending")]))
    newer = copy.deepcopy(kube.body)
    newer["status"]["phase"] = "Running"  # someone else's later write
    writer.sync(writer.observe(newer, [job()], [pod("Pending")]))
    assert [p["phase"] for p in kube.patches] == ["Pending", "Pending"]
    assert "u-1" in writer.patched


def test_forget_drops_what_is_kept_per_job() -> None:
    body = tooltunejob()
    body["status"] = {"phase": "Pending", "attempts": 1}
    writer, _ = writer_of(body)
    asyncio.run(writer.owner_event("MODIFIED", body, [job()], [pod("Pending")]))
    assert writer.patched and writer.reported and writer.phases
    asyncio.run(writer.owner_event("DELETED", body, None, None))
    assert not writer.patched and not writer.reported and not writer.phases


def test_a_new_jobs_first_status_is_left_to_the_reconciler() -> None:
    body = tooltunejob()  # no status yet: kopf's create handler has not run
    writer, kube = writer_of(body)
    asyncio.run(writer.owner_event("ADDED", body, None, None))
    assert kube.patches == [] and writer.phases == {("ns", "demo"): None}


def test_two_callers_racing_on_one_sighting_patch_once() -> None:
    body = tooltunejob()
    writer, kube = writer_of(body)
    first, second = (
        writer.observe(body, [job()], [pod("Pending")]),
        writer.observe(body, [job()], [pod("Pending")]),
    )
    writer.sync(first)  # the reconciler's thread
    writer.sync(second)  # an event handler that computed from the same body before the first patch returned
    assert len(kube.patches) == 1


def test_each_writer_keeps_its_own_state() -> None:
    body = tooltunejob()
    first, first_kube = writer_of(body)
    second, second_kube = writer_of(body)
    first.sync(first.observe(body, [job()], [pod("Pending")]))
    second.sync(second.observe(body, [job()], [pod("Pending")]))
    assert len(first_kube.patches) == len(second_kube.patches) == 1 and not second.patched.keys() - {"u-1"}


def test_a_body_older_than_the_last_answer_is_not_read() -> None:
    stale = tooltunejob()
    writer, kube = writer_of(stale)
    writer.sync(writer.observe(stale, [job()], [pod("Pending")]))
    writer.sync(writer.observe(stale, [job()], [pod("Running")]))
    between = copy.deepcopy(stale)
    between["metadata"]["resourceVersion"] = "8"  # the watch delivers the first patch, not yet the second
    between["status"] = {**kube.patches[0]}
    writer.sync(writer.observe(between, [job()], [pod("Running")]))
    assert [p["phase"] for p in kube.patches] == ["Pending", "Validating"]


def test_resource_versions_compare_as_revisions_when_they_are_numbers() -> None:
    assert at_least("10", "9") and at_least("9", "9") and not at_least("9", "10")
    assert at_least("abc", "abc") and not at_least("abd", "abc")


def test_the_job_the_reconciler_made_is_read_until_the_index_shows_it() -> None:
    """The echo of the reconciler's status patch often comes before the Job's own watch event: read from
    the index alone, the job would flap to "creating the training Job" and back (two more patches)."""
    lagging, _ = writer_of(tooltunejob())
    lagging.sync(lagging.observe(tooltunejob(), None, None))
    body = tooltunejob()
    writer, kube = writer_of(body)
    writer.made_job(body, job())
    writer.sync(writer.observe(body, None, None))
    assert [p["reason"] for p in lagging.kube.patches] == ["JobCreated"]  # type: ignore[attr-defined]
    assert [p["reason"] for p in kube.patches] == ["PodPending"]
    writer.observe(body, [job()], None)  # the index has caught up: nothing more is kept
    assert not writer.made
