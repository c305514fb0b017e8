"""Kueue as tooltune meets it: the labels that queue a Job, and what its Workload says about why it waits.

Kueue (kueue.sigs.k8s.io, "Run a Kubernetes Job") manages a batch/v1 Job that carries the label
``kueue.x-k8s.io/queue-name``: its webhook makes the Job suspended on create, it creates a Workload for
the Job (owned by it, label ``kueue.x-k8s.io/job-uid`` = the Job's uid), and on admission it unsuspends
the Job with the ResourceFlavor's node labels and tolerations injected into the pod template; an
eviction (preemption, deactivation, a failed admission check, a stopped queue) suspends it again, which
deletes the pods (SIGTERM first: the trainer checkpoints the step it is on). A Job without the label is
not Kueue's unless Kueue runs with ``manageJobsWithoutQueueName``.

Kueue skips a Job whose *controller* owner is a kind it manages itself (a JobSet's Jobs, say:
``jobframework.IsOwnerManagedByKueueForObject``). tooltune's Jobs are controlled by a ToolTuneJob,
which Kueue does not know, so Kueue queues and admits them like a user's own Job.

What follows for the operator:
- a queued Job is created suspended (as Kueue's webhook would make it), and from then on only Kueue
  writes its ``spec.suspend``: a second writer would fight Kueue's admission;
- the user's ``spec.suspend`` becomes the Workload's ``spec.active`` (false: Kueue evicts the workload and
  never admits it; true again: it is requeued), the way Kueue documents to stop a workload;
- the Workload's conditions are the queue's view of the job (``queue_state``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tooltune_api.models import ToolTuneJobSpec

GROUP = "kueue.x-k8s.io"
WORKLOADS = "workloads"
# The versions of Workload whose fields the operator reads (metadata, spec.active, status.conditions,
# status.admission, status.admissionChecks are the same in each); Kueue 0.15+ serves v1beta2.
API_VERSIONS = (f"{GROUP}/v1beta2", f"{GROUP}/v1beta1", f"{GROUP}/v1")
LABEL_QUEUE = f"{GROUP}/queue-name"
LABEL_PRIORITY_CLASS = f"{GROUP}/priority-class"
LABEL_JOB_UID = f"{GROUP}/job-uid"

# Reasons of the Queued phase (the status's reason column): what the Workload says.
WAITING_FOR_KUEUE = "WaitingForKueue"  # no Workload seen yet, or the operator does not read them
WAITING_FOR_QUOTA = "WaitingForQuota"  # QuotaReserved=False: the ClusterQueue has no room yet
INADMISSIBLE = "Inadmissible"  # the LocalQueue or its ClusterQueue does not exist or is stopped
WAITING_FOR_ADMISSION_CHECKS = "WaitingForAdmissionChecks"  # quota reserved, an admission check pending
ADMITTED = "Admitted"  # admitted; Kueue is about to unsuspend the Job
PREEMPTED = "Preempted"  # evicted to make room for another workload; resumes from its checkpoint
EVICTED = "Evicted"  # evicted for another reason Kueue gives (PodsReadyTimeout, AdmissionCheck, ...)


def job_labels(spec: ToolTuneJobSpec, default_queue: str = "", default_priority: str = "") -> dict[str, str]:
    """The Kueue labels of a job's Job: none when neither the job nor the operator names a queue."""
    queue = spec.queue_name or default_queue
    if not queue:
        return {}
    priority = spec.workload_priority_class_name or default_priority
    return {LABEL_QUEUE: queue, **({LABEL_PRIORITY_CLASS: priority} if priority else {})}


def queue_of(job: Mapping[str, Any] | None) -> str | None:
    """The LocalQueue a Job was submitted to: Kueue manages it and writes its suspend, nobody else."""
    return ((job or {}).get("metadata", {}).get("labels") or {}).get(LABEL_QUEUE)


def priority_of(job: Mapping[str, Any] | None) -> str | None:
    """The WorkloadPriorityClass a Job names."""
    return ((job or {}).get("metadata", {}).get("labels") or {}).get(LABEL_PRIORITY_CLASS)


def workload_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator reads of a Workload."""
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "jobUid": (meta.get("labels") or {}).get(LABEL_JOB_UID),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"active": spec.get("active", True) is not False, "queueName": spec.get("queueName")},
        "status": {
            "conditions": [
                {key: cond.get(key) for key in ("type", "status", "reason", "message")}
                for cond in status.get("conditions") or []
            ],
            "clusterQueue": (status.get("admission") or {}).get("clusterQueue"),
            "admissionChecks": [
                {key: check.get(key) for key in ("name", "state", "message")}
                for check in status.get("admissionChecks") or []
            ],
        },
    }


def condition(workload: Mapping[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The Workload's condition of that type, whatever its status."""
    for cond in ((workload or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def holds(workload: Mapping[str, Any] | None, kind: str) -> bool:
    return (condition(workload, kind) or {}).get("status") == "True"


def queue_state(
    workload: Mapping[str, Any] | None, queue: str, reading: bool, priority_class: str | None = None
) -> tuple[str, str]:
    """Why a Job Kueue holds suspended waits: (reason, message), in Kueue's own words where it has them.

    Workload                                       reason
    ---------------------------------------------  -------------------------
    not read (the operator's Kueue support is off) WaitingForKueue
    none yet                                       WaitingForKueue
    Evicted=True, reason Preempted                 Preempted
    Evicted=True, another reason (Deactivated only Evicted
      while spec.active is false)
    QuotaReserved not True, reason Inadmissible    Inadmissible
    QuotaReserved not True                         WaitingForQuota
    QuotaReserved=True, Admitted not True          WaitingForAdmissionChecks
    Admitted=True                                  Admitted
    """
    if not reading:
        return WAITING_FOR_KUEUE, (
            f"waiting for Kueue to admit the Job (LocalQueue {queue}); turn on the operator's Kueue support "
            "(Helm value kueue.enabled) to see why it waits"
        )
    if workload is None:
        missing = (  # Kueue creates no Workload for a Job naming a class that does not exist
            f"; does WorkloadPriorityClass {priority_class} exist (kubectl get workloadpriorityclasses)?"
            if priority_class
            else ""
        )
        return WAITING_FOR_KUEUE, (
            f"waiting for Kueue to create the Job's Workload (LocalQueue {queue}): is Kueue installed and "
            f"managing this namespace{missing}"
        ) + ("" if missing else "?")
    quota = condition(workload, "QuotaReserved") or {}
    waiting = quota.get("message") if quota.get("status") != "True" else None
    evicted = condition(workload, "Evicted") or {}
    resumed = evicted.get("reason") == "Deactivated" and workload["spec"]["active"]  # spec.suspend undone
    if evicted.get("status") == "True" and not resumed:
        then = f"; now {waiting}" if waiting and waiting != evicted.get("message") else ""
        resumes = "the job resumes from its last checkpoint when Kueue admits it again"
        if evicted.get("reason") == "Preempted":
            return PREEMPTED, f"preempted by Kueue: {evicted.get('message') or ''}{then}; {resumes}"
        why = f"({evicted.get('reason')}): {evicted.get('message') or ''}"
        return EVICTED, f"evicted by Kueue {why}{then}; {resumes}"
    if quota.get("status") != "True":
        reason = INADMISSIBLE if quota.get("reason") == "Inadmissible" else WAITING_FOR_QUOTA
        return reason, f"LocalQueue {queue}: {waiting or 'waiting for a quota reservation'}"
    cluster_queue = workload["status"].get("clusterQueue") or "?"
    if not holds(workload, "Admitted"):
        checks = ", ".join(
            f"{check['name']} {check.get('state')}" + (f" ({check['message']})" * bool(check.get("message")))
            for check in workload["status"].get("admissionChecks") or []
            if check.get("state") != "Ready"
        )
        return WAITING_FOR_ADMISSION_CHECKS, (
            f"quota reserved in ClusterQueue {cluster_queue}; waiting for admission checks: {checks or '-'}"
        )
    return ADMITTED, f"admitted by ClusterQueue {cluster_queue}: the Job starts"
