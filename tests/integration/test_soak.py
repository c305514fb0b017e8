"""Chaos soak: tiny-model jobs run to the end while the operator and random trainer pods are killed.

Everything is real but the cluster: the operator runs as its own process (SIGKILLed and restarted), each
pod runs the real trainer (`tooltune train`, the built-in tiny model) on a node with room for two pods,
checkpoints go to a real SeaweedFS. Random pods (seeded) are killed three ways, in turn:

- evict: the Eviction API (DisruptionTarget, then SIGTERM and a grace period): the trainer checkpoints
  the step it is on and exits, the replacement starts once it has (podReplacementPolicy Failed);
- node-lost: SIGKILL with DisruptionTarget (what the taint manager marks): does not count against
  backoffLimit;
- crash: SIGKILL alone (an OOM kill, a segfault): counts against backoffLimit.

Every job must end Succeeded with its model in the bucket; no attempt may get two Jobs; a kill loses at
most the steps since the newest complete checkpoint. The size is bounded: TOOLTUNE_SOAK_JOBS jobs (4 in
the suite; `make soak` runs 50), MAX_POD_KILLS pod kills (at most one per job), MAX_OPERATOR_KILLS
operator kills, an overall time limit.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.fixtures.cluster import K8s
from tests.fixtures.s3 import S3Server
from tests.fixtures.tiny import tool_calling_dataset
from tests.harness.emulator import PODS, SECRETS, TTJ
from tests.harness.kubelet import Kubelet
from tests.harness.operator_process import OperatorProcess
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS = "default"
JOB_COUNT = int(os.environ.get("TOOLTUNE_SOAK_JOBS", "4"))
SEED = int(os.environ.get("TOOLTUNE_SOAK_SEED", "1"))
NODE_CAPACITY = 2  # trainer pods at once: this machine has two cores
POD_ENV = {"OMP_NUM_THREADS": "1"}  # one core each: two torch processes spinning two threads each crawl
EXAMPLES, BATCH, EPOCHS = 48, 4, 6  # 66 steps: a few seconds of training to be killed in
STEPS_PER_EPOCH = 11  # 43 or 44 training examples after the 10% validation split, 4 per step
EVERY = 4  # checkpoint interval, in steps
GRACE_SECONDS = 30  # the pod's terminationGracePeriodSeconds (Kubernetes' default)
OPERATOR_KILL_EVERY = 10.0  # seconds between operator kills
OPERATOR_DOWN_SECONDS = 2.0  # how long it stays dead
POD_KILL_EVERY = 2.0  # seconds between pod kills (of a pod that is training)
MAX_KILLS_PER_JOB = 1
MAX_POD_KILLS = max(3, JOB_COUNT // 2)
MAX_OPERATOR_KILLS = max(2, JOB_COUNT // 5)
KILL_KINDS = ("evict", "node-lost", "crash")  # taken in turn
TIMEOUT = 240 + 45 * JOB_COUNT / NODE_CAPACITY  # seconds for the whole soak
STEPS_IN_LOG = re.compile(r"'epoch': '?([\d.]+)")
RESUMED = re.compile(r"resuming from \S+/checkpoints/step-(\d+)")
TERMINATED = re.compile(r"terminated at step (\d+): its checkpoint is uploaded")


@dataclass
class Kill:
    job: str
    pod: str
    kind: str
    reached: int = 0  # the last step the pod finished
    resumed: int | None = None  # the step the next pod of the job started from

    @property
    def lost(self) -> int:
        return self.reached - (self.resumed or 0)


def job_spec(bucket: str, endpoint: str, name: str) -> dict[str, Any]:
    return {
        "baseModel": "tooltune/tiny-llama",
        "dataset": {"train": f"s3://{bucket}/data/train.jsonl", "validationSplit": 0.1},
        "hyperparameters": {
            "epochs": EPOCHS, "batchSize": BATCH, "gradientAccumulationSteps": 1, "learningRate": 3e-3,
            "maxSeqLength": 256, "loggingSteps": 1, "lora": {"r": 8, "alpha": 16},
        },
        "checkpoints": {"everySteps": EVERY, "keep": 2},
        "evaluation": {"everySteps": 100, "maxExamples": 2, "smokePrompts": ["Mark task_3 as complete"]},
        "output": {"uri": f"s3://{bucket}/models/{name}/"},
        "storage": {"endpoint": endpoint, "credentialsSecret": "s3-credentials"},
        "resources": {"gpus": 0},
        "backoffLimit": 4,
    }  # fmt: skip


class JobCreations:
    """Every Job the API ever created, from a watch: a name added twice would be a duplicate run."""

    def __init__(self, k8s: K8s):
        self.uids: dict[str, set[str]] = defaultdict(set)
        self._stop = threading.Event()
        self._batch = k8s.batch
        self._since = k8s.batch.list_namespaced_job(NS).metadata.resource_version
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            stream = kubernetes.watch.Watch()
            for event in stream.stream(
                self._batch.list_namespaced_job, NS, resource_version=self._since, timeout_seconds=2
            ):
                meta = event["object"].metadata
                self._since = meta.resource_version
                if event["type"] == "ADDED":
                    self.uids[meta.name].add(meta.uid)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def phase(k8s: K8s, name: str) -> str | None:
    return ((k8s.cluster.get(TTJ, NS, name) or {}).get("status") or {}).get("phase")


def trained_steps(log: str) -> int:
    """The last step a pod finished, from the epoch of its last logged step (one log line per step)."""
    epochs = [float(e) for e in STEPS_IN_LOG.findall(log)]
    return round(max(epochs, default=0) * STEPS_PER_EPOCH)


def test_jobs_survive_operator_and_pod_kills_with_no_duplicate_and_bounded_loss(
    k8s: K8s, s3_server: S3Server, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    bucket = s3_server.create_bucket("soak")
    s3 = s3_server.client()
    lines = "".join(json.dumps(example) + "\n" for example in tool_calling_dataset(EXAMPLES))
    s3.put_object(Bucket=bucket, Key="data/train.jsonl", Body=lines.encode())
    k8s.cluster.create(SECRETS, s3_server.credentials_secret("s3-credentials"), NS)
    names = [f"soak-{index:02d}" for index in range(JOB_COUNT)]
    kubelet = Kubelet(
        k8s.cluster,
        tmp_path / "kubelet",
        env=POD_ENV,
        capacity=NODE_CAPACITY,
        max_grace_seconds=GRACE_SECONDS,
    ).start()
    operator = OperatorProcess(
        k8s.kubeconfig,
        tmp_path / "operator.log",
        {"TOOLTUNE_TRAINER_METRICS_PORT": "0", "TOOLTUNE_PROGRESS_INTERVAL": "1"},
    ).start()
    creations = JobCreations(k8s)
    kills: list[Kill] = []
    pods_of: dict[str, list[str]] = defaultdict(list)  # every pod each job had, oldest first
    started = time.monotonic()
    try:
        for name in names:
            k8s.create_tooltunejob(name, job_spec(bucket, s3_server.endpoint, name))
        next_operator_kill = started + OPERATOR_KILL_EVERY
        next_pod_kill = started + POD_KILL_EVERY
        while not all(phase(k8s, name) in ("Succeeded", "Failed") for name in names):
            assert time.monotonic() - started < TIMEOUT, {name: phase(k8s, name) for name in names}
            pods = sorted(
                k8s.cluster.list(PODS, NS),
                key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]),
            )
            for pod in pods:
                job, pod_name = pod["metadata"]["labels"].get("tooltune.dev/job"), pod["metadata"]["name"]
                if job and pod_name not in pods_of[job]:
                    pods_of[job].append(pod_name)
            now = time.monotonic()
            if now >= next_operator_kill and operator.starts <= MAX_OPERATOR_KILLS:
                operator.kill()
                time.sleep(OPERATOR_DOWN_SECONDS)
                operator.start()
                next_operator_kill = now + OPERATOR_KILL_EVERY
            if now >= next_pod_kill and len(kills) < MAX_POD_KILLS:
                killed_per_job = Counter(kill.job for kill in kills)
                candidates = [
                    pod for pod in pods
                    if pod.get("status", {}).get("phase") == "Running"
                    and killed_per_job[pod["metadata"]["labels"]["tooltune.dev/job"]] < MAX_KILLS_PER_JOB
                    and trained_steps(kubelet.logs(pod["metadata"]["name"])) >= 1  # training, not importing
                ]  # fmt: skip
                if candidates:
                    pod = rng.choice(candidates)
                    kind = KILL_KINDS[len(kills) % len(KILL_KINDS)]
                    kill = Kill(pod["metadata"]["labels"]["tooltune.dev/job"], pod["metadata"]["name"], kind)
                    if kill.kind == "evict":
                        kubelet.evict_pod(kill.pod)
                    else:
                        kubelet.kill_pod(kill.pod, disruption=kill.kind == "node-lost")
                    kills.append(kill)
                next_pod_kill = now + POD_KILL_EVERY
            time.sleep(0.2)
        seconds = time.monotonic() - started
        wait_for(lambda: all(kubelet.exit_code(k.pod) is not None for k in kills), 60, what="killed pods end")
    finally:
        creations.stop()
        operator.stop()
        kubelet.stop()

    # What each kill cost: the steps its pod had finished, against where the job's next pod started.
    for kill in kills:
        log = kubelet.logs(kill.pod)
        terminated = TERMINATED.search(log)
        kill.reached = int(terminated.group(1)) if terminated else trained_steps(log)
        later = pods_of[kill.job][pods_of[kill.job].index(kill.pod) + 1 :]
        assert later, f"{kill.job}: no pod after {kill.pod}"
        resumed = RESUMED.search(kubelet.logs(later[0]))
        kill.resumed = int(resumed.group(1)) if resumed else 0
    duplicates = {name: len(uids) for name, uids in creations.uids.items() if len(uids) > 1}
    statuses = {name: k8s.cluster.get(TTJ, NS, name)["status"] for name in names}
    print(
        f"\nsoak: {JOB_COUNT} jobs in {seconds:.0f} s (seed {SEED}, node capacity {NODE_CAPACITY}); "
        f"operator killed {operator.starts - 1}×; pods killed {len(kills)}× "
        f"{dict(Counter(kill.kind for kill in kills))}; duplicate Jobs {sum(duplicates.values())}; "
        f"phases {dict(Counter(s['phase'] for s in statuses.values()))}\n"
        f"steps lost per kill (checkpoint interval {EVERY}): "
        + ", ".join(f"{k.kind} {k.reached}→{k.resumed}: {k.lost}" for k in kills)
    )

    assert kills and operator.starts > 1, "the soak must kill something to prove anything"
    assert not duplicates, duplicates
    for name, status in statuses.items():
        assert status["phase"] == "Succeeded", (name, status, pods_of[name])
        progress = status["progress"]
        assert progress["step"] == progress["totalSteps"] == EPOCHS * STEPS_PER_EPOCH, status
        jobs = sorted(job for job in creations.uids if job.rsplit("-", 1)[0] == name)
        assert jobs == [f"{name}-{attempt}" for attempt in range(1, status["attempts"] + 1)], jobs
        s3.head_object(Bucket=bucket, Key=f"models/{name}/final/adapter_model.safetensors")
    for kill in kills:
        # SIGTERM: the step it was on is saved before exit. SIGKILL: back to the newest complete checkpoint,
        # which is one interval behind, or two while the newest one was still uploading.
        bound = 0 if kill.kind == "evict" else 2 * EVERY - 1
        assert 0 <= kill.lost <= bound, kill
    crashed = [line for line in operator.log().splitlines() if "failed with an exception" in line]
    assert not crashed, crashed
