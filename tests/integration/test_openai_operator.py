"""The OpenAI backend through the operator: ToolTuneJob → Job → submitter pod (test kubelet) → remote job.

The operator (tooltune_operator.handlers under kopf) runs against the API emulator; the test kubelet runs
the pod's ``tooltune submit`` as a local process, with OPENAI_API_KEY taken from the Secret; the pod
talks to the local fine-tuning API server and reports status back to the emulator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf
import pytest
from tooltune_api import GROUP, PLURAL, VERSION
from tooltune_operator.settings import Settings

from tests.fakes.openai_api import FakeOpenAI, Lifecycle
from tests.fakes.task_api import write_dataset
from tests.fixtures.cluster import operator_identity, operator_kube
from tests.harness.emulator import EVENTS, PODS, TTJ
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.integration

NS = "default"
NAME = "task-api-openai"
SECRET = "openai-api-key"
POD_START_SECONDS = 120  # the pod imports the trainer package; generous on a loaded machine


def start_operator(k8s, kopf_operator, tmp_path, **settings: Any) -> None:
    """The operator under the RBAC the manifests grant it (no Secrets)."""
    settings = Settings(metrics_port=0, trainer_metrics_port=0, progress_interval_seconds=0.2, **settings)
    api, token = operator_identity(k8s, tmp_path)
    kopf_operator(
        "tooltune_operator.handlers", memo=kopf.Memo(settings=settings, kube=operator_kube(api)), token=token
    )


@pytest.fixture
def cluster(k8s, kubelet, kopf_operator, tmp_path):
    """The emulated cluster with the operator and the test kubelet (it runs `tooltune` from this checkout)."""
    start_operator(k8s, kopf_operator, tmp_path)
    return k8s


def tooltunejob(tmp_path: Path, server: FakeOpenAI) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ToolTuneJob",
        "metadata": {"name": NAME},
        "spec": {
            "backend": "openai",
            "baseModel": "gpt-4o-mini-2024-07-18",
            "dataset": {"train": str(write_dataset(tmp_path / "data" / "train.jsonl"))},
            "output": {"uri": str(tmp_path / "models" / NAME)},
            "resources": {"gpus": 0},
            "backoffLimit": 0,
            "openai": {
                "model": "gpt-4o-mini-2024-07-18",
                "apiKeySecret": {"name": SECRET},
                "baseUrl": server.base_url,
                "suffix": "task-api",
                "pollSeconds": 1,
            },
        },
    }


def create(k8s, body: dict[str, Any], api_key: str) -> None:
    k8s.core.create_namespaced_secret(
        NS, {"metadata": {"name": SECRET}, "stringData": {"OPENAI_API_KEY": api_key}, "type": "Opaque"}
    )
    k8s.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)


def status(k8s) -> dict[str, Any]:
    return (k8s.cluster.get(TTJ, NS, NAME) or {}).get("status") or {}


def events_of(k8s) -> list[dict[str, Any]]:
    return [e for e in k8s.cluster.list(EVENTS) if e.get("involvedObject", {}).get("name") == NAME]


def test_remote_job_success_reaches_the_resource_status(cluster, openai_server, tmp_path):
    openai_server.lifecycle = Lifecycle(running_polls=3, steps_per_poll=20)
    create(cluster, tooltunejob(tmp_path, openai_server), openai_server.api_key)

    final = wait_for(
        lambda: status(cluster) if status(cluster).get("phase") in {"Succeeded", "Failed"} else None,
        POD_START_SECONDS,
        what="the ToolTuneJob to finish",
        describe=lambda: status(cluster),
    )

    assert final["phase"] == "Succeeded", final
    job = openai_server.job()
    assert final["openai"]["fineTunedModel"] == job["fine_tuned_model"]
    assert final["openai"]["trainedTokens"] == 48_210
    assert final["openai"]["shutdownDate"] == openai_server.models["gpt-4o-mini-2024-07-18"]["shutdown_date"]
    assert final["cost"]["pricePerMillionTokens"] == 3.0 and final["cost"]["trainingTokens"] > 0
    assert (final["cost"]["billedTokens"], final["cost"]["billedUsd"]) == (48_210, 0.1446)
    # the fake's models shut down in 44 days, as OpenAI's did on 2026-12-01: the run warns, then goes on
    [warning] = [e for e in events_of(cluster) if e["reason"] == "ModelShutdownNear"]
    assert warning["type"] == "Warning" and "backend: unsloth" in warning["message"]
    assert final["progress"]["step"] == final["progress"]["totalSteps"] == 60
    assert final["progress"]["trainLoss"] > 0
    assert openai_server.jobs_created == 1
    assert job["metadata"]["tooltune-uid"] == cluster.cluster.get(TTJ, NS, NAME)["metadata"]["uid"]


def test_a_service_refusing_new_jobs_fails_the_resource_with_the_way_out(cluster, openai_server, tmp_path):
    """OpenAI takes no new fine-tuning jobs from 2027-01-06: the pod exits 2, the reason names the way out."""
    openai_server.refuse_jobs = True
    create(cluster, tooltunejob(tmp_path, openai_server), openai_server.api_key)

    final = wait_for(
        lambda: status(cluster) if status(cluster).get("phase") in {"Succeeded", "Failed"} else None,
        POD_START_SECONDS,
        what="the ToolTuneJob to fail",
        describe=lambda: status(cluster),
    )

    assert final["phase"] == "Failed", final
    message = final.get("message", "") + final.get("failureReason", "")
    assert "the fine-tuning service refused to create a job (403)" in message
    assert "backend: unsloth, baseModel: unsloth/Qwen2.5-7B-Instruct-bnb-4bit" in message
    assert final["cost"]["estimatedUsd"] > 0  # the estimate was in status before anything was paid for
    assert openai_server.jobs_created == 0
    assert len(cluster.cluster.list(PODS, NS, labels=f"job-name={NAME}-1")) == 1  # exit 2: no retry


def test_deleting_the_resource_cancels_the_running_remote_job(cluster, openai_server, tmp_path):
    openai_server.lifecycle = Lifecycle(outcome="running")
    create(cluster, tooltunejob(tmp_path, openai_server), openai_server.api_key)
    wait_for(
        lambda: openai_server.jobs and status(cluster).get("openai", {}).get("jobId"),
        POD_START_SECONDS,
        what="the submitter to report its remote job",
        describe=lambda: status(cluster),
    )

    job_id = status(cluster)["openai"]["jobId"]

    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)

    wait_for(
        lambda: cluster.cluster.get(TTJ, NS, NAME) is None,
        POD_START_SECONDS,
        what="the ToolTuneJob to be gone",
        describe=lambda: [(e["reason"], e["message"]) for e in events_of(cluster)],
    )
    assert openai_server.job()["status"] == "cancelled"
    assert openai_server.cancel_requests == 1
    # cancelled by a pod of its own, with the key from the Secret: the operator may not read Secrets
    [cancelled] = [e for e in events_of(cluster) if e["reason"] == "RemoteJobCancelled"]
    assert cancelled["message"] == f"OpenAI job {job_id} cancelled (deleted)"


def test_a_cancel_pod_that_cannot_start_lets_the_deletion_go_with_a_warning(
    k8s, kubelet, kopf_operator, openai_server, tmp_path
):
    """The Secret went first: the cancel pod waits for it until its deadline; the deletion then goes on, and
    the user is told which remote job still runs."""
    start_operator(k8s, kopf_operator, tmp_path, remote_cancel_seconds=3)
    openai_server.lifecycle = Lifecycle(outcome="running")
    create(k8s, tooltunejob(tmp_path, openai_server), openai_server.api_key)
    wait_for(
        lambda: openai_server.jobs and status(k8s).get("openai", {}).get("jobId"),
        POD_START_SECONDS,
        what="the submitter to report its remote job",
    )
    job_id = status(k8s)["openai"]["jobId"]
    k8s.core.delete_namespaced_secret(SECRET, NS)

    k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, NAME)

    wait_for(lambda: k8s.cluster.get(TTJ, NS, NAME) is None, 60, what="the ToolTuneJob to be gone")
    [warning] = [e for e in events_of(k8s) if e["reason"] == "RemoteCancelFailed"]
    assert warning["type"] == "Warning"
    assert f"did not cancel OpenAI job {job_id} (DeadlineExceeded" in warning["message"]
    assert "cancel it with the provider" in warning["message"]
    assert openai_server.job(job_id)["status"] != "cancelled" and openai_server.cancel_requests == 0


def test_a_bad_key_fails_the_resource_naming_the_secret(cluster, openai_server, tmp_path):
    create(cluster, tooltunejob(tmp_path, openai_server), "sk-not-the-right-key")

    final = wait_for(
        lambda: status(cluster) if status(cluster).get("phase") in {"Succeeded", "Failed"} else None,
        POD_START_SECONDS,
        what="the ToolTuneJob to fail",
        describe=lambda: status(cluster),
    )

    assert final["phase"] == "Failed"
    message = final.get("message", "") + final.get("failureReason", "")
    assert f"Secret {SECRET} (key OPENAI_API_KEY) was rejected (401)" in message
    assert "sk-not-the-right-key" not in str(final)
    assert openai_server.files_uploaded == openai_server.jobs_created == 0


@pytest.mark.slow
def test_a_lost_pod_is_replaced_and_resumes_the_same_remote_job(cluster, kubelet, openai_server, tmp_path):
    """Node disruption kills the submitter; the next pod finds the remote job instead of paying twice."""
    openai_server.lifecycle = Lifecycle(running_polls=10, steps_per_poll=10)
    create(cluster, tooltunejob(tmp_path, openai_server), openai_server.api_key)
    wait_for(
        lambda: openai_server.jobs and openai_server.job()["status"] == "running",
        POD_START_SECONDS,
        what="the remote job to run",
    )
    [pod] = cluster.cluster.list(PODS, NS, labels=f"job-name={NAME}-1")
    kubelet.kill_pod(pod["metadata"]["name"], NS)

    final = wait_for(
        lambda: status(cluster) if status(cluster).get("phase") in {"Succeeded", "Failed"} else None,
        POD_START_SECONDS,
        what="the ToolTuneJob to finish",
        describe=lambda: status(cluster),
    )

    assert final["phase"] == "Succeeded", final
    assert len(cluster.cluster.list(PODS, NS, labels=f"job-name={NAME}-1")) == 2
    assert openai_server.jobs_created == 1
    assert openai_server.files_uploaded == 2


@pytest.mark.slow
def test_suspend_cancels_the_remote_job_and_resume_starts_a_new_one(cluster, openai_server, tmp_path):
    openai_server.lifecycle = Lifecycle(outcome="running")
    create(cluster, tooltunejob(tmp_path, openai_server), openai_server.api_key)
    wait_for(
        lambda: openai_server.jobs and status(cluster).get("openai", {}).get("jobId"),
        POD_START_SECONDS,
        what="the submitter to report its remote job",
    )
    first = openai_server.job()["id"]

    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, NAME, {"spec": {"suspend": True}}
    )

    wait_for(
        lambda: openai_server.job(first)["status"] == "cancelled",
        POD_START_SECONDS,
        what="the remote job to be cancelled",
    )
    cancelled = wait_for(
        lambda: [e["message"] for e in events_of(cluster) if e["reason"] == "RemoteJobCancelled"],
        30,
        what="the cancel pod's Event",
    )
    assert cancelled == [f"OpenAI job {first} cancelled (suspended)"]
    wait_for(
        lambda: status(cluster).get("phase") == "Suspended",
        30,
        what="phase Suspended",
        describe=lambda: status(cluster),
    )

    openai_server.lifecycle = Lifecycle(running_polls=2)
    cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, NAME, {"spec": {"suspend": False}}
    )

    final = wait_for(
        lambda: (
            status(cluster) if status(cluster).get("phase") in {"Succeeded", "Failed", "Cancelled"} else None
        ),
        POD_START_SECONDS,
        what="the resumed ToolTuneJob to finish",
        describe=lambda: status(cluster),
    )
    assert final["phase"] == "Succeeded", final
    assert openai_server.jobs_created == 2
    assert final["openai"]["jobId"] != first
