"""The local cluster harness itself: emulator semantics, the test kubelet, a kopf operator, kubectl."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import pytest
from tooltune_api import GROUP, PLURAL, VERSION

from tests.harness import tables
from tests.harness.emulator import (
    CONFIGMAPS,
    EVENTS,
    JOBS,
    PODS,
    SERVICES,
    TTJ,
    labels_match,
    merge_patch,
    parse_label_selector,
)
from tests.harness.kubelet import expand_references, resolve_service_names, rewrite_paths
from tests.harness.waiting import wait_for

pytestmark = pytest.mark.integration

NS = "default"
TTJ_BODY = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "ToolTuneJob",
    "metadata": {"name": "demo"},
    "spec": {
        "baseModel": "tooltune/tiny-llama",
        "dataset": {"train": "/data/train.jsonl"},
        "output": {"uri": "/tmp/out/"},
    },
}


def job_body(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "trainer", "image": "tooltune-trainer:test", "command": ["python", "-c", script]}
    container.update(spec.pop("container", {}))
    pod_spec = {"restartPolicy": "Never", "containers": [container], **spec.pop("pod", {})}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "test"}},
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": {"app": "test"}}, "spec": pod_spec},
            **spec,
        },
    }


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    conditions = (obj or {}).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kind and c["status"] == "True"), None)


def job_pods(k8s, job: str) -> list[dict[str, Any]]:
    return k8s.cluster.list(PODS, NS, labels=f"job-name={job}")


def wait_for_job(k8s, name: str, kind: str, timeout: float = 15) -> dict[str, Any]:
    return wait_for(
        lambda: condition(k8s.cluster.get(JOBS, NS, name), kind),
        timeout,
        what=f"Job {name} {kind}",
        describe=lambda: (k8s.cluster.get(JOBS, NS, name) or {}).get("status"),
    )


def status_of(k8s, name: str = "demo") -> dict[str, Any]:
    return (k8s.cluster.get(TTJ, NS, name) or {}).get("status", {})


def phase_of(k8s, name: str = "demo") -> str | None:
    return status_of(k8s, name).get("phase")


def tiny_operator(kubeconfig: str, script: str):
    """A ToolTuneJob → Job operator in a few lines, and Job conditions → the ToolTuneJob's phase."""
    api = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    batch, custom = kubernetes.client.BatchV1Api(api), kubernetes.client.CustomObjectsApi(api)

    def register() -> None:
        @kopf.on.create(GROUP, VERSION, PLURAL)
        def create_job(body: kopf.Body, name: str, namespace: str, patch: kopf.Patch, **_: Any) -> None:
            job = job_body(f"{name}-1", script)
            job["metadata"]["labels"]["tooltune.dev/job"] = name
            kopf.adopt(job, owner=body)
            batch.create_namespaced_job(namespace, job)
            patch.status["phase"] = "Running"
            patch.status["jobName"] = job["metadata"]["name"]

        @kopf.on.delete(GROUP, VERSION, PLURAL)
        def deleted(**_: Any) -> None:
            """Only here so that kopf puts a finalizer on the ToolTuneJob, as a real operator would."""

        @kopf.on.event("batch", "v1", "jobs", labels={"tooltune.dev/job": kopf.PRESENT})
        def job_changed(body: kopf.Body, namespace: str, labels: dict[str, str], **_: Any) -> None:
            for kind, phase in (("Complete", "Succeeded"), ("Failed", "Failed")):
                if condition(dict(body), kind):
                    custom.patch_namespaced_custom_object_status(
                        GROUP,
                        VERSION,
                        namespace,
                        PLURAL,
                        labels["tooltune.dev/job"],
                        {"status": {"phase": phase}},
                    )

    return register


# ---------------------------------------------------------------- operator + kubelet


def test_operator_job_runs_to_completion(k8s, kubelet, kopf_operator):
    script = "import os; print('hello from', os.environ['HOSTNAME'])"
    kopf_operator(tiny_operator(str(k8s.kubeconfig), script))
    k8s.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, TTJ_BODY)

    wait_for(
        lambda: phase_of(k8s) == "Succeeded",
        15,
        what="the ToolTuneJob to succeed",
        describe=lambda: k8s.cluster.get(TTJ, NS, "demo"),
    )
    job = k8s.batch.read_namespaced_job("demo-1", NS)
    assert job.status.succeeded == 1 and job.status.active == 0 and job.status.completion_time
    assert [c.type for c in job.status.conditions] == ["SuccessCriteriaMet", "Complete"]
    [pod] = job_pods(k8s, "demo-1")
    assert pod["metadata"]["name"].startswith("demo-1-")
    assert pod["metadata"]["ownerReferences"][0]["uid"] == job.metadata.uid
    assert pod["metadata"]["labels"]["app"] == "test"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert pod["status"]["phase"] == "Succeeded" and (terminated["exitCode"], terminated["reason"]) == (
        0,
        "Completed",
    )
    assert kubelet.logs(pod["metadata"]["name"]) == f"hello from {pod['metadata']['name']}\n"
    assert k8s.kubectl("logs", pod["metadata"]["name"]).stdout == f"hello from {pod['metadata']['name']}\n"
    # The CRD's defaults were applied on create, and kopf's finalizer is in place.
    ttj = k8s.cluster.get(TTJ, NS, "demo")
    assert ttj["spec"]["backend"] == "unsloth" and ttj["metadata"]["finalizers"]


def test_deleting_the_owner_collects_job_and_pods_and_kills_the_process(k8s, kubelet, kopf_operator):
    kopf_operator(tiny_operator(str(k8s.kubeconfig), "import time; time.sleep(60)"))
    k8s.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, TTJ_BODY)
    pod = wait_for(
        lambda: [p for p in job_pods(k8s, "demo-1") if p.get("status", {}).get("phase") == "Running"],
        15,
        what="a running pod",
    )[0]
    name = pod["metadata"]["name"]
    assert kubelet.exit_code(name) is None

    k8s.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "demo")

    wait_for(lambda: k8s.cluster.get(TTJ, NS, "demo") is None, 10, what="kopf to release the finalizer")
    wait_for(
        lambda: not k8s.cluster.list(JOBS, NS) and not k8s.cluster.list(PODS, NS),
        10,
        what="the Job and its pod to be garbage-collected",
    )
    assert wait_for(lambda: kubelet.exit_code(name), 5, what="the process to end") == 128 + 15  # SIGTERM


def test_operator_restart_picks_up_what_happened_while_it_was_down(k8s, kopf_operator):
    seen: list[str] = []

    def register() -> None:
        @kopf.on.create(GROUP, VERSION, PLURAL)
        def created(name: str, **_: Any) -> None:
            seen.append(name)

    operator = kopf_operator(register)
    k8s.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, TTJ_BODY)
    wait_for(lambda: seen == ["demo"], 10, what="the first operator run")
    operator.stop()
    k8s.custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, {**TTJ_BODY, "metadata": {"name": "second"}}
    )
    operator.start()
    wait_for(lambda: seen == ["demo", "second"], 10, what="the restarted operator", describe=lambda: seen)


# ---------------------------------------------------------------- Job controller


def test_exit_2_fails_the_job_at_once_by_pod_failure_policy(k8s, kubelet):
    script = (
        "open('/dev/termination-log', 'w').write('line 3: unknown tool get_weather'); raise SystemExit(2)"
    )
    policy = {
        "rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }
    k8s.batch.create_namespaced_job(NS, job_body("bad-data", script, backoffLimit=3, podFailurePolicy=policy))

    failed = wait_for_job(k8s, "bad-data", "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    [pod] = job_pods(k8s, "bad-data")  # no retry despite backoffLimit 3
    assert failed["message"] == (
        f"Container trainer for pod {NS}/{pod['metadata']['name']} failed with exit "
        "code 2 matching FailJob rule at index 0"
    )
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (2, "Error")
    assert terminated["message"] == "line 3: unknown tool get_weather"
    assert pod["status"]["phase"] == "Failed"


def test_disruption_is_ignored_and_other_failures_count_against_backoff_limit(k8s, kubelet):
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    k8s.batch.create_namespaced_job(
        NS, job_body("flaky", "import time; time.sleep(60)", backoffLimit=0, podFailurePolicy=policy)
    )

    def running_pod() -> str | None:
        pods = [p for p in job_pods(k8s, "flaky") if p.get("status", {}).get("phase") == "Running"]
        return pods[0]["metadata"]["name"] if pods else None

    first = wait_for(running_pod, 10, what="the first pod")
    kubelet.kill_pod(first, disruption=True)
    second = wait_for(lambda: (name := running_pod()) != first and name, 10, what="a replacement pod")
    evicted = k8s.cluster.get(PODS, NS, first)
    assert condition(evicted, "DisruptionTarget")["reason"] == "EvictionByEvictionAPI"
    assert evicted["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137

    kubelet.kill_pod(second, disruption=False)
    failed = wait_for_job(k8s, "flaky", "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert k8s.cluster.get(JOBS, NS, "flaky")["status"]["failed"] == 1


def test_eviction_sends_sigterm_and_the_replacement_waits_for_the_process_to_end(k8s, kubelet):
    script = textwrap.dedent("""
        import signal, sys, time
        def finish(*_):
            time.sleep(1)  # saving a checkpoint
            print('saved on SIGTERM', flush=True)
            sys.exit(143)
        signal.signal(signal.SIGTERM, finish)
        print('running', flush=True)
        time.sleep(60)
    """)
    kubelet.max_grace_seconds = 10
    # No podFailurePolicy: the eviction counts against backoffLimit, as in a real cluster.
    body = job_body("evicted", script, podReplacementPolicy="Failed", backoffLimit=1)
    k8s.batch.create_namespaced_job(NS, body)
    running = lambda: [p for p in job_pods(k8s, "evicted") if p.get("status", {}).get("phase") == "Running"]  # noqa: E731
    first = wait_for(running, 10, what="the first pod")[0]["metadata"]["name"]
    wait_for(lambda: "running" in kubelet.logs(first), 10, what="the handler installed")

    kubelet.evict_pod(first)
    wait_for(lambda: not k8s.cluster.get(PODS, NS, first), 5, what="the evicted pod deleted")
    assert not job_pods(k8s, "evicted"), "no replacement while the evicted pod's process still runs"
    second = wait_for(lambda: job_pods(k8s, "evicted"), 10, what="a replacement")[0]["metadata"]["name"]
    assert kubelet.logs(first).endswith("saved on SIGTERM\n") and kubelet.exit_code(first) == 143
    assert second != first and k8s.cluster.get(JOBS, NS, "evicted")["status"].get("failed", 0) == 1


def test_an_indexed_job_runs_a_pod_per_index_that_reach_each_other_under_its_headless_service(k8s, kubelet):
    """Pods named, labelled and addressed as the real Job controller makes them; their DNS names under the
    Service resolve to the loopback address, where rank 0 listens."""
    script = textwrap.dedent("""
        import os, socket, time
        index = int(os.environ['JOB_COMPLETION_INDEX'])
        print(os.environ['HOSTNAME'], os.environ['LEADER'], flush=True)
        if index == 0:
            server = socket.create_server((os.environ['LEADER'], 29411))
            connection, _ = server.accept()
            print('rank 1 says', connection.recv(16).decode(), flush=True)
        else:
            for _ in range(100):
                try:
                    socket.create_connection((os.environ['LEADER'], 29411)).sendall(b'hello')
                    break
                except OSError:
                    time.sleep(0.1)
    """)
    body = job_body(
        "group",
        script,
        completionMode="Indexed",
        completions=2,
        parallelism=2,
        pod={"subdomain": "group"},
        container={"env": [{"name": "LEADER", "value": "group-0.group.default.svc.cluster.local"}]},
    )
    headless = {
        "metadata": {"name": "group"},
        "spec": {"clusterIP": "None", "selector": {"job-name": "group"}},
    }
    k8s.cluster.create(SERVICES, headless, NS)
    k8s.batch.create_namespaced_job(NS, body)

    wait_for_job(k8s, "group", "Complete")
    pods = sorted(job_pods(k8s, "group"), key=lambda p: p["metadata"]["name"])
    assert [p["metadata"]["name"][: len("group-0-")] for p in pods] == ["group-0-", "group-1-"]
    for index, pod in enumerate(pods):
        assert pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == str(index)
        assert pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == str(index)
        assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == (f"group-{index}", "group")
        assert kubelet.logs(pod["metadata"]["name"]).startswith(f"group-{index} 127.0.0.1\n")
    assert "rank 1 says hello" in kubelet.logs(pods[0]["metadata"]["name"])
    assert k8s.cluster.get(JOBS, NS, "group")["status"]["completedIndexes"] == "0,1"


def test_a_failed_indexed_job_stops_its_other_pods_before_it_reads_failed(k8s, kubelet):
    script = textwrap.dedent("""
        import os, signal, sys, time
        def finish(*_):
            time.sleep(1)  # saving a checkpoint
            sys.exit(143)
        signal.signal(signal.SIGTERM, finish)
        time.sleep(1 if os.environ['JOB_COMPLETION_INDEX'] == '1' else 60)
        sys.exit(1)
    """)
    body = job_body("crash", script, completionMode="Indexed", completions=2, parallelism=2)
    k8s.batch.create_namespaced_job(NS, body)
    pods = wait_for(
        lambda: len(names := [p["metadata"]["name"] for p in job_pods(k8s, "crash")]) == 2 and names, 10
    )
    survivor = next(name for name in pods if name.startswith("crash-0-"))
    job = lambda: k8s.cluster.get(JOBS, NS, "crash")  # noqa: E731
    target = wait_for(lambda: condition(job(), "FailureTarget"), 15, what="the verdict", interval=0.05)
    assert target["reason"] == "BackoffLimitExceeded"
    assert not condition(job(), "Failed") and kubelet.exit_code(survivor) is None, "rank 0 still stopping"
    failed = wait_for_job(k8s, "crash", "Failed")
    assert (failed["reason"], failed["message"]) == (target["reason"], target["message"])
    assert kubelet.exit_code(survivor) == 143, "Failed only once every pod has stopped"


def test_a_name_under_a_service_that_does_not_exist_stays_unresolved():
    assert resolve_service_names("a-0.svc-x:1 a-0.other", "default", ["other"]) == "a-0.svc-x:1 127.0.0.1"
    assert resolve_service_names("x.other.default.svc.cluster.local", "default", ["other"]) == "127.0.0.1"
    assert resolve_service_names("x.other.elsewhere.svc", "default", ["other"]) == "x.other.elsewhere.svc"


def test_a_full_node_keeps_pods_pending_until_a_slot_frees(k8s, kubelet):
    kubelet.capacity = 1
    k8s.batch.create_namespaced_job(NS, job_body("first", "import time; time.sleep(2)"))
    phase = lambda job: (job_pods(k8s, job) or [{}])[0].get("status", {}).get("phase")  # noqa: E731
    wait_for(lambda: phase("first") == "Running", 10, what="the first pod running")
    k8s.batch.create_namespaced_job(NS, job_body("second", "print('ran')"))

    pending = wait_for(lambda: condition_false(job_pods(k8s, "second"), "PodScheduled"), 10, what="pending")
    assert pending["reason"] == "Unschedulable" and "Too many pods" in pending["message"]
    assert phase("first") == "Running"
    wait_for_job(k8s, "first", "Complete")
    wait_for_job(k8s, "second", "Complete")
    assert kubelet.logs(job_pods(k8s, "second")[0]["metadata"]["name"]) == "ran\n"


def test_the_default_node_schedules_only_what_fits_it(k8s, kubelet):
    """One GPU node as a GPU node pool makes it: a pod asking for more than it has stays Pending with the
    scheduler's message; a second GPU pod waits for the first to end."""

    def gpu_job(name: str, script: str, **resources: Any) -> dict[str, Any]:
        container = {"resources": {"limits": {"nvidia.com/gpu": 1}, "requests": {**resources}}}
        return job_body(name, script, container=container)

    k8s.batch.create_namespaced_job(NS, gpu_job("huge", "print('ran')", cpu="16"))
    k8s.batch.create_namespaced_job(NS, gpu_job("first", "import time; time.sleep(2)", memory="8Gi"))
    pending = wait_for(lambda: condition_false(job_pods(k8s, "huge"), "PodScheduled"), 10, what="huge")
    assert pending["reason"] == "Unschedulable"
    assert pending["message"] == (
        "0/1 nodes are available: 1 Insufficient cpu. "
        "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    )
    wait_for(lambda: (job_pods(k8s, "first") or [{}])[0].get("status", {}).get("phase") == "Running", 10,
             what="the first GPU pod running")  # fmt: skip
    k8s.batch.create_namespaced_job(NS, gpu_job("second", "print('ran')"))
    waiting = wait_for(lambda: condition_false(job_pods(k8s, "second"), "PodScheduled"), 10, what="second")
    assert waiting["message"].startswith("0/1 nodes are available: 1 Insufficient nvidia.com/gpu. ")
    wait_for_job(k8s, "second", "Complete", timeout=30)  # the GPU is free once the first pod ends
    events = [e for e in k8s.cluster.list(EVENTS, NS) if e["involvedObject"]["name"].startswith("huge-")]
    assert events and {(e["reason"], e["source"]["component"]) for e in events} == {
        ("FailedScheduling", "default-scheduler")
    }
    assert condition_false(job_pods(k8s, "huge"), "PodScheduled")  # still: nothing frees 16 CPUs


def condition_false(pods: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    conditions = [c for p in pods for c in p.get("status", {}).get("conditions", [])]
    return next((c for c in conditions if c["type"] == kind and c["status"] == "False"), None)


def test_retries_until_backoff_limit(k8s, kubelet):
    k8s.batch.create_namespaced_job(NS, job_body("retry", "raise SystemExit(1)", backoffLimit=1))
    assert wait_for_job(k8s, "retry", "Failed")["reason"] == "BackoffLimitExceeded"
    assert len(job_pods(k8s, "retry")) == 2
    assert k8s.cluster.get(JOBS, NS, "retry")["status"]["failed"] == 2


def test_a_retry_sees_what_the_failed_pod_left_on_a_persistent_volume(k8s, kubelet):
    script = textwrap.dedent("""
        import pathlib
        marker = pathlib.Path('/checkpoints/step-10')
        if not marker.exists():
            marker.write_text('saved')
            raise SystemExit(1)
        print('resumed from', marker.read_text())
    """)
    container = {"volumeMounts": [{"name": "state", "mountPath": "/checkpoints"}]}
    volumes = [{"name": "state", "persistentVolumeClaim": {"claimName": "trainer-state"}}]
    k8s.batch.create_namespaced_job(
        NS, job_body("resume", script, backoffLimit=1, container=container, pod={"volumes": volumes})
    )

    wait_for_job(k8s, "resume", "Complete")
    status = k8s.cluster.get(JOBS, NS, "resume")["status"]
    assert (status["failed"], status["succeeded"]) == (1, 1)
    logs = {kubelet.logs(pod["metadata"]["name"]) for pod in job_pods(k8s, "resume")}
    assert logs == {"", "resumed from saved\n"}


def test_suspend_kills_the_pod_and_resume_starts_a_new_one(k8s, kubelet):
    k8s.batch.create_namespaced_job(NS, job_body("pausable", "import time; time.sleep(60)"))
    first = wait_for(lambda: job_pods(k8s, "pausable"), 10, what="a pod")[0]["metadata"]["name"]

    k8s.batch.patch_namespaced_job("pausable", NS, {"spec": {"suspend": True}})
    suspended = wait_for_job(k8s, "pausable", "Suspended")
    assert suspended["reason"] == "JobSuspended"
    wait_for(lambda: not job_pods(k8s, "pausable"), 10, what="the pod to be deleted on suspension")
    assert k8s.cluster.get(JOBS, NS, "pausable")["status"]["active"] == 0

    k8s.batch.patch_namespaced_job("pausable", NS, {"spec": {"suspend": False}})
    resumed = wait_for(lambda: job_pods(k8s, "pausable"), 10, what="a new pod after resuming")
    assert resumed[0]["metadata"]["name"] != first
    assert not condition(k8s.cluster.get(JOBS, NS, "pausable"), "Suspended")


def test_active_deadline_and_ttl_after_finished(k8s, kubelet):
    k8s.batch.create_namespaced_job(
        NS, job_body("slow", "import time; time.sleep(60)", activeDeadlineSeconds=1)
    )
    k8s.batch.create_namespaced_job(NS, job_body("short-lived", "pass", ttlSecondsAfterFinished=0))

    assert wait_for_job(k8s, "slow", "Failed")["reason"] == "DeadlineExceeded"
    wait_for(lambda: not job_pods(k8s, "slow"), 10, what="the deadline to delete the pod")
    wait_for(lambda: k8s.cluster.get(JOBS, NS, "short-lived") is None, 10, what="the TTL to delete the Job")


# ---------------------------------------------------------------- kubelet: env, volumes, paths


def test_secret_env_and_mounted_config_reach_the_process(k8s, kubelet):
    script = textwrap.dedent("""
        import os, pathlib
        print(os.environ['API_KEY'], os.environ['MODE'], os.environ['POD'])
        print(pathlib.Path(os.environ['TOOLTUNE_CONFIG']).read_text())
        pathlib.Path('/scratch/out.txt').write_text('written')
        print(pathlib.Path('/scratch/out.txt').read_text())
    """)
    container = {
        "env": [
            {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "openai", "key": "OPENAI_API_KEY"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "TOOLTUNE_CONFIG", "value": "/etc/tooltune/contract.json"},
        ],
        "volumeMounts": [
            {"name": "contract", "mountPath": "/etc/tooltune"},
            {"name": "scratch", "mountPath": "/scratch"},
        ],
    }
    volumes = [
        {
            "name": "contract",
            "configMap": {"name": "settings", "items": [{"key": "contract.json", "path": "contract.json"}]},
        },
        {"name": "scratch", "emptyDir": {}},
    ]
    k8s.core.create_namespaced_config_map(
        NS, {"metadata": {"name": "settings"}, "data": {"mode": "cpu", "contract.json": '{"contract": 1}'}}
    )
    k8s.batch.create_namespaced_job(
        NS, job_body("env", script, container=container, pod={"volumes": volumes})
    )

    pending = wait_for(
        lambda: [p for p in job_pods(k8s, "env") if p.get("status", {}).get("containerStatuses")],
        10,
        what="a waiting pod",
    )[0]
    waiting = pending["status"]["containerStatuses"][0]["state"]["waiting"]
    assert pending["status"]["phase"] == "Pending"
    assert waiting == {"reason": "CreateContainerConfigError", "message": 'secret "openai" not found'}

    k8s.core.create_namespaced_secret(
        NS, {"metadata": {"name": "openai"}, "stringData": {"OPENAI_API_KEY": "sk-test"}}
    )
    wait_for_job(k8s, "env", "Complete")
    pod = job_pods(k8s, "env")[0]["metadata"]["name"]
    assert kubelet.logs(pod).splitlines() == [f"sk-test cpu {pod}", '{"contract": 1}', "written"]


def test_a_pod_talks_to_the_api_as_its_serviceaccount_under_its_rbac(k8s, kubelet):
    """As a real pod's mounted token: the trainer's Role lets it patch its ToolTuneJob's status and nothing
    more; the default ServiceAccount may do nothing."""
    from tooltune_operator.builders import trainer_rbac
    from tooltune_operator.settings import Settings

    from tests.fixtures.cluster import RBAC_KEYS

    keys = {**RBAC_KEYS, "Role": "rbac.authorization.k8s.io/v1/roles"}
    keys["RoleBinding"] = "rbac.authorization.k8s.io/v1/rolebindings"
    for obj in trainer_rbac(NS, Settings()):
        k8s.cluster.create(keys[obj["kind"]], obj, NS)
    k8s.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, TTJ_BODY)
    script = textwrap.dedent("""
        import kubernetes
        api = kubernetes.config.new_client_from_config()
        custom, core = kubernetes.client.CustomObjectsApi(api), kubernetes.client.CoreV1Api(api)
        status = {"status": {"message": "hi"}}
        calls = {
            "patch status": lambda: custom.patch_namespaced_custom_object_status(
                "tooltune.dev", "v1alpha1", "default", "tooltunejobs", "demo", status),
            "read secrets": lambda: core.list_namespaced_secret("default"),
        }
        for what, call in calls.items():
            try:
                call()
                print(what, "allowed")
            except kubernetes.client.ApiException as error:
                print(what, error.status)
    """)
    k8s.batch.create_namespaced_job(
        NS, job_body("trainer", script, pod={"serviceAccountName": "tooltune-trainer"})
    )
    k8s.batch.create_namespaced_job(NS, job_body("nobody", script))

    wait_for_job(k8s, "trainer", "Complete", timeout=60)
    wait_for_job(k8s, "nobody", "Complete", timeout=60)
    logs = {
        job: kubelet.logs(job_pods(k8s, job)[0]["metadata"]["name"]).splitlines()
        for job in ("trainer", "nobody")
    }
    assert logs == {
        "trainer": ["patch status allowed", "read secrets 403"],
        "nobody": ["patch status 403", "read secrets 403"],
    }
    assert status_of(k8s)["message"] == "hi"


# ---------------------------------------------------------------- the API emulator


def test_watch_resumes_from_a_resource_version(k8s):
    k8s.core.create_namespaced_config_map(NS, {"metadata": {"name": "before"}})
    listed = k8s.core.list_namespaced_config_map(NS)
    k8s.core.create_namespaced_config_map(NS, {"metadata": {"name": "after"}})
    k8s.core.patch_namespaced_config_map("before", NS, {"data": {"k": "v"}})

    stream = kubernetes.watch.Watch().stream(
        k8s.core.list_namespaced_config_map,
        NS,
        resource_version=listed.metadata.resource_version,
        timeout_seconds=1,
    )
    events = [(e["type"], e["object"].metadata.name) for e in stream]
    assert events == [("ADDED", "after"), ("MODIFIED", "before")]

    fresh = kubernetes.watch.Watch().stream(k8s.core.list_namespaced_config_map, NS, timeout_seconds=1)
    assert sorted((e["type"], e["object"].metadata.name) for e in fresh) == [
        ("ADDED", "after"),
        ("ADDED", "before"),
    ]
    assert listed.kind == "ConfigMapList" and int(listed.metadata.resource_version) > 0


def test_api_semantics_kopf_and_kubectl_rely_on(k8s):
    created = k8s.cluster.create(
        CONFIGMAPS, {"metadata": {"name": "cm", "labels": {"tier": "a"}}, "data": {}}
    )
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["namespace"] == NS and meta["resourceVersion"]

    with pytest.raises(kubernetes.client.ApiException) as conflict:
        k8s.core.create_namespaced_config_map(NS, {"metadata": {"name": "cm"}})
    assert conflict.value.status == 409
    stale = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
        {"op": "replace", "path": "/data", "value": {"x": "y"}},
    ]
    with pytest.raises(kubernetes.client.ApiException) as failed_test:
        k8s.core.patch_namespaced_config_map("cm", NS, stale)
    assert failed_test.value.status == 422
    with pytest.raises(kubernetes.client.ApiException) as stale_write:
        k8s.core.patch_namespaced_config_map(
            "cm", NS, {"metadata": {"resourceVersion": "1"}, "data": {"x": "y"}}
        )
    assert stale_write.value.status == 409

    unchanged = k8s.cluster.patch(CONFIGMAPS, NS, "cm", {"data": {}})
    assert unchanged["metadata"]["resourceVersion"] == meta["resourceVersion"]  # a no-op keeps the version
    k8s.cluster.create(CONFIGMAPS, {"metadata": {"name": "other", "labels": {"tier": "b"}}})
    assert [
        c.metadata.name for c in k8s.core.list_namespaced_config_map(NS, label_selector="tier=a").items
    ] == ["cm"]
    assert [
        c.metadata.name for c in k8s.core.list_namespaced_config_map(NS, label_selector="tier!=a").items
    ] == ["other"]

    # The status subresource: writes to the object ignore status, writes to /status touch only status.
    k8s.custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, {**TTJ_BODY, "status": {"phase": "X"}}
    )
    assert "status" not in k8s.cluster.get(TTJ, NS, "demo")
    k8s.custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "demo", {"status": {"phase": "Running"}}
    )
    assert "status" not in k8s.cluster.get(TTJ, NS, "demo")
    k8s.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "demo", {"status": {"phase": "Running"}, "spec": {"baseModel": "x"}}
    )
    ttj = k8s.cluster.get(TTJ, NS, "demo")
    assert ttj["status"] == {"phase": "Running"} and ttj["spec"]["baseModel"] == "tooltune/tiny-llama"
    assert ttj["metadata"]["generation"] == 1
    k8s.custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "demo", {"spec": {"baseModel": "y"}}
    )
    assert k8s.cluster.get(TTJ, NS, "demo")["metadata"]["generation"] == 2

    # Namespaces are objects too, and deleting one deletes what is in it.
    k8s.core.create_namespace({"metadata": {"name": "team-a"}})
    assert k8s.core.read_namespace("team-a").status.phase == "Active"
    k8s.core.create_namespaced_config_map("team-a", {"metadata": {"name": "inside"}})
    k8s.core.delete_namespace("team-a")
    assert k8s.cluster.list(CONFIGMAPS, "team-a") == []
    assert [n.metadata.name for n in k8s.core.list_namespace().items] == ["default"]

    with pytest.raises(kubernetes.client.ApiException) as invalid_job:
        k8s.batch.create_namespaced_job(NS, job_body("x", "pass", pod={"restartPolicy": "Always"}))
    assert invalid_job.value.status == 422 and "restartPolicy" in invalid_job.value.body


# ---------------------------------------------------------------- kubectl


def test_kubectl_applies_lists_prints_columns_and_deletes(k8s, tmp_path):
    manifest = tmp_path / "ttj.yaml"
    manifest.write_text(
        textwrap.dedent("""
        apiVersion: tooltune.dev/v1alpha1
        kind: ToolTuneJob
        metadata: {name: task-api-tools}
        spec:
          baseModel: tooltune/tiny-llama
          dataset: {train: s3://datasets/train.jsonl}
          output: {uri: s3://models/task-api-tools/}
    """)
    )
    assert "created" in k8s.kubectl("apply", "--validate=false", "-f", str(manifest)).stdout
    k8s.custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "task-api-tools",
        {
            "status": {
                "phase": "Running",
                "reason": "Training",
                "workers": "2x4",
                "progress": {"step": 12, "trainLoss": 0.53},
            }
        },
    )

    waited = k8s.kubectl(
        "wait", "--for=jsonpath={.status.phase}=Running", "ttj/task-api-tools", "--timeout=10s"
    )
    assert "condition met" in waited.stdout and not waited.stderr
    output = k8s.kubectl("get", "ttj")
    header, row = output.stdout.splitlines()
    header_names = ["NAME", "PHASE", "REASON", "BACKEND", "MODEL", "WORKERS", "STEP", "LOSS", "AGE"]
    assert header.split() == header_names
    assert row.split()[:8] == [
        "task-api-tools",
        "Running",
        "Training",
        "unsloth",
        "tooltune/tiny-llama",
        "2x4",
        "12",
        "0.53",
    ]
    assert row.split()[8].endswith("s")
    assert "Warning" not in output.stderr

    as_yaml = k8s.kubectl("get", "ttj", "task-api-tools", "-o", "yaml").stdout
    assert "kind: ToolTuneJob" in as_yaml and "trainLoss: 0.53" in as_yaml
    assert "unchanged" in k8s.kubectl("apply", "--validate=false", "-f", str(manifest)).stdout
    k8s.kubectl("delete", "-f", str(manifest))
    assert "No resources found" in k8s.kubectl("get", "tooltunejobs").stderr


# ---------------------------------------------------------------- the real operator on the harness


def test_printer_columns_show_the_status_the_real_operator_writes(k8s, kopf_operator):
    pytest.importorskip("tooltune_operator.handlers")
    from tooltune_operator.settings import Settings

    from tests.fixtures.cluster import operator_kube

    kopf_operator(
        "tooltune_operator.handlers",
        memo=kopf.Memo(kube=operator_kube(k8s.api), settings=Settings(metrics_port=0)),
    )
    k8s.custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, TTJ_BODY)
    status = wait_for(
        lambda: phase_of(k8s) and status_of(k8s).get("jobName") and status_of(k8s),
        8,
        what="a phase and a Job",
        describe=lambda: k8s.cluster.get(TTJ, NS, "demo"),
    )

    ttj = k8s.cluster.get(TTJ, NS, "demo")
    columns = tables.crd_printer_columns()[TTJ]
    expected = [tables.cell(ttj, column) for column in columns]
    assert expected[:2] == [status["phase"], status["reason"]]
    assert expected[2:4] == ["unsloth", "tooltune/tiny-llama"]
    row = k8s.kubectl("get", "ttj").stdout.splitlines()[1]
    assert row.split()[:5] == ["demo", status["phase"], status["reason"], "unsloth", "tooltune/tiny-llama"]
    assert k8s.cluster.get(JOBS, NS, status["jobName"]) is not None


# ---------------------------------------------------------------- the harness's pure helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/etc/tooltune/contract.json", "/pod/contract/contract.json"),
        ("--config=/etc/tooltune", "--config=/pod/contract"),
        ("/etc/tooltune-other/x", "/etc/tooltune-other/x"),  # a longer name is another path
        ("/var/etc/tooltune/x", "/var/etc/tooltune/x"),  # only absolute paths, not suffixes
        ("/tmp /tmp/a", "/pod/tmp /pod/tmp/a"),
        ("/dev/termination-log", "/pod/termination-log"),
    ],
)
def test_mount_paths_are_rewritten_only_at_path_boundaries(text, expected):
    mounts = [
        ("/etc/tooltune", Path("/pod/contract")),
        ("/tmp", Path("/pod/tmp")),
        ("/dev/termination-log", Path("/pod/termination-log")),
    ]
    assert rewrite_paths(text, mounts) == expected


def test_env_references_expand_like_kubernetes():
    env = {"DIR": "/data", "N": "3"}
    assert expand_references("$(DIR)/x-$(N) $(MISSING) $$(DIR)", env) == "/data/x-3 $(MISSING) $(DIR)"


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("app=test", {"app": "test"}, True),
        ("app==test,tier!=db", {"app": "test", "tier": "web"}, True),
        ("app in (a, b)", {"app": "b"}, True),
        ("app notin (a,b)", {"app": "b"}, False),
        ("gpu", {"gpu": ""}, True),
        ("!gpu", {"gpu": ""}, False),
        ("app=test", {}, False),
    ],
)
def test_label_selectors(selector, labels, matches):
    assert labels_match(labels, parse_label_selector(selector)) is matches


def test_merge_patch_follows_rfc_7386_and_drops_strategic_directives():
    target = {"a": {"b": 1, "c": 2}, "list": [1, 2], "gone": 1}
    patch = {"a": {"c": None, "d": 3}, "list": [3], "gone": None, "$setElementOrder/x": []}
    assert merge_patch(target, patch) == {"a": {"b": 1, "d": 3}, "list": [3]}


# ---------------------------------------------------------------- RBAC


def test_a_serviceaccount_gets_only_what_its_bindings_grant(k8s, tmp_path):
    from tests.fixtures.cluster import operator_identity
    from tests.harness import rbac

    api, _ = operator_identity(k8s, tmp_path)  # the manifests' ClusterRole, bound to the operator
    core = kubernetes.client.CoreV1Api(api)
    core.list_namespaced_event(NS)  # granted: the kubelet's Events of a pending pod

    with pytest.raises(kubernetes.client.ApiException) as refused:
        core.list_namespaced_secret(NS)
    assert refused.value.status == 403
    assert json.loads(refused.value.body)["message"] == (
        'secrets is forbidden: User "system:serviceaccount:tooltune-system:tooltune-operator" cannot list '
        'resource "secrets" in API group "" in the namespace "default"'
    )
    # The API server's escalation check: no Role may grant more than its creator holds.
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "too-much", "namespace": NS},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    }
    with pytest.raises(kubernetes.client.ApiException) as escalated:
        kubernetes.client.RbacAuthorizationV1Api(api).create_namespaced_role(NS, role)
    assert escalated.value.status == 403 and "not currently held" in escalated.value.body
    kubeconfig = rbac.serviceaccount_kubeconfig(tmp_path / "nobody", k8s.url, NS, "nobody")
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    nobody = kubernetes.client.CoreV1Api(client)
    with pytest.raises(kubernetes.client.ApiException) as unbound:
        nobody.list_namespaced_pod(NS)
    assert unbound.value.status == 403
