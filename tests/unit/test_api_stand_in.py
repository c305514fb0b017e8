"""The emulator refuses what a real API server refuses that the operator could run into
(tests/harness/validation.py): checked here against the API server's own rules and messages."""

from __future__ import annotations

import copy
from typing import Any

from tests.harness.validation import (
    MAX_GENERATED_PREFIX,
    generated_name,
    invalid_message,
    job_update_problems,
    name_problems,
    object_problems,
)


def job(suspend: bool = False, started: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "demo-1", "labels": {"tooltune.dev/job": "demo"}},
        "spec": {
            "suspend": suspend,
            "backoffLimit": 3,
            "template": {
                "metadata": {"labels": {"tooltune.dev/job": "demo"}},
                "spec": {"containers": [{"name": "trainer", "image": "a:1"}], "nodeSelector": {"a": "b"}},
            },
        },
        "status": {"startTime": "2026-11-25T10:00:00Z"} if started else {},
    }


def test_names_are_dns_subdomains_of_at_most_253_bytes() -> None:
    assert name_problems("a" * 253) == [] and name_problems("team.fine-tunes.v1") == []
    assert "must be no more than 253 bytes" in name_problems("a" * 254)[0]
    assert "lowercase RFC 1123 subdomain" in name_problems("Demo")[0]


def test_generate_name_prefixes_are_cut_to_leave_room_for_the_suffix() -> None:
    name = generated_name("x" * 80, "abcde")
    assert len(name) == MAX_GENERATED_PREFIX + 5 == 63 and name.endswith("abcde")


def test_a_jobs_pod_template_cannot_change_once_it_started() -> None:
    before = job()
    after = copy.deepcopy(before)
    after["spec"]["template"]["spec"]["containers"][0]["image"] = "a:2"
    assert job_update_problems(before, after) == [
        "spec.template: Invalid value: core.PodTemplateSpec{...}: field is immutable"
    ]
    after = copy.deepcopy(before)
    after["spec"]["suspend"] = True  # suspend and backoffLimit may change
    after["spec"]["backoffLimit"] = 5
    assert job_update_problems(before, after) == []


def test_a_suspended_job_that_never_started_may_change_its_scheduling_directives_only() -> None:
    before = job(suspend=True, started=False)
    after = copy.deepcopy(before)
    after["spec"]["template"]["spec"]["nodeSelector"] = {"gpu": "a100"}  # what Kueue does on admission
    assert job_update_problems(before, after) == []
    after["spec"]["template"]["spec"]["containers"][0]["image"] = "a:2"
    assert job_update_problems(before, after) != []


def test_the_message_is_the_api_servers() -> None:
    refused = job()
    refused["spec"]["template"]["metadata"]["labels"]["tooltune.dev/job"] = "j" * 64
    assert invalid_message(refused, object_problems(refused)) == (
        f'Job.batch "demo-1" is invalid: spec.template.labels: Invalid value: "{"j" * 64}": '
        "must be no more than 63 bytes"
    )
