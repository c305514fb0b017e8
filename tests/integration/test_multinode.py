"""Two nodes: a ToolTuneJob with resources.nodes: 2 trains as two pods of one Indexed Job, and a crash of
one pod restarts the whole group from the newest checkpoint.

The real operator runs against the emulated API; the test kubelet plays the Job controller for Indexed
Jobs (a pod per index, hostname <job>-<index>, the completion index) and resolves the pods' names under
the headless Service the operator creates to the loopback address, so the two pods' `tooltune train`
(torchrun's agent, one worker each, gloo) rendezvous on 127.0.0.1 as two nodes would over the network.
Storage is a real SeaweedFS server. `run_group` is also the benchmark of the restart's cost
(benchmarks/group_restart.py).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
from tooltune_operator.settings import Settings

from tests.fixtures.cluster import K8s, operator_identity, operator_kube, scripted_spec
from tests.fixtures.s3 import S3Server
from tests.fixtures.tiny import tool_calling_dataset
from tests.harness.emulator import EVENTS, JOBS, PODS, SECRETS, SERVICES, TTJ, RunningCluster
from tests.harness.kopf_runner import KopfRunner
from tests.harness.kubelet import COMPLETION_INDEX, Kubelet
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.integration
FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")

NS = "default"
NAME = "two-nodes"
EVERY = 4  # checkpoint interval, in steps
RUN_TIMEOUT = 600  # four processes importing torch (two agents, two workers) on a busy 2-core machine
# a resume from a checkpoint, then a logged training step
RESUMED_AND_STEPPED = re.compile(r"resuming from s3://\S+/checkpoints/step-(\d+)(?s:.*)'epoch'")


def job_spec(bucket: str, endpoint: str) -> dict[str, Any]:
    return {
        "baseModel": "tooltune/tiny-llama",
        "dataset": {"train": f"s3://{bucket}/data/train.jsonl", "validationSplit": 0.1},
        "hyperparameters": {
            "epochs": 2,
            "batchSize": 2,
            "gradientAccumulationSteps": 1,
            "learningRate": 3e-3,
            "maxSeqLength": 256,
            "loggingSteps": 1,
            "lora": {"r": 8, "alpha": 16},
        },
        "checkpoints": {"everySteps": EVERY, "keep": 2},
        "evaluation": {
            "everySteps": EVERY,
            "maxExamples": 4,
            "smokePrompts": [],
        },  # the restart is under test
        "output": {"uri": f"s3://{bucket}/models/{NAME}/"},
        "storage": {"endpoint": endpoint, "credentialsSecret": "s3-credentials"},
        "resources": {"gpus": 0, "nodes": 2},
        "backoffLimit": 2,
    }


@dataclass
class GroupRun:
    """What one run showed: the moments of the restart (seconds after the kill) and what to assert."""

    checkpoint_at_kill: int = 0
    resumed_at: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # restart stage → seconds after the kill
    final: dict[str, Any] = field(default_factory=dict)  # the ToolTuneJob's final status
    first_pods: list[str] = field(default_factory=list)
    second_pods: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)


def group_pods(cluster: RunningCluster, attempt: int) -> list[dict[str, Any]]:
    """The attempt's pods, by completion index."""
    pods = [
        p
        for p in cluster.list(PODS, NS)
        if p["metadata"]["labels"].get("tooltune.dev/job") == NAME
        and p["metadata"]["labels"].get("tooltune.dev/attempt") == str(attempt)
    ]
    return sorted(pods, key=lambda p: int(p["metadata"]["annotations"][COMPLETION_INDEX]))


def running(cluster: RunningCluster, attempt: int) -> list[str]:
    pods = group_pods(cluster, attempt)
    if len(pods) == 2 and all((p.get("status") or {}).get("phase") == "Running" for p in pods):
        return [p["metadata"]["name"] for p in pods]
    return []


def run_group(
    cluster: RunningCluster,
    api: kubernetes.client.ApiClient,
    s3_server: S3Server,
    root: Path,
    start_operator: Callable[..., KopfRunner],
) -> GroupRun:
    """Train a two-node job; once a checkpoint is in the bucket, SIGKILL rank 1's pod (a crash: counted);
    follow the group's restart and the run to its end."""
    bucket = s3_server.create_bucket("nodes")
    lines = "".join(json.dumps(example) + "\n" for example in tool_calling_dataset(48))
    s3_server.client().put_object(Bucket=bucket, Key="data/train.jsonl", Body=lines.encode())
    cluster.create(SECRETS, s3_server.credentials_secret("s3-credentials"), NS)
    kubelet = Kubelet(cluster, root / "kubelet").start()
    run = GroupRun()
    try:
        settings = Settings(metrics_port=0, trainer_metrics_port=0, progress_interval_seconds=1)
        start_operator(
            "tooltune_operator.handlers", memo=kopf.Memo(kube=operator_kube(api), settings=settings)
        )
        kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
            "tooltune.dev", "v1alpha1", NS, "tooltunejobs",
            {"apiVersion": "tooltune.dev/v1alpha1", "kind": "ToolTuneJob", "metadata": {"name": NAME},
             "spec": job_spec(bucket, s3_server.endpoint)},
        )  # fmt: skip
        status = lambda: (cluster.get(TTJ, NS, NAME) or {}).get("status", {})  # noqa: E731

        wait_for(
            lambda: (status().get("checkpoints") or {}).get("latestStep", 0) >= EVERY and running(cluster, 1),
            timeout=RUN_TIMEOUT, what="a checkpoint while both pods train", describe=status, interval=0.2,
        )  # fmt: skip
        run.first_pods = running(cluster, 1)
        run.checkpoint_at_kill = status()["checkpoints"]["latestStep"]
        killed = time.monotonic()
        kubelet.kill_pod(run.first_pods[1], NS, disruption=False)  # rank 1 crashes

        def since_kill(stage: str, predicate: Callable[[], Any], timeout: float = 120) -> Any:
            found = wait_for(predicate, timeout=timeout, what=stage, describe=status, interval=0.1)
            run.seconds[stage] = time.monotonic() - killed
            return found

        since_kill(
            "first Job Failed (every pod stopped)", lambda: _failed(cluster.get(JOBS, NS, f"{NAME}-1"))
        )
        since_kill("second attempt's Job created", lambda: cluster.get(JOBS, NS, f"{NAME}-2"))
        run.second_pods = since_kill("both new pods running", lambda: running(cluster, 2))
        leader = run.second_pods[0]
        resumed = since_kill(
            "training again (a step logged after resuming)",
            lambda: RESUMED_AND_STEPPED.search(kubelet.logs(leader)),
            timeout=RUN_TIMEOUT,
        )
        run.resumed_at = int(resumed.group(1))
        wait_for(
            lambda: status().get("phase") in {"Succeeded", "Failed"}, timeout=RUN_TIMEOUT, what="the end",
            describe=lambda: (status(), kubelet.logs(leader)[-3000:]), interval=0.5,
        )  # fmt: skip
        run.final = status()
        run.services = [s["metadata"]["name"] for s in cluster.list(SERVICES, NS)]
        run.events = [e for e in cluster.list(EVENTS, NS) if e["involvedObject"].get("name") == NAME]
        run.jobs = {j["metadata"]["name"]: j for j in cluster.list(JOBS, NS)}
        run.logs = {pod: kubelet.logs(pod, NS) for pod in run.first_pods + run.second_pods}
        return run
    finally:
        kubelet.stop()


def _failed(job: dict[str, Any] | None) -> bool:
    return any(
        c["type"] == "Failed" and c["status"] == "True"
        for c in (job or {}).get("status", {}).get("conditions", [])
    )


@pytest.mark.slow
def test_two_pods_train_as_two_nodes_and_a_crash_restarts_the_group_from_the_checkpoint(
    k8s: Any, s3_server: S3Server, kopf_operator: Callable[..., KopfRunner], tmp_path: Path
) -> None:
    run = run_group(k8s.cluster, k8s.api, s3_server, tmp_path, kopf_operator)

    assert run.final["phase"] == "Succeeded", run.final
    assert (run.final["attempts"], run.final["retries"]) == (2, 1), "one crash: one counted group restart"
    assert run.final["workers"] == "2xCPU"
    first = run.jobs[f"{NAME}-1"]
    assert (first["spec"]["completionMode"], first["spec"]["completions"]) == ("Indexed", 2)
    assert run.jobs[f"{NAME}-2"]["metadata"]["annotations"]["tooltune.dev/group-restarts"] == "1"
    assert {f"{NAME}-1", f"{NAME}-2"} <= set(run.services)
    # Both ranks ran torchrun's static rendezvous at rank 0's pod name, which resolved here.
    for pod in run.first_pods:
        assert "world size 2" in run.logs[pod], run.logs[pod][-2000:]
    # The group came back from the newest complete checkpoint: no step lost beyond it.
    assert run.resumed_at is not None and run.resumed_at >= run.checkpoint_at_kill, run
    restarts = [e for e in run.events if e["reason"] == "GroupRestarting"]
    assert restarts and "counted" in restarts[0]["message"], run.events
    print("group restart, seconds after the kill:", json.dumps(run.seconds, indent=1))


@pytest.fixture
def scripted(k8s: K8s, tmp_path: Path) -> Iterator[Kubelet]:
    """A kubelet whose pods run tests/integration/fake_trainer.py's script instead of training."""
    executables = {"tooltune": [sys.executable, str(FAKE_TRAINER)]}
    node = Kubelet(k8s.cluster, tmp_path / "kubelet", executables=executables).start()
    try:
        yield node
    finally:
        node.stop()


def test_under_the_operators_rbac_an_eviction_restarts_the_group_uncounted_and_crashes_use_up_its_backoff(
    k8s: K8s, scripted: Kubelet, kopf_operator: Callable[..., KopfRunner], tmp_path: Path
) -> None:
    api, token = operator_identity(k8s, tmp_path)  # exactly the RBAC the manifests grant the operator
    settings = Settings(trainer_image="tooltune/trainer:test", metrics_port=0, progress_interval_seconds=0)
    kopf_operator(
        "tooltune_operator.handlers", memo=kopf.Memo(kube=operator_kube(api), settings=settings), token=token
    )
    spec = scripted_spec("run", resources={"gpus": 0, "nodes": 2}, backoffLimit=1)
    k8s.create_tooltunejob(NAME, spec)
    status = lambda: (k8s.cluster.get(TTJ, NS, NAME) or {}).get("status", {})  # noqa: E731

    def training(attempt: int) -> list[str]:
        now = status()
        return (
            now.get("attempts") == attempt
            and now.get("reason") == "Training"
            and running(k8s.cluster, attempt)
        )

    first = wait_for(lambda: training(1), timeout=30, what="attempt 1 training on both pods", describe=status)
    assert status()["workers"] == "2xCPU" and status()["phase"] == "Running"
    service = k8s.cluster.get(SERVICES, NS, f"{NAME}-1")
    assert service["spec"]["clusterIP"] == "None"
    assert [o["kind"] for o in service["metadata"]["ownerReferences"]] == ["Job"]

    scripted.evict_pod(first[1], NS)  # a node drain: the group restarts, not counted
    second = wait_for(lambda: training(2), timeout=30, what="attempt 2 training", describe=status)
    assert status()["retries"] == 0
    assert scripted.exit_code(first[0], NS) is not None, "the old group's other pod was stopped"

    scripted.kill_pod(second[0], NS, disruption=False)  # a crash: counted, 1 of backoffLimit 1
    third = wait_for(lambda: training(3), timeout=30, what="attempt 3 training", describe=status)
    assert status()["retries"] == 1

    scripted.kill_pod(third[1], NS, disruption=False)  # no restart left
    wait_for(lambda: status().get("phase") == "Failed", timeout=30, what="Failed", describe=status)
    assert (status()["reason"], status()["attempts"], status()["retries"]) == ("BackoffLimitExceeded", 3, 1)
    reasons = [e["reason"] for e in k8s.cluster.list(EVENTS, NS) if e["involvedObject"].get("name") == NAME]
    told = [
        (e["reason"], e["message"])
        for e in k8s.cluster.list(EVENTS, NS)
        if e["involvedObject"].get("name") == NAME
    ]
    assert reasons.count("GroupRestarting") == 2, "\n".join(map(str, told))
