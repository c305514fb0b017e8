"""The real kopf operator against the emulated cluster, with the test kubelet running each pod.

Pods run tests/integration/fake_trainer.py in place of `tooltune train`, so each test decides what its
pod does through the spec's baseModel (see that file); the operator and its contract are the real ones.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from tooltune_operator import builders
from tooltune_operator.settings import Settings

from tests.fixtures.cluster import K8s, operator_identity, operator_kube, scripted_spec
from tests.harness.emulator import CONFIGMAPS, EVENTS, JOBS, PODS, TTJ
from tests.harness.kopf_runner import KopfRunner
from tests.harness.kubelet import Kubelet
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.integration

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
REPO = Path(__file__).resolve().parents[2]
NS = "default"


@pytest.fixture
def cluster(k8s: K8s, tmp_path: Path) -> Iterator[K8s]:
    node = Kubelet(
        k8s.cluster, tmp_path / "kubelet", executables={"tooltune": [sys.executable, str(FAKE_TRAINER)]}
    ).start()
    try:
        yield k8s
    finally:
        node.stop()


@pytest.fixture
def operator(cluster: K8s, kopf_operator: Callable[..., KopfRunner], tmp_path: Path) -> KopfRunner:
    """The operator, acting as its ServiceAccount under exactly the RBAC the plain manifests grant it."""
    api, token = operator_identity(cluster, tmp_path)
    memo = kopf.Memo()
    memo.kube = operator_kube(api)
    memo.settings = Settings(
        trainer_image="tooltune/trainer:test", metrics_port=0, progress_interval_seconds=0
    )
    return kopf_operator("tooltune_operator.handlers", memo=memo, token=token)


def ttj(k8s: K8s, name: str) -> dict[str, Any]:
    return k8s.cluster.get(TTJ, NS, name) or {}


def phase_is(k8s: K8s, name: str, phase: str) -> Callable[[], bool]:
    return lambda: ttj(k8s, name).get("status", {}).get("phase") == phase


def jobs_of(k8s: K8s, name: str) -> list[dict[str, Any]]:
    return [j for j in k8s.cluster.list(JOBS) if j["metadata"]["labels"].get("tooltune.dev/job") == name]


def events_of(k8s: K8s, name: str) -> list[dict[str, Any]]:
    return [e for e in k8s.cluster.list(EVENTS) if e.get("involvedObject", {}).get("name") == name]


def test_apply_creates_the_job_and_a_successful_pod_makes_it_succeed(
    cluster: K8s, operator: KopfRunner
) -> None:
    cluster.create_tooltunejob("ok", scripted_spec())
    job = wait_for(lambda: cluster.cluster.get(JOBS, NS, "ok-1"), timeout=5, what="Job ok-1")
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("ToolTuneJob", "ok", True)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["tooltune", "train"]
    assert job["spec"]["backoffLimit"] == 1
    wait_for(
        lambda: (
            (cluster.cluster.get(CONFIGMAPS, NS, "ok-1-contract") or {})
            .get("metadata", {})
            .get("ownerReferences", [{}])[0]
            .get("kind")
            == "Job"
        ),
        timeout=5,
        what="the contract ConfigMap handed over to its Job",
    )

    wait_for(
        phase_is(cluster, "ok", "Succeeded"),
        timeout=30,
        what="Succeeded",
        describe=lambda: ttj(cluster, "ok"),
    )
    status = ttj(cluster, "ok")["status"]
    assert status["attempts"] == 1 and status["jobName"] == "ok-1"
    assert status["progress"]["step"] == 30 and status["progress"]["trainLoss"] == 0.4321
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
    assert status["completionTime"] and status["startTime"]
    assert status["observedGeneration"] == ttj(cluster, "ok")["metadata"]["generation"]


def test_invalid_data_exit_code_fails_at_once_with_the_reason(cluster: K8s, operator: KopfRunner) -> None:
    cluster.create_tooltunejob("bad-data", scripted_spec("invalid-data", backoffLimit=3))
    wait_for(
        phase_is(cluster, "bad-data", "Failed"),
        timeout=30,
        what="Failed",
        describe=lambda: ttj(cluster, "bad-data"),
    )
    status = ttj(cluster, "bad-data")["status"]
    assert "delete_task" in status["failureReason"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidData" and "train.jsonl:3" in failed["message"]
    pods = [
        p for p in cluster.cluster.list(PODS) if p["metadata"]["labels"].get("tooltune.dev/job") == "bad-data"
    ]
    assert len(pods) == 1, "exit code 2 must not be retried"
    assert status["retries"] == 0, "a failure that was never retried is no retry"
    wait_for(
        lambda: any(
            e["reason"] == "InvalidData" and "delete_task" in e["message"]
            for e in events_of(cluster, "bad-data")
        ),
        timeout=5,
        what="an InvalidData Event with the reason",
    )


def test_a_missed_evaluation_gate_fails_at_once_as_evaluation_gate_failed(
    cluster: K8s, operator: KopfRunner
) -> None:
    cluster.create_tooltunejob("gated", scripted_spec("gate-failed", backoffLimit=3))
    wait_for(
        phase_is(cluster, "gated", "Failed"),
        timeout=30,
        what="Failed",
        describe=lambda: ttj(cluster, "gated"),
    )
    status = ttj(cluster, "gated")["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert (status["reason"], failed["reason"]) == ("EvaluationGateFailed", "EvaluationGateFailed")
    assert failed["message"] == (
        "evaluation gate failed: toolNameAccuracy 0.5 < 0.9 (atLeast 0.9); the model is kept at s3://b/o/final"
    )
    assert status["evaluation"]["promoted"] is False and status["evaluation"]["gate"]["passed"] is False
    pods = [
        p for p in cluster.cluster.list(PODS) if p["metadata"]["labels"].get("tooltune.dev/job") == "gated"
    ]
    assert len(pods) == 1, "a missed gate is not retried: the same training would make the same model"
    wait_for(
        lambda: any(
            e["reason"] == "EvaluationGateFailed" and "toolNameAccuracy 0.5 < 0.9" in e["message"]
            for e in events_of(cluster, "gated")
        ),
        timeout=5,
        what="an EvaluationGateFailed Event with the numbers",
    )


def test_invalid_spec_fails_with_an_event_naming_the_field_and_creates_nothing(
    cluster: K8s, operator: KopfRunner
) -> None:
    cluster.create_tooltunejob("bad-spec", scripted_spec(hyperparameters={"learningRate": 0}))
    wait_for(phase_is(cluster, "bad-spec", "Failed"), timeout=5, what="Failed")
    status = ttj(cluster, "bad-spec")["status"]
    validated = next(c for c in status["conditions"] if c["type"] == "Validated")
    assert validated["status"] == "False" and validated["reason"] == "ValidationFailed"
    assert "spec.hyperparameters.learningRate" in validated["message"]
    assert "startTime" not in status, "a refused spec never started"
    events = wait_for(
        lambda: [e for e in events_of(cluster, "bad-spec") if e["reason"] == "ValidationFailed"],
        timeout=5,
        what="a ValidationFailed Event",
    )
    assert "spec.hyperparameters.learningRate" in events[0]["message"]
    assert jobs_of(cluster, "bad-spec") == []
    assert not [c for c in cluster.cluster.list(CONFIGMAPS) if c["metadata"]["name"].startswith("bad-spec")]


def test_fixing_the_spec_after_a_failure_starts_a_new_attempt(cluster: K8s, operator: KopfRunner) -> None:
    cluster.create_tooltunejob("retry", scripted_spec("crash", backoffLimit=0))
    wait_for(phase_is(cluster, "retry", "Failed"), timeout=30, what="Failed")
    cluster.custom.patch_namespaced_custom_object(
        "tooltune.dev", "v1alpha1", NS, "tooltunejobs", "retry", {"spec": {"baseModel": "script/succeed"}}
    )
    wait_for(
        phase_is(cluster, "retry", "Succeeded"),
        timeout=30,
        what="Succeeded on attempt 2",
        describe=lambda: ttj(cluster, "retry").get("status"),
    )
    assert ttj(cluster, "retry")["status"]["attempts"] == 2
    assert sorted(j["metadata"]["name"] for j in jobs_of(cluster, "retry")) == ["retry-1", "retry-2"]


def test_delete_removes_children_through_their_owner_references(cluster: K8s, operator: KopfRunner) -> None:
    """No finalizer (only an OpenAI job has one, to cancel its remote job): the ToolTuneJob goes at once, and
    the garbage collector takes its Job, the Job's pods and its ConfigMap."""
    cluster.create_tooltunejob("gone", scripted_spec("run"))
    wait_for(phase_is(cluster, "gone", "Running"), timeout=30, what="Running")
    assert not ttj(cluster, "gone")["metadata"].get("finalizers")
    cluster.custom.delete_namespaced_custom_object("tooltune.dev", "v1alpha1", NS, "tooltunejobs", "gone")
    wait_for(lambda: cluster.cluster.get(TTJ, NS, "gone") is None, timeout=10, what="the ToolTuneJob to go")
    wait_for(lambda: not jobs_of(cluster, "gone"), timeout=10, what="its Job to go")
    wait_for(
        lambda: not [p for p in cluster.cluster.list(PODS) if p["metadata"]["name"].startswith("gone-")],
        timeout=10,
        what="its pods to go",
    )
    wait_for(
        lambda: cluster.cluster.get(CONFIGMAPS, NS, "gone-1-contract") is None,
        timeout=10,
        what="its ConfigMap to go",
    )


def test_operator_restart_mid_run_never_starts_a_second_job(cluster: K8s, operator: KopfRunner) -> None:
    cluster.create_tooltunejob("steady", scripted_spec("run"))
    wait_for(phase_is(cluster, "steady", "Running"), timeout=30, what="Running")
    operator.restart()
    operator.restart()
    # proves the restarted operator is handling events
    cluster.create_tooltunejob("after-restart", scripted_spec())
    wait_for(phase_is(cluster, "after-restart", "Succeeded"), timeout=30, what="the next job")
    assert [j["metadata"]["name"] for j in jobs_of(cluster, "steady")] == ["steady-1"]
    running = [p for p in cluster.cluster.list(PODS) if p["metadata"]["name"].startswith("steady-1-")]
    assert len(running) == 1
    assert ttj(cluster, "steady")["status"]["phase"] == "Running"


def test_suspend_stops_the_pod_and_resume_starts_a_new_one(cluster: K8s, operator: KopfRunner) -> None:
    cluster.create_tooltunejob("pausable", scripted_spec("run"))
    wait_for(phase_is(cluster, "pausable", "Running"), timeout=30, what="Running")
    patch = lambda value: cluster.custom.patch_namespaced_custom_object(  # noqa: E731
        "tooltune.dev", "v1alpha1", NS, "tooltunejobs", "pausable", {"spec": {"suspend": value}}
    )
    patch(True)
    wait_for(phase_is(cluster, "pausable", "Suspended"), timeout=10, what="Suspended")
    assert cluster.cluster.get(JOBS, NS, "pausable-1")["spec"]["suspend"] is True
    wait_for(
        lambda: (
            not [p for p in cluster.cluster.list(PODS) if p["metadata"]["name"].startswith("pausable-1-")]
        ),
        timeout=10,
        what="the pod to stop",
    )
    patch(False)
    wait_for(phase_is(cluster, "pausable", "Running"), timeout=30, what="Running again")
    assert [j["metadata"]["name"] for j in jobs_of(cluster, "pausable")] == ["pausable-1"]


def test_spec_change_mid_run_is_deferred_with_an_event(cluster: K8s, operator: KopfRunner) -> None:
    cluster.create_tooltunejob("edited", scripted_spec("run"))
    wait_for(phase_is(cluster, "edited", "Running"), timeout=30, what="Running")
    cluster.custom.patch_namespaced_custom_object(
        "tooltune.dev", "v1alpha1", NS, "tooltunejobs", "edited", {"spec": {"hyperparameters": {"epochs": 5}}}
    )
    wait_for(
        lambda: [e for e in events_of(cluster, "edited") if e["reason"] == "SpecChangeDeferred"],
        timeout=10,
        what="a SpecChangeDeferred Event",
    )
    assert [j["metadata"]["name"] for j in jobs_of(cluster, "edited")] == ["edited-1"]
    assert ttj(cluster, "edited")["status"]["phase"] == "Running"


def test_kubectl_apply_example_and_get_shows_the_printer_columns(
    cluster: K8s, operator: KopfRunner, tmp_path: Path
) -> None:
    example = yaml.safe_load((REPO / "manifests/examples/tiny-cpu.yaml").read_text())
    example["spec"]["baseModel"] = "script/succeed"  # the example's shape, this test's pod behaviour
    example["metadata"].pop("namespace", None)
    path = tmp_path / "example.yaml"
    path.write_text(yaml.safe_dump(example))
    secret = REPO / "manifests/examples/s3-credentials.yaml"  # the example's storage credentials
    cluster.kubectl("apply", "--validate=false", "-f", str(secret), "-f", str(path))
    name = example["metadata"]["name"]
    wait_for(lambda: cluster.cluster.get(JOBS, NS, f"{name}-1"), timeout=1.5, what="a Job within a second")
    wait_for(phase_is(cluster, name, "Succeeded"), timeout=30, what="Succeeded")
    table = cluster.kubectl("get", "ttj").stdout.splitlines()
    header = ["NAME", "PHASE", "REASON", "BACKEND", "MODEL", "WORKERS", "STEP", "LOSS", "AGE"]
    assert table[0].split() == header
    row = next(line.split() for line in table[1:] if line.startswith(name))
    assert row[1:8] == ["Succeeded", "Completed", "unsloth", "script/succeed", "1xCPU", "30", "0.4321"]
    wide = cluster.kubectl("get", "ttj", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[:4] == ["NAME", "PHASE", "REASON", "BACKEND"] and "MESSAGE" in wide[0].split()
    assert "training finished" in next(line for line in wide[1:] if line.startswith(name))


def test_a_name_as_long_as_kubernetes_allows_trains_like_a_short_one(
    cluster: K8s, operator: KopfRunner
) -> None:
    # The emulator refuses label values over 63 bytes as an API server does (tests/harness/validation.py).
    name = "tool-calling-" + "x" * 240
    cluster.create_tooltunejob(name, scripted_spec())
    wait_for(
        phase_is(cluster, name, "Succeeded"),
        timeout=30,
        what="Succeeded",
        describe=lambda: ttj(cluster, name),
    )
    (job,) = jobs_of(cluster, builders.job_label(name))
    assert (
        len(job["metadata"]["name"]) <= 63 and job["metadata"]["annotations"]["tooltune.dev/job-name"] == name
    )
    assert ttj(cluster, name)["status"]["jobName"] == job["metadata"]["name"]


def test_an_output_tooltune_cannot_write_is_refused_before_any_job(
    cluster: K8s, operator: KopfRunner
) -> None:
    cluster.create_tooltunejob("ftp-out", scripted_spec(output={"uri": "ftp://models/out/"}))
    wait_for(phase_is(cluster, "ftp-out", "Failed"), timeout=5, what="Failed")
    validated = next(c for c in ttj(cluster, "ftp-out")["status"]["conditions"] if c["type"] == "Validated")
    assert (
        validated["reason"] == "ValidationFailed"
        and "spec.output.uri: unsupported scheme ftp://" in validated["message"]
    )
    assert jobs_of(cluster, "ftp-out") == []


def test_a_pod_run_in_the_kubelets_process_reports_as_its_serviceaccount_and_ends_on_a_signal(
    k8s: K8s, kopf_operator: Callable[..., KopfRunner], tmp_path: Path
) -> None:
    """What the scale benchmark runs: fake_trainer.in_process as the kubelet's script. Its status patches
    go through the trainer's client as the pod's ServiceAccount (the operator's RBAC gives that account
    only its ToolTuneJob's status), and deleting the job ends the script as SIGTERM ends a process."""
    from tests.integration import fake_trainer

    node = Kubelet(k8s.cluster, tmp_path / "kubelet", scripts={"tooltune": fake_trainer.in_process}).start()
    try:
        api, token = operator_identity(k8s, tmp_path)
        memo = kopf.Memo(kube=operator_kube(api), settings=Settings(trainer_image="t:test", metrics_port=0))
        kopf_operator("tooltune_operator.handlers", memo=memo, token=token)
        k8s.create_tooltunejob("ok", scripted_spec())
        k8s.create_tooltunejob("runs", scripted_spec("run"))

        wait_for(
            phase_is(k8s, "ok", "Succeeded"), timeout=30, what="Succeeded", describe=lambda: ttj(k8s, "ok")
        )
        progress = ttj(k8s, "ok")["status"]["progress"]
        assert (progress["step"], progress["trainLoss"]) == (30, 0.4321)
        running = wait_for(
            lambda: [p for p in k8s.cluster.list(PODS, NS) if p["metadata"]["name"].startswith("runs-1-")
                     and ttj(k8s, "runs").get("status", {}).get("progress", {}).get("step") == 30],
            timeout=15, what="the run script's last progress patch",
        )  # fmt: skip
        name = running[0]["metadata"]["name"]
        assert node.exit_code(name) is None
        k8s.custom.delete_namespaced_custom_object("tooltune.dev", "v1alpha1", NS, "tooltunejobs", "runs")
        assert wait_for(lambda: node.exit_code(name), 10, what="the script to end") == 128 + 15  # SIGTERM
    finally:
        node.stop()
