"""Pod failures the kubelet and the scheduler see, as the user sees them on the ToolTuneJob within seconds;
and a job that must wait because another one writes to its output.

The test kubelet reports each failure as a real one does (tests/harness/kubelet.py): a missing ConfigMap
volume only as a FailedMount Event with an empty ContainerCreating message, a missing Secret as
CreateContainerConfigError, an unpullable image as ErrImagePull/ImagePullBackOff, a node without the GPU
as the scheduler's FailedScheduling, an OOM kill as OOMKilled, a node-pressure eviction as Evicted.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from tooltune_operator.settings import Settings

from tests.fixtures.cluster import K8s, operator_identity, operator_kube, scripted_spec
from tests.harness.emulator import EVENTS, JOBS, PODS, SECRETS, TTJ
from tests.harness.kopf_runner import KopfRunner
from tests.harness.kubelet import Kubelet, Node
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.integration

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
NS = "default"
MISSING_IMAGE = "registry.example/tooltune/trainer:does-not-exist"
SEEN_WITHIN = 10.0  # seconds from the kubelet's word to the ToolTuneJob's status and Event


@pytest.fixture
def node(k8s: K8s, tmp_path: Path) -> Iterator[Kubelet]:
    kubelet = Kubelet(
        k8s.cluster,
        tmp_path / "kubelet",
        executables={"tooltune": [sys.executable, str(FAKE_TRAINER)]},
        node=Node(allocatable={"cpu": "8", "memory": "32Gi", "pods": 110}),  # a CPU node: no nvidia.com/gpu
        unpullable_images={MISSING_IMAGE},
    ).start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


@pytest.fixture
def operator(k8s: K8s, node: Kubelet, kopf_operator: Callable[..., KopfRunner], tmp_path: Path) -> KopfRunner:
    """The operator under exactly the RBAC the manifests grant it (reading pod Events included)."""
    api, token = operator_identity(k8s, tmp_path)
    settings = Settings(
        trainer_image="tooltune/trainer:test",
        metrics_port=0,
        progress_interval_seconds=0,
        pod_events_seconds=0.5,
        resync_seconds=1,
    )
    memo = kopf.Memo(kube=operator_kube(api), settings=settings)
    return kopf_operator("tooltune_operator.handlers", memo=memo, token=token)


def status(k8s: K8s, name: str) -> dict[str, Any]:
    return (k8s.cluster.get(TTJ, NS, name) or {}).get("status") or {}


def blocked(k8s: K8s, name: str, reason: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        current = status(k8s, name)
        condition = next((c for c in current.get("conditions", []) if c["type"] == "Blocked"), {})
        ok = current.get("phase") == "Pending" and current.get("reason") == reason
        return current if ok and condition.get("status") == "True" and condition["reason"] == reason else None

    return check


def warning(k8s: K8s, name: str, reason: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        for event in k8s.cluster.list(EVENTS):
            involved = event.get("involvedObject", {})
            if (involved.get("kind"), involved.get("name")) == ("ToolTuneJob", name) and event[
                "reason"
            ] == reason:
                return event if event.get("type") == "Warning" else None
        return None

    return check


def pods_of(k8s: K8s, name: str) -> list[dict[str, Any]]:
    return [p for p in k8s.cluster.list(PODS) if p["metadata"]["labels"].get("tooltune.dev/job") == name]


def pod_of(k8s: K8s, name: str) -> dict[str, Any] | None:
    return next(iter(pods_of(k8s, name)), None)


def waiting_state(k8s: K8s, pod: dict[str, Any]) -> dict[str, Any] | None:
    current = k8s.cluster.get(PODS, NS, pod["metadata"]["name"]) or {}
    containers = current.get("status", {}).get("containerStatuses") or [{}]
    return containers[0].get("state", {}).get("waiting")


def test_a_missing_credentials_secret_says_so_and_how_to_fix_it_then_the_job_runs(
    k8s: K8s, operator: KopfRunner
) -> None:
    spec = scripted_spec(storage={"credentialsSecret": "s3-credentials"})
    k8s.create_tooltunejob("no-secret", spec)
    current = wait_for(blocked(k8s, "no-secret", "ConfigMissing"), SEEN_WITHIN, what="ConfigMissing",
                       describe=lambda: status(k8s, "no-secret"))  # fmt: skip
    assert 'secret "s3-credentials" not found' in current["message"]
    assert "will not appear by itself; create it" in current["message"]
    event = wait_for(warning(k8s, "no-secret", "ConfigMissing"), SEEN_WITHIN, what="a ConfigMissing Event")
    assert "s3-credentials" in event["message"]
    encoded = base64.b64encode(b"key").decode()
    k8s.cluster.create(
        SECRETS,
        {
            "metadata": {"name": "s3-credentials"},
            "data": {"AWS_ACCESS_KEY_ID": encoded, "AWS_SECRET_ACCESS_KEY": encoded},
        },
        NS,
    )
    wait_for(
        lambda: status(k8s, "no-secret").get("phase") == "Succeeded", 30, what="Succeeded once it exists"
    )
    final = status(k8s, "no-secret")
    assert next(c for c in final["conditions"] if c["type"] == "Blocked")["status"] == "False"


def test_a_missing_dataset_configmap_is_read_from_the_kubelets_failedmount_event(
    k8s: K8s, operator: KopfRunner
) -> None:
    k8s.create_tooltunejob("no-data", scripted_spec(dataset={"train": "configmap://task-data/train.jsonl"}))
    pod = wait_for(lambda: pod_of(k8s, "no-data"), SEEN_WITHIN, what="the pod")
    waiting = wait_for(lambda: waiting_state(k8s, pod), SEEN_WITHIN, what="the pod waiting")
    assert waiting == {"reason": "ContainerCreating"}, "a real kubelet says nothing more in the pod's status"
    current = wait_for(blocked(k8s, "no-data", "ConfigMissing"), SEEN_WITHIN, what="ConfigMissing",
                       describe=lambda: status(k8s, "no-data"))  # fmt: skip
    assert (
        'configmap "task-data" not found' in current["message"]
        and "ConfigMap task-data" in current["message"]
    )
    wait_for(warning(k8s, "no-data", "ConfigMissing"), SEEN_WITHIN, what="a ConfigMissing Event")


def test_an_image_that_cannot_be_pulled_is_named(k8s: K8s, operator: KopfRunner) -> None:
    k8s.create_tooltunejob("no-image", scripted_spec(image=MISSING_IMAGE))
    wait_for(blocked(k8s, "no-image", "ImagePullFailed"), SEEN_WITHIN, what="ImagePullFailed",
             describe=lambda: status(k8s, "no-image"))  # fmt: skip
    # the registry's answer is in the kubelet's Failed Event, the pod's status has only "Back-off pulling"
    detailed = f"cannot pull image {MISSING_IMAGE}: rpc error: code = NotFound"
    wait_for(lambda: detailed in status(k8s, "no-image").get("message", ""), SEEN_WITHIN, what=detailed,
             describe=lambda: status(k8s, "no-image"))  # fmt: skip
    wait_for(warning(k8s, "no-image", "ImagePullFailed"), SEEN_WITHIN, what="an ImagePullFailed Event")


def test_a_gpu_no_node_has_is_unschedulable_with_the_schedulers_words(k8s: K8s, operator: KopfRunner) -> None:
    k8s.create_tooltunejob("no-gpu", scripted_spec(resources={"gpus": 1}))
    current = wait_for(blocked(k8s, "no-gpu", "Unschedulable"), SEEN_WITHIN, what="Unschedulable",
                       describe=lambda: status(k8s, "no-gpu"))  # fmt: skip
    assert "0/1 nodes are available: 1 Insufficient nvidia.com/gpu." in current["message"]
    assert "resources.gpus" in current["message"]
    wait_for(warning(k8s, "no-gpu", "Unschedulable"), SEEN_WITHIN, what="an Unschedulable Event")


def test_an_oom_kill_is_an_event_and_the_failure_says_out_of_memory(
    k8s: K8s, operator: KopfRunner, node: Kubelet
) -> None:
    k8s.create_tooltunejob("oom", scripted_spec("run", backoffLimit=0))
    wait_for(lambda: status(k8s, "oom").get("phase") == "Running", SEEN_WITHIN, what="Running")
    pod = pod_of(k8s, "oom")
    assert pod is not None
    node.oom_kill(pod["metadata"]["name"])
    event = wait_for(warning(k8s, "oom", "OOMKilled"), SEEN_WITHIN, what="an OOMKilled Event")
    assert "ran out of memory" in event["message"] and "resources.memory" in event["message"]
    wait_for(lambda: status(k8s, "oom").get("phase") == "Failed", SEEN_WITHIN, what="Failed")
    assert "ran out of memory (OOMKilled, exit code 137)" in status(k8s, "oom")["failureReason"]


def test_a_node_pressure_eviction_is_an_event_and_the_job_carries_on(
    k8s: K8s, operator: KopfRunner, node: Kubelet
) -> None:
    k8s.create_tooltunejob("evicted", scripted_spec("run", backoffLimit=0))
    wait_for(lambda: status(k8s, "evicted").get("phase") == "Running", SEEN_WITHIN, what="Running")
    first = pod_of(k8s, "evicted")
    assert first is not None
    node.evict_for_node_pressure(first["metadata"]["name"])
    event = wait_for(warning(k8s, "evicted", "Evicted"), SEEN_WITHIN, what="an Evicted Event")
    assert "The node was low on resource: memory." in event["message"]
    first_name = first["metadata"]["name"]
    wait_for(
        lambda: any(
            p["metadata"]["name"] != first_name and p.get("status", {}).get("phase") == "Running"
            for p in pods_of(k8s, "evicted")
        ),
        SEEN_WITHIN,
        what="a new pod (an eviction is not counted against backoffLimit)",
    )
    running = lambda: status(k8s, "evicted").get("phase") in {"Running", "Validating"}  # noqa: E731
    wait_for(running, SEEN_WITHIN, what="the job running again", describe=lambda: status(k8s, "evicted"))


def test_a_second_writer_of_one_output_waits_for_the_first_and_is_told_which(
    k8s: K8s, operator: KopfRunner, node: Kubelet
) -> None:
    k8s.create_tooltunejob(
        "first", scripted_spec("run", backoffLimit=0, output={"uri": "s3://models/shared/"})
    )
    wait_for(lambda: status(k8s, "first").get("phase") == "Running", SEEN_WITHIN, what="the first Running")
    k8s.create_tooltunejob("second", scripted_spec(output={"uri": "s3://models/shared/run-2"}))  # nested
    current = wait_for(blocked(k8s, "second", "OutputInUse"), SEEN_WITHIN, what="OutputInUse",
                       describe=lambda: status(k8s, "second"))  # fmt: skip
    assert "ToolTuneJob default/first, which has not finished" in current["message"]
    event = wait_for(warning(k8s, "second", "OutputInUse"), SEEN_WITHIN, what="an OutputInUse Event")
    assert "default/first" in event["message"]
    assert pods_of(k8s, "second") == [] and k8s.cluster.get(JOBS, NS, "second-1") is None
    first = pod_of(k8s, "first")
    assert first is not None
    node.oom_kill(first["metadata"]["name"])  # the first job fails for good (backoffLimit 0)
    wait_for(lambda: status(k8s, "first").get("phase") == "Failed", SEEN_WITHIN, what="the first Failed")
    succeeded = lambda: status(k8s, "second").get("phase") == "Succeeded"  # noqa: E731
    wait_for(
        succeeded, 20, what="the second job, once the output is free", describe=lambda: status(k8s, "second")
    )
