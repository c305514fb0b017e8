"""Status sync in the handlers: one patch per change, even when events arrive with a body that lags it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from tooltune_api import LABEL_ATTEMPT
from tooltune_operator import handlers
from tooltune_operator.handlers import at_least, observe, sync_status
from tooltune_operator.status import job_view, pod_view

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


# handlers.PATCHED, never an imported name: the test operator reloads the handlers module, which rebinds
# its globals.
@pytest.fixture(autouse=True)
def _clean() -> Any:
    handlers.PATCHED.clear()
    handlers.REPORTED.clear()
    yield
    handlers.PATCHED.clear()
    handlers.REPORTED.clear()


def test_a_lagging_body_gets_no_duplicate_patch() -> None:
    stale = tooltunejob()
    kube = FakeKube(stale)
    sync_status(kube, observe(stale, [job()], [pod("Pending")]))
    assert [p["phase"] for p in kube.patches] == ["Pending"]
    # Another event for the same job before the watch has delivered our patch: the same body again.
    sync_status(kube, observe(stale, [job()], [pod("Pending")]))
    assert len(kube.patches) == 1
    # A real change seen from that stale body: only the change goes out, its transition times kept.
    sync_status(kube, observe(stale, [job()], [pod("Running")]))
    assert [p["phase"] for p in kube.patches] == ["Pending", "Validating"]
    assert "observedGeneration" not in kube.patches[1]


def test_a_newer_body_is_read_as_it_is() -> None:
    body = tooltunejob()
    kube = FakeKube(body)
    sync_status(kube, observe(body, [job()], [pod("Pending")]))
    newer = copy.deepcopy(kube.body)
    newer["status"]["phase"] = "Running"  # someone else's later write
    sync_status(kube, observe(newer, [job()], [pod("Pending")]))
    assert [p["phase"] for p in kube.patches] == ["Pending", "Pending"]
    assert "u-1" in handlers.PATCHED


def test_forget_drops_what_is_kept_per_job() -> None:
    body = tooltunejob()
    sync_status(FakeKube(body), observe(body, [job()], [pod("Pending")]))
    memo: dict[str, Any] = {"phases": {("ns", "demo"): "Pending"}}
    handlers.forget(memo, ("ns", "demo"), "u-1")  # type: ignore[arg-type]
    assert not handlers.PATCHED and not handlers.REPORTED and not memo["phases"]


def test_a_body_older_than_the_last_answer_is_not_read() -> None:
    stale = tooltunejob()
    kube = FakeKube(stale)
    sync_status(kube, observe(stale, [job()], [pod("Pending")]))
    sync_status(kube, observe(stale, [job()], [pod("Running")]))
    between = copy.deepcopy(stale)
    between["metadata"]["resourceVersion"] = "8"  # the watch delivers the first patch, not yet the second
    between["status"] = {**kube.patches[0]}
    sync_status(kube, observe(between, [job()], [pod("Running")]))
    assert [p["phase"] for p in kube.patches] == ["Pending", "Validating"]


def test_resource_versions_compare_as_revisions_when_they_are_numbers() -> None:
    assert at_least("10", "9") and at_least("9", "9") and not at_least("9", "10")
    assert at_least("abc", "abc") and not at_least("abd", "abc")
