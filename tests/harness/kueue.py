"""Kueue for the emulated cluster, for plain batch/v1 Jobs, as Kueue's documentation and code describe it.

Installing it serves ``kueue.x-k8s.io/v1beta2`` Workloads (and stores their CustomResourceDefinition, as a
Kueue install does, so a running kopf notices the new resource). It then plays Kueue's parts on the
emulator's event loop, like the test kubelet:

- webhook: a Job created with the label ``kueue.x-k8s.io/queue-name`` is made suspended. A Job without
  the label is not Kueue's (``manageJobsWithoutQueueName`` is false by default), and neither is a Job
  whose controller owner is a kind Kueue manages itself (``jobframework.IsOwnerManagedByKueueForObject``);
- job controller: one Workload per managed Job, named ``job-<job>-<5 hex>``, owned by the Job (controller),
  labelled ``kueue.x-k8s.io/job-uid``, with ``spec.queueName``, ``spec.active`` and one podSet ``main``
  (count = parallelism, the pod template); priority from the ``kueue.x-k8s.io/priority-class`` label's
  WorkloadPriorityClass. A class that does not exist gets the Job no Workload at all, only a Warning Event
  ``WorkloadPriorityClassNotFound`` on the Job (Kueue's reconciler fails before creating it);
- scheduler: pending active Workloads in priority order (then age) reserve quota in the one ClusterQueue
  when the requests of their pods (requests, else limits) fit its nominal quota minus what admitted ones
  use: ``QuotaReserved`` and ``Admitted`` True, ``status.admission`` with the flavor. Otherwise
  ``QuotaReserved`` False, reason ``Pending``, Kueue's message (``couldn't assign flavors to pod set main:
  insufficient unused quota for cpu in flavor default-flavor, 1 more needed``), or ``Inadmissible`` when the
  LocalQueue does not exist. With ``withinClusterQueue: LowerPriority`` a pending Workload that would fit
  without lower-priority admitted ones evicts them: ``Evicted`` (reason ``Preempted``) and ``Preempted``
  (reason ``InClusterQueue``) with Kueue's message;
- admission: the Job is unsuspended and the flavor's node labels and tolerations are injected into its pod
  template; eviction (preemption, ``spec.active: false`` → ``Evicted``/``Deactivated``): the Job is suspended
  (the kubelet deletes its pods: SIGTERM first), its template restored once the Job is stopped, and once
  no pod is active the quota is released (``QuotaReserved`` False with the eviction's message, ``Admitted``
  False ``NoReservation``, ``Requeued`` True unless deactivated); re-admission sets ``Evicted`` and
  ``Preempted`` False. A managed Job someone else unsuspends while not admitted is suspended again;
- a finished Job's Workload gets ``Finished`` and releases its quota; a Workload whose Job is gone is
  deleted (the garbage collector's part).

Not emulated: cohorts and borrowing, several flavors or ClusterQueues, admission checks, partial admission,
requeue backoff, fair sharing, Topology-Aware Scheduling, other integrations' Jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import kmock
from kubernetes.utils import parse_quantity

from tests.harness.emulator import EVENTS, JOBS, PODS, RunningCluster, now_iso

GROUP = "kueue.x-k8s.io"
WORKLOADS = f"{GROUP}/v1beta2/workloads"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
LABEL_QUEUE = f"{GROUP}/queue-name"
LABEL_PRIORITY = f"{GROUP}/priority-class"
LABEL_JOB_UID = f"{GROUP}/job-uid"
# apiVersion/kind of the integrations Kueue manages (its default set): a Job they control is theirs.
MANAGED_OWNERS = {
    ("batch/v1", "Job"),
    ("jobset.x-k8s.io/v1alpha2", "JobSet"),
    ("kubeflow.org/v1", "PyTorchJob"),
    ("kubeflow.org/v2beta1", "MPIJob"),
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"),
    ("ray.io/v1", "RayJob"),
    ("ray.io/v1", "RayCluster"),
}
TICK_SECONDS = 0.5


@dataclass
class ClusterQueue:
    """The one ClusterQueue, its one ResourceFlavor, and the LocalQueues (namespace, name) pointing at it."""

    name: str = "cluster-queue"
    flavor: str = "default-flavor"
    quota: dict[str, str] = field(default_factory=lambda: {"cpu": "4", "memory": "16Gi"})
    node_labels: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    local_queues: set[tuple[str, str]] = field(default_factory=lambda: {("default", "user-queue")})
    preempt_lower_priority: bool = True  # preemption.withinClusterQueue: LowerPriority
    priorities: dict[str, int] = field(default_factory=dict)  # WorkloadPriorityClass name → value


def workload_name(job: dict[str, Any]) -> str:
    """Kueue's name of a Job's Workload: job-<name>-<5 hex of the uid's hash>."""
    digest = hashlib.sha256(job["metadata"]["uid"].encode()).hexdigest()[:5]
    return f"job-{job['metadata']['name'][:50]}-{digest}"


def pod_requests(template: dict[str, Any]) -> dict[str, Decimal]:
    """What one pod asks for, as Kueue counts it: requests, and limits where no request is given."""
    total: dict[str, Decimal] = {}
    for container in (template.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, quantity in asked.items():
            total[name] = total.get(name, Decimal(0)) + parse_quantity(quantity)
    return total


def _condition(kind: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_iso(),
    }


def _holds(workload: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in (workload.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind and cond["status"] == "True":
            return cond
    return None


def _amount(resource: str, value: Decimal) -> str:
    return (
        str(int(value))
        if value == int(value)
        else f"{int(value * 1000)}m"
        if resource == "cpu"
        else str(value)
    )


class Kueue:
    """Start with `start()`, stop with `stop()`; `set_quota` is safe from any thread."""

    def __init__(self, cluster: RunningCluster, queue: ClusterQueue | None = None):
        self.cluster = cluster
        self.emulator = cluster.emulator
        self.queue = queue or ClusterQueue()
        self._task: asyncio.Future[None] | None = None
        self._stopping = False
        self._originals: dict[str, dict[str, Any]] = {}  # Job uid → its template's nodeSelector/tolerations
        self._warned: set[str] = set()  # Job uids told of a missing WorkloadPriorityClass
        self.errors: list[BaseException] = []

    def start(self) -> Kueue:
        def install() -> None:
            info = kmock.ResourceInfo(
                kind="Workload", singular="workload", namespaced=True,
                verbs={"list", "watch", "get", "create", "patch", "update", "delete"},
                subresources={"status"}, shortnames={"wl"}, categories=set(),
            )  # fmt: skip
            self.emulator.serve(WORKLOADS, info)
            self.emulator.admission_hooks.append(self._default_job)
            crd = {
                "metadata": {"name": f"workloads.{GROUP}"},
                "spec": {"group": GROUP, "names": {"kind": "Workload", "plural": "workloads"},
                         "scope": "Namespaced",
                         "versions": [{"name": "v1beta2", "served": True, "storage": True}]},
            }  # fmt: skip
            self.emulator.create_object(CRDS, crd)

        self.cluster.call(install)
        self._task = self.cluster.call(self._launch())
        return self

    async def _launch(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._main(), name="kueue")

    def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self.cluster.call(asyncio.wait([self._task], timeout=5))
        if self.errors:
            raise RuntimeError(f"the Kueue emulator failed: {self.errors[0]!r}") from self.errors[0]

    def set_quota(self, **quota: str) -> None:
        """Change the ClusterQueue's nominal quota (e.g. cpu="1"), as an admin's edit would."""
        self.queue.quota.update(quota)

    # ------------------------------------------------------------ the loop

    async def _main(self) -> None:
        while not self._stopping:
            try:
                self._reconcile()
            except Exception as error:  # a harness bug: keep it for stop() to raise
                self.errors.append(error)
            await self.emulator.next_change(TICK_SECONDS)

    def _reconcile(self) -> None:
        jobs = {job["metadata"]["uid"]: job for job in self.emulator.list_objects(JOBS) if self._manages(job)}
        workloads = {w["metadata"]["labels"][LABEL_JOB_UID]: w for w in self.emulator.list_objects(WORKLOADS)}
        existing = {job["metadata"]["uid"] for job in self.emulator.peek_objects(JOBS)}
        for uid, workload in workloads.items():
            if uid not in existing:  # the garbage collector's part: the Job owning it is gone
                meta = workload["metadata"]
                with contextlib.suppress(Exception):
                    self.emulator.delete_object(WORKLOADS, meta["namespace"], meta["name"])
        for uid, job in jobs.items():
            if uid not in workloads:
                priority_class = (job["metadata"].get("labels") or {}).get(LABEL_PRIORITY)
                if priority_class and priority_class not in self.queue.priorities:
                    self._warn_missing_priority(job, priority_class)
                    continue
                workloads[uid] = self.emulator.create_object(WORKLOADS, self._new_workload(job))
            self._sync_job(job, workloads[uid])
        self._schedule()

    def _manages(self, job: dict[str, Any]) -> bool:
        meta = job["metadata"]
        controller = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
        if controller and (controller.get("apiVersion"), controller.get("kind")) in MANAGED_OWNERS:
            return False
        return bool((meta.get("labels") or {}).get(LABEL_QUEUE))

    def _default_job(self, resource: str, obj: dict[str, Any], created: bool) -> None:
        """Kueue's mutating webhook for Jobs: a managed Job is created suspended."""
        if resource == JOBS and created and self._manages(obj):
            obj["spec"]["suspend"] = True

    def _warn_missing_priority(self, job: dict[str, Any], priority_class: str) -> None:
        meta = job["metadata"]
        if meta["uid"] in self._warned:
            return
        self._warned.add(meta["uid"])
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": "Warning",
            "reason": "WorkloadPriorityClassNotFound",
            "message": f'WorkloadPriorityClass "{priority_class}" not found',
            "source": {"component": "kueue-job-controller"},
        }  # fmt: skip
        self.emulator.create_object(EVENTS, event)

    def _new_workload(self, job: dict[str, Any]) -> dict[str, Any]:
        meta, spec = job["metadata"], job["spec"]
        priority_class = (meta.get("labels") or {}).get(LABEL_PRIORITY)
        workload_spec: dict[str, Any] = {
            "queueName": meta["labels"][LABEL_QUEUE],
            "active": True,
            "podSets": [{"name": "main", "count": spec.get("parallelism", 1), "template": spec["template"]}],
            "priority": self.queue.priorities.get(priority_class or "", 0),
        }
        if priority_class:
            workload_spec["priorityClassRef"] = {
                "group": GROUP, "kind": "WorkloadPriorityClass", "name": priority_class,
            }  # fmt: skip
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}
        return {
            "metadata": {
                "name": workload_name(job),
                "namespace": meta["namespace"],
                "labels": {LABEL_JOB_UID: meta["uid"]},
                "ownerReferences": [{**owner, "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": workload_spec,
        }

    # ------------------------------------------------------------ Kueue's job reconciler

    def _sync_job(self, job: dict[str, Any], workload: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        status = job.get("status") or {}
        finished = next(
            (
                c
                for c in status.get("conditions") or []
                if c["type"] in ("Complete", "Failed") and c["status"] == "True"
            ),
            None,
        )
        if finished is not None:
            if not _holds(workload, "Finished"):
                reason = "Succeeded" if finished["type"] == "Complete" else "Failed"
                self._set_conditions(
                    workload, _condition("Finished", True, reason, finished.get("message", ""))
                )
            return
        admitted = _holds(workload, "Admitted") and not _holds(workload, "Evicted")
        template = spec["template"]["spec"]
        if admitted and spec.get("suspend"):
            self._originals.setdefault(
                meta["uid"], {k: copy.deepcopy(template.get(k)) for k in ("nodeSelector", "tolerations")}
            )
            injected = {
                "nodeSelector": {**(template.get("nodeSelector") or {}), **self.queue.node_labels} or None,
                "tolerations": [*(template.get("tolerations") or []), *self.queue.tolerations] or None,
            }
            patch = {"spec": {"suspend": False, "template": {"spec": injected}}}
            self.emulator.patch_object(JOBS, meta["namespace"], meta["name"], patch)
        elif not admitted and not spec.get("suspend"):
            self.emulator.patch_object(JOBS, meta["namespace"], meta["name"], {"spec": {"suspend": True}})
        elif not admitted and not status.get("startTime") and meta["uid"] in self._originals:
            restore = {"spec": {"template": {"spec": self._originals.pop(meta["uid"])}}}
            self.emulator.patch_object(JOBS, meta["namespace"], meta["name"], restore)
        if spec.get("suspend") and not status.get("active") and _holds(workload, "QuotaReserved"):
            evicted = _holds(workload, "Evicted")
            if evicted or not workload["spec"].get("active", True):
                self._release(job, workload, evicted)
        deactivated = not workload["spec"].get("active", True)
        if deactivated and _holds(workload, "QuotaReserved") and not _holds(workload, "Evicted"):
            self._set_conditions(
                workload, _condition("Evicted", True, "Deactivated", "The workload is deactivated")
            )

    def _release(self, job: dict[str, Any], workload: dict[str, Any], evicted: dict[str, Any] | None) -> None:
        """The Job has stopped after an eviction: give the quota back and requeue (unless deactivated)."""
        if not any(p for p in self.emulator.list_objects(PODS) if _owned_by(p, job) and _active(p)):
            message = (evicted or {}).get("message", "The workload is deactivated")
            reason = (evicted or {}).get("reason", "Deactivated")
            active = workload["spec"].get("active", True)
            self._set_conditions(
                workload,
                _condition("QuotaReserved", False, "Pending", message),
                _condition("Admitted", False, "NoReservation", "The workload has no reservation"),
                _condition("Requeued", active, reason, message),
                admission=None,
            )

    # ------------------------------------------------------------ Kueue's scheduler

    def _schedule(self) -> None:
        workloads = [w for w in self.emulator.list_objects(WORKLOADS) if not _holds(w, "Finished")]
        admitted = [w for w in workloads if _holds(w, "QuotaReserved")]
        pending = sorted(
            (w for w in workloads if not _holds(w, "QuotaReserved") and w["spec"].get("active", True)),
            key=lambda w: (-w["spec"].get("priority", 0), w["metadata"]["creationTimestamp"]),
        )
        for workload in pending:
            namespace = workload["metadata"]["namespace"]
            queue_name = workload["spec"]["queueName"]
            if (namespace, queue_name) not in self.queue.local_queues:
                self._wait(workload, "Inadmissible", f"LocalQueue {queue_name} doesn't exist")
                continue
            short = self._shortfall(workload, admitted)
            if short and self.queue.preempt_lower_priority:
                lower = [
                    w for w in admitted if w["spec"].get("priority", 0) < workload["spec"].get("priority", 0)
                ]
                victims = [w for w in lower if not _holds(w, "Evicted")]
                if lower and not self._shortfall(workload, [w for w in admitted if w not in lower]):
                    for victim in victims:
                        self._preempt(victim, workload)
                    self._wait(workload, "Pending", f"{self._message(short)}. Pending the preemption of "
                               f"{len(lower)} workload(s)")  # fmt: skip
                    continue
            if short:
                self._wait(workload, "Pending", self._message(short))
                continue
            self._admit(workload)
            admitted.append(workload)

    def _usage(self, workload: dict[str, Any]) -> dict[str, Decimal]:
        pod_set = workload["spec"]["podSets"][0]
        return {
            name: value * pod_set.get("count", 1) for name, value in pod_requests(pod_set["template"]).items()
        }

    def _shortfall(self, workload: dict[str, Any], admitted: list[dict[str, Any]]) -> dict[str, Decimal]:
        used: dict[str, Decimal] = {}
        for other in admitted:
            for name, value in self._usage(other).items():
                used[name] = used.get(name, Decimal(0)) + value
        short = {}
        for name, value in self._usage(workload).items():
            available = parse_quantity(self.queue.quota.get(name, "0")) - used.get(name, Decimal(0))
            if value > available:
                short[name] = value - max(available, Decimal(0))
        return short

    def _message(self, short: dict[str, Decimal]) -> str:
        missing = ", ".join(
            f"insufficient unused quota for {name} in flavor {self.queue.flavor}, "
            f"{_amount(name, value)} more needed"
            for name, value in sorted(short.items())
        )
        return f"couldn't assign flavors to pod set main: {missing}"

    def _wait(self, workload: dict[str, Any], reason: str, message: str) -> None:
        current = next(
            (c for c in workload.get("status", {}).get("conditions") or [] if c["type"] == "QuotaReserved"),
            {},
        )
        if (current.get("reason"), current.get("message")) != (reason, message) or current.get(
            "status"
        ) != "False":
            self._set_conditions(workload, _condition("QuotaReserved", False, reason, message))

    def _admit(self, workload: dict[str, Any]) -> None:
        usage = {name: _amount(name, value) for name, value in self._usage(workload).items()}
        admission = {
            "clusterQueue": self.queue.name,
            "podSetAssignments": [
                {"name": "main", "flavors": dict.fromkeys(usage, self.queue.flavor), "resourceUsage": usage,
                 "count": workload["spec"]["podSets"][0].get("count", 1)}
            ],
        }  # fmt: skip
        conditions = [
            _condition(
                "QuotaReserved", True, "QuotaReserved", f"Quota reserved in ClusterQueue {self.queue.name}"
            ),
            _condition("Admitted", True, "Admitted", "The workload is admitted"),
        ]
        for kind in ("Evicted", "Preempted"):
            before = _holds(workload, kind)
            if before:
                conditions.append(
                    _condition(kind, False, "QuotaReserved", f"Previously: {before['message']}")
                )
        self._set_conditions(workload, *conditions, admission=admission)

    def _preempt(self, victim: dict[str, Any], preemptor: dict[str, Any]) -> None:
        message = (
            f"Preempted to accommodate a workload (UID: {preemptor['metadata']['uid']}, JobUID: "
            f"{preemptor['metadata']['labels'][LABEL_JOB_UID]}) due to prioritization in the ClusterQueue"
        )
        self._set_conditions(
            victim,
            _condition("Evicted", True, "Preempted", message),
            _condition("Preempted", True, "InClusterQueue", message),
        )

    def _set_conditions(self, workload: dict[str, Any], *conditions: dict[str, Any], **fields: Any) -> None:
        meta = workload["metadata"]
        current = self.emulator.get_object(WORKLOADS, meta["namespace"], meta["name"])
        if current is None:
            return
        status = copy.deepcopy(current.get("status") or {})
        kinds = {c["type"] for c in conditions}
        status["conditions"] = [c for c in status.get("conditions") or [] if c["type"] not in kinds] + list(
            conditions
        )
        for name, value in fields.items():
            if value is None:
                status.pop(name, None)
            else:
                status[name] = value
        updated = self.emulator.patch_object(
            WORKLOADS, meta["namespace"], meta["name"], [{"op": "add", "path": "/status", "value": status}],
            subresource="status",
        )  # fmt: skip
        workload.clear()
        workload.update(updated)


def _owned_by(pod: dict[str, Any], job: dict[str, Any]) -> bool:
    return any(o.get("uid") == job["metadata"]["uid"] for o in pod["metadata"].get("ownerReferences") or [])


def _active(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase", "Pending") in ("Pending", "Running")
