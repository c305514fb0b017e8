"""The operator with Kueue: queued, admitted, preempted and requeued Jobs, against the emulated Kueue.

The operator runs under exactly the RBAC the manifests grant it (plus manifests/kueue/, what Helm's
kueue.enabled adds); Kueue is tests/harness/kueue.py, the pods are the test kubelet's. The scripted tests
use tests/integration/fake_trainer.py's `run` (progress, then run until killed); the last test trains the
built-in tiny model for real against SeaweedFS and is preempted mid-training.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from tooltune_operator import handlers
from tooltune_operator.settings import Settings

from tests.fixtures.cluster import K8s, operator_identity, operator_kube, scripted_spec
from tests.fixtures.s3 import S3Server
from tests.fixtures.tiny import tool_calling_dataset
from tests.harness.emulator import EVENTS, JOBS, PODS, SECRETS, TTJ
from tests.harness.kopf_runner import KopfRunner, copy_handlers
from tests.harness.kubelet import DEFAULT_ALLOCATABLE, Kubelet, Node
from tests.harness.kueue import LABEL_JOB_UID, LABEL_PRIORITY, LABEL_QUEUE, WORKLOADS, ClusterQueue, Kueue
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.integration

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
NS = "default"
QUEUE = "user-queue"
SEEN_WITHIN = 15.0
POOL = {"cloud.example/pool": "training"}
TOLERATION = {"key": "training", "operator": "Exists", "effect": "NoSchedule"}
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
# The node the ClusterQueue's flavor selects (untainted: Jobs Kueue does not manage run on it too).
POOL_NODE = Node(allocatable=dict(DEFAULT_ALLOCATABLE), labels=POOL)


def kueue_operator() -> None:
    """The operator's handlers with the Workload watch, as __main__ registers them with Kueue support on."""
    registry = kopf.get_default_registry()
    copy_handlers(handlers.registry, registry)
    handlers.watch_workloads(registry)


@pytest.fixture
def kueue(k8s: K8s) -> Iterator[Kueue]:
    queue = ClusterQueue(
        quota={"cpu": "0", "memory": "8Gi"},
        node_labels=POOL,
        tolerations=[TOLERATION],
        priorities={"low": 100, "high": 1000},
    )
    emulated = Kueue(k8s.cluster, queue).start()
    try:
        yield emulated
    finally:
        emulated.stop()


@pytest.fixture
def node(k8s: K8s, tmp_path: Path) -> Iterator[Kubelet]:
    kubelet = Kubelet(
        k8s.cluster,
        tmp_path / "kubelet",
        executables={"tooltune": [sys.executable, str(FAKE_TRAINER)]},
        node=POOL_NODE,
    ).start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


def start_operator(
    k8s: K8s, tmp_path: Path, kopf_operator: Callable[..., KopfRunner], kueue_support: bool = True
) -> KopfRunner:
    api, token = operator_identity(k8s, tmp_path, kueue=kueue_support)
    settings = Settings(
        trainer_image="tooltune/trainer:test",
        metrics_port=0,
        progress_interval_seconds=0,
        resync_seconds=1,
        kueue_enabled=kueue_support,
    )
    memo = kopf.Memo(kube=operator_kube(api), settings=settings)
    source = kueue_operator if kueue_support else "tooltune_operator.handlers"
    return kopf_operator(source, memo=memo, token=token)


def status(k8s: K8s, name: str) -> dict[str, Any]:
    return (k8s.cluster.get(TTJ, NS, name) or {}).get("status") or {}


def in_phase(
    k8s: K8s, name: str, phase: str, reason: str | None = None
) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        current = status(k8s, name)
        ok = current.get("phase") == phase and reason in (None, current.get("reason"))
        return current if ok else None

    return check


def pods_of(k8s: K8s, name: str) -> list[dict[str, Any]]:
    pods = [p for p in k8s.cluster.list(PODS) if p["metadata"]["labels"].get("tooltune.dev/job") == name]
    return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"] + p["metadata"]["name"])


def events_of(k8s: K8s, name: str) -> list[tuple[str, str, str]]:
    return [
        (e.get("type"), e["reason"], e.get("message", ""))
        for e in k8s.cluster.list(EVENTS)
        if e.get("involvedObject", {}).get("name") == name
        and e.get("involvedObject", {}).get("kind") == "ToolTuneJob"
    ]


def workload_of(k8s: K8s, job: dict[str, Any]) -> dict[str, Any] | None:
    found = k8s.cluster.list(WORKLOADS, NS, labels=f"{LABEL_JOB_UID}={job['metadata']['uid']}")
    return found[0] if found else None


def rival_job(name: str, priority: str = "high", cpu: str = "1") -> dict[str, Any]:
    """Another team's plain Job in the same queue, as its own manifest would have it."""
    container = {
        "name": "main",
        "image": "busybox",
        "command": SLEEPER,
        "resources": {"requests": {"cpu": cpu}},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {LABEL_QUEUE: QUEUE, LABEL_PRIORITY: priority}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
    }


def get_ttj(k8s: K8s) -> str:
    """What `kubectl get ttj` prints, and the wide form's reason and message."""
    wide = k8s.kubectl(
        "get", "ttj", "-n", NS, "-o", "custom-columns=REASON:.status.reason,MESSAGE:.status.message"
    )
    return k8s.kubectl("get", "ttj", "-n", NS).stdout + wide.stdout


def test_a_queued_job_waits_for_quota_runs_is_preempted_and_resumes_without_a_retry(
    k8s: K8s, kueue: Kueue, node: Kubelet, kopf_operator: Callable[..., KopfRunner], tmp_path: Path
) -> None:
    start_operator(k8s, tmp_path, kopf_operator)
    seen: dict[str, str] = {}
    spec = scripted_spec(
        "run", queueName=QUEUE, workloadPriorityClassName="low", resources={"gpus": 0, "cpu": "1"}
    )
    k8s.create_tooltunejob("tune", spec)

    # No quota: the Job is created suspended and the job says why it waits, in Kueue's words.
    short = "insufficient unused quota for cpu in flavor default-flavor, 1 more needed"
    waits = in_phase(k8s, "tune", "Queued", "WaitingForQuota")
    queued = wait_for(lambda: (waits() or {}).get("message", "").endswith(short) and waits(), SEEN_WITHIN,
                      what="Queued for quota", describe=lambda: status(k8s, "tune"))  # fmt: skip
    assert next(c for c in queued["conditions"] if c["type"] == "Queued")["status"] == "True"
    job = k8s.cluster.get(JOBS, NS, "tune-1")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][LABEL_PRIORITY] == "low"
    assert not pods_of(k8s, "tune")
    seen["queued"] = get_ttj(k8s)

    # Quota: Kueue admits, unsuspends with the flavor's node labels and tolerations, and it trains.
    kueue.set_quota(cpu="1")
    wait_for(
        in_phase(k8s, "tune", "Running"), SEEN_WITHIN, what="Running", describe=lambda: status(k8s, "tune")
    )
    (first,) = pods_of(k8s, "tune")
    assert first["spec"]["nodeSelector"] == POOL and TOLERATION in first["spec"]["tolerations"]
    seen["admitted"] = get_ttj(k8s)

    # A higher-priority Job in the same queue preempts it: the pod gets SIGTERM, the job is Queued again.
    k8s.cluster.create(JOBS, rival_job("urgent"), NS)
    preempted = wait_for(in_phase(k8s, "tune", "Queued", "Preempted"), SEEN_WITHIN, what="Queued: Preempted",
                         describe=lambda: status(k8s, "tune"))  # fmt: skip
    assert "Preempted to accommodate a workload" in preempted["message"]
    assert wait_for(lambda: node.exit_code(first["metadata"]["name"]), SEEN_WITHIN, what="SIGTERM") == 143
    wait_for(lambda: pods_of(k8s, "urgent") == [] and k8s.cluster.list(PODS), SEEN_WITHIN, what="rival runs")
    seen["preempted"] = get_ttj(k8s)
    assert k8s.cluster.get(JOBS, NS, "tune-1")["spec"]["template"]["spec"].get("nodeSelector") is None

    # The rival finishes (here: is deleted): Kueue re-admits the same Job, a new pod picks up the work.
    k8s.cluster.delete(JOBS, NS, "urgent", propagation="Background")
    new_pod = lambda: [p for p in pods_of(k8s, "tune") if p["metadata"]["name"] != first["metadata"]["name"]]  # noqa: E731
    wait_for(lambda: new_pod() and in_phase(k8s, "tune", "Running")(), SEEN_WITHIN,
             what="running again", describe=lambda: status(k8s, "tune"))  # fmt: skip
    seen["resumed"] = get_ttj(k8s)
    final = status(k8s, "tune")
    assert (final["attempts"], final["retries"], final["jobName"]) == (1, 0, "tune-1")
    told = [(kind, reason) for kind, reason, _ in events_of(k8s, "tune")]
    for event in [("Normal", "Queued"), ("Normal", "Admitted"), ("Warning", "Preempted")]:
        assert event in told, told
    # Kueue alone wrote the Job's suspend: the operator created the Job and never changed it.
    counts = k8s.cluster.emulator.request_counts
    assert counts["patch jobs"] == counts["update jobs"] == 0, dict(counts)
    print("\n".join(f"--- {state}\n{table}" for state, table in seen.items()))
    assert re.search(r"tune\s+Queued\s+WaitingForQuota", seen["queued"]), seen["queued"]
    assert re.search(r"tune\s+Queued\s+Preempted", seen["preempted"]), seen["preempted"]
    assert re.search(r"tune\s+Running\s+Training", seen["resumed"]), seen["resumed"]


def test_suspend_deactivates_the_workload_and_resume_requeues_it(
    k8s: K8s, kueue: Kueue, node: Kubelet, kopf_operator: Callable[..., KopfRunner], tmp_path: Path
) -> None:
    kueue.set_quota(cpu="1")
    start_operator(k8s, tmp_path, kopf_operator)
    k8s.create_tooltunejob("paused", scripted_spec("run", queueName=QUEUE, resources={"gpus": 0, "cpu": "1"}))
    wait_for(
        in_phase(k8s, "paused", "Running"),
        SEEN_WITHIN,
        what="Running",
        describe=lambda: status(k8s, "paused"),
    )
    job = k8s.cluster.get(JOBS, NS, "paused-1")

    k8s.custom.patch_namespaced_custom_object("tooltune.dev", "v1alpha1", NS, "tooltunejobs", "paused",
                                              {"spec": {"suspend": True}})  # fmt: skip
    wait_for(lambda: workload_of(k8s, job)["spec"]["active"] is False, SEEN_WITHIN, what="spec.active false")
    wait_for(in_phase(k8s, "paused", "Suspended"), SEEN_WITHIN, what="Suspended")
    wait_for(
        lambda: k8s.cluster.get(JOBS, NS, "paused-1")["spec"]["suspend"], SEEN_WITHIN, what="Kueue stops it"
    )
    (first,) = pods_of(k8s, "paused") or [None]
    assert first is None or node.exit_code(first["metadata"]["name"]) is not None

    k8s.custom.patch_namespaced_custom_object("tooltune.dev", "v1alpha1", NS, "tooltunejobs", "paused",
                                              {"spec": {"suspend": False}})  # fmt: skip
    wait_for(lambda: workload_of(k8s, job)["spec"]["active"] is True, SEEN_WITHIN, what="spec.active true")
    wait_for(in_phase(k8s, "paused", "Running"), SEEN_WITHIN, what="Running again",
             describe=lambda: status(k8s, "paused"))  # fmt: skip
    assert status(k8s, "paused")["retries"] == 0
    counts = k8s.cluster.emulator.request_counts
    assert counts["patch jobs"] == counts["update jobs"] == 0, dict(counts)


def test_a_priority_class_that_does_not_exist_gets_no_workload_and_the_job_says_what_to_check(
    k8s: K8s, kueue: Kueue, node: Kubelet, kopf_operator: Callable[..., KopfRunner], tmp_path: Path
) -> None:
    kueue.set_quota(cpu="1")
    start_operator(k8s, tmp_path, kopf_operator)
    spec = scripted_spec("run", queueName=QUEUE, workloadPriorityClassName="urgent", resources={"gpus": 0})
    k8s.create_tooltunejob("typo", spec)
    waiting = wait_for(in_phase(k8s, "typo", "Queued", "WaitingForKueue"), SEEN_WITHIN, what="Queued")
    assert "WorkloadPriorityClass urgent exist" in waiting["message"]
    kueue_says = [e for e in k8s.cluster.list(EVENTS) if e["reason"] == "WorkloadPriorityClassNotFound"]
    assert kueue_says and kueue_says[0]["involvedObject"]["name"] == "typo-1"
    assert not k8s.cluster.list(WORKLOADS, NS) and not pods_of(k8s, "typo")


def test_without_kueue_support_a_queued_job_still_runs_and_says_what_it_waits_for(
    k8s: K8s, kueue: Kueue, node: Kubelet, kopf_operator: Callable[..., KopfRunner], tmp_path: Path
) -> None:
    """Support off: no Workload is read (the RBAC would refuse it), the job still goes through Kueue."""
    start_operator(k8s, tmp_path, kopf_operator, kueue_support=False)
    k8s.create_tooltunejob("plain", scripted_spec("run", queueName=QUEUE, resources={"gpus": 0, "cpu": "1"}))
    waiting = wait_for(in_phase(k8s, "plain", "Queued", "WaitingForKueue"), SEEN_WITHIN, what="Queued")
    assert "kueue.enabled" in waiting["message"]
    kueue.set_quota(cpu="1")
    wait_for(
        in_phase(k8s, "plain", "Running"), SEEN_WITHIN, what="Running", describe=lambda: status(k8s, "plain")
    )
    assert k8s.cluster.emulator.request_counts["list workloads"] == 0


def test_kueue_support_on_without_kueue_installed_waits_without_crashing(
    k8s: K8s, node: Kubelet, kopf_operator: Callable[..., KopfRunner], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    start_operator(k8s, tmp_path, kopf_operator)
    k8s.create_tooltunejob("lonely", scripted_spec("run", queueName=QUEUE, resources={"gpus": 0}))
    waiting = wait_for(in_phase(k8s, "lonely", "Queued", "WaitingForKueue"), SEEN_WITHIN, what="Queued")
    assert "is Kueue installed" in waiting["message"]
    k8s.create_tooltunejob("unqueued", scripted_spec("run", resources={"gpus": 0}))
    wait_for(in_phase(k8s, "unqueued", "Running"), SEEN_WITHIN, what="a job without a queue runs")
    about_workloads = [r for r in caplog.records if "workloads" in r.getMessage()]
    assert len(about_workloads) <= 2, [r.getMessage() for r in about_workloads]
    assert not [r for r in caplog.records if "failed with an exception" in r.getMessage()]


def test_emulated_kueue_ignores_unlabelled_jobs_and_jobs_of_kinds_it_manages(
    k8s: K8s, kueue: Kueue, node: Kubelet
) -> None:
    """No kinder than Kueue: it manages only labelled Jobs, and not one whose controller is a kind it manages
    (here a Job: the Jobs of a JobSet are the usual case); a Job it manages cannot run unadmitted."""
    plain = rival_job("plain")
    del plain["metadata"]["labels"]
    parent = k8s.cluster.create(JOBS, plain, NS)
    owned = rival_job("owned")  # labelled, but controlled by a Job
    meta = parent["metadata"]
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }
    owned["metadata"]["ownerReferences"] = [owner]
    k8s.cluster.create(JOBS, owned, NS)
    created = k8s.cluster.create(JOBS, rival_job("queued"), NS)
    assert created["spec"]["suspend"] is True  # the webhook's default, before any pod could start
    workload = wait_for(lambda: workload_of(k8s, created), SEEN_WITHIN, what="a Workload")
    assert workload["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert workload["spec"]["queueName"] == QUEUE
    wait_for(lambda: len(k8s.cluster.list(PODS)) >= 2, SEEN_WITHIN, what="the unmanaged Jobs' pods")
    assert [w["metadata"]["name"] for w in k8s.cluster.list(WORKLOADS, NS)] == [workload["metadata"]["name"]]
    k8s.cluster.patch(JOBS, NS, "queued", {"spec": {"suspend": False}})  # no quota: Kueue stops it again
    wait_for(lambda: k8s.cluster.get(JOBS, NS, "queued")["spec"]["suspend"], SEEN_WITHIN, what="re-suspended")
    waiting = wait_for(
        lambda: (workload_of(k8s, created).get("status") or {}).get("conditions"),
        SEEN_WITHIN,
        what="a condition",
    )
    assert waiting[0]["reason"] == "Pending" and "insufficient unused quota for cpu" in waiting[0]["message"]


# ---------------------------------------------------------------- the real trainer


@pytest.mark.slow
def test_a_training_job_preempted_mid_run_resumes_from_the_step_it_checkpointed_on_sigterm(
    k8s: K8s, s3_server: S3Server, kueue: Kueue, kopf_operator: Callable[..., KopfRunner], tmp_path: Path
) -> None:
    bucket = s3_server.create_bucket("kueue")
    lines = "".join(json.dumps(example) + "\n" for example in tool_calling_dataset(48))
    s3_server.client().put_object(Bucket=bucket, Key="data/train.jsonl", Body=lines.encode())
    k8s.cluster.create(SECRETS, s3_server.credentials_secret("s3-credentials"), NS)
    seen: dict[str, str] = {}
    # The pod's grace period (Kubernetes' default 30 s): the trainer saves and uploads the step it is on.
    kubelet = Kubelet(
        k8s.cluster, tmp_path / "kubelet", env={"OMP_NUM_THREADS": "1"}, max_grace_seconds=30, node=POOL_NODE
    ).start()
    try:
        api, token = operator_identity(k8s, tmp_path, kueue=True)
        settings = Settings(
            metrics_port=0, trainer_metrics_port=0, progress_interval_seconds=1, kueue_enabled=True
        )
        kopf_operator(kueue_operator, memo=kopf.Memo(kube=operator_kube(api), settings=settings), token=token)
        spec = {
            "baseModel": "tooltune/tiny-llama",
            "dataset": {"train": f"s3://{bucket}/data/train.jsonl", "validationSplit": 0.1},
            "hyperparameters": {"epochs": 3, "batchSize": 4, "gradientAccumulationSteps": 1,
                                "learningRate": 3e-3,
                                "maxSeqLength": 256, "loggingSteps": 1, "lora": {"r": 8, "alpha": 16}},
            "checkpoints": {"everySteps": 50, "keep": 2},  # the SIGTERM checkpoint is the only one before it
            "evaluation": {"everySteps": 50, "maxExamples": 4},
            "output": {"uri": f"s3://{bucket}/models/tune/"},
            "storage": {"endpoint": s3_server.endpoint, "credentialsSecret": "s3-credentials"},
            "resources": {"gpus": 0, "cpu": "1"},
            "queueName": QUEUE,
            "workloadPriorityClassName": "low",
            "backoffLimit": 0,  # a preemption counted as a failure would fail the job
        }  # fmt: skip
        k8s.create_tooltunejob("tune", spec)
        wait_for(in_phase(k8s, "tune", "Queued", "WaitingForQuota"), SEEN_WITHIN, what="Queued")
        seen["queued"] = get_ttj(k8s)
        kueue.set_quota(cpu="1")
        stepping = lambda: (status(k8s, "tune").get("progress") or {}).get("step", 0) >= 3  # noqa: E731
        wait_for(stepping, 300, what="training steps", describe=lambda: status(k8s, "tune"), interval=0.2)
        (first,) = pods_of(k8s, "tune")
        seen["admitted"] = get_ttj(k8s)
        k8s.cluster.create(JOBS, rival_job("urgent"), NS)
        wait_for(in_phase(k8s, "tune", "Queued", "Preempted"), SEEN_WITHIN, what="Preempted")
        assert (
            wait_for(lambda: kubelet.exit_code(first["metadata"]["name"]), 120, what="the trainer's exit")
            == 143
        )
        terminated = re.search(
            r"terminated at step (\d+): its checkpoint is uploaded", kubelet.logs(first["metadata"]["name"])
        )
        assert terminated, kubelet.logs(first["metadata"]["name"])[-3000:]

        seen["preempted"] = get_ttj(k8s)
        k8s.cluster.delete(JOBS, NS, "urgent", propagation="Background")
        resumed_step = lambda: (status(k8s, "tune").get("checkpoints") or {}).get("resumedFromStep")  # noqa: E731
        wait_for(lambda: in_phase(k8s, "tune", "Running")() and resumed_step(), 120, what="resumed")
        seen["resumed"] = get_ttj(k8s)
        wait_for(in_phase(k8s, "tune", "Succeeded"), 400, what="Succeeded", interval=0.5,
                 describe=lambda: status(k8s, "tune"))  # fmt: skip
        (second,) = [
            p["metadata"]["name"]
            for p in pods_of(k8s, "tune")
            if p["metadata"]["name"] != first["metadata"]["name"]
        ]
        resumed = re.search(r"resuming from \S+/checkpoints/step-(\d+)", kubelet.logs(second))
        assert resumed and resumed.group(1) == terminated.group(1), kubelet.logs(second)[-3000:]
        final = status(k8s, "tune")
        assert (final["attempts"], final["retries"]) == (1, 0)
        assert final["checkpoints"]["resumedFromStep"] == int(terminated.group(1))
        assert k8s.cluster.emulator.request_counts["patch jobs"] == 0
        print("\n".join(f"--- {state}\n{table}" for state, table in seen.items()))
        print(f"terminated at step {terminated.group(1)}, resumed from step {resumed.group(1)}")
    finally:
        kubelet.stop()
