"""The phase machine: a ToolTuneJob's status computed from what the operator observes.

Pure: ``compute_status`` takes the spec check, the current attempt's Job and Pods and the previous
status, and returns the operator-owned part of the new status. Handlers patch only the difference.
The trainer owns the other status fields (progress, diagnosis, checkpoints, evaluation, output, openai, cost,
training).

Transitions, checked top to bottom (the first row that matches wins):

    observed                                              phase       reason
    ----------------------------------------------------  ----------  ----------------------
    spec invalid                                          Failed      ValidationFailed
    previous phase terminal and no newer attempt started  (kept)      (kept)
    Job condition Complete                                Succeeded   Completed
    a group's Job failed or failing, restart due          Pending     GroupRestarting
      (status.group_restart: a pod disrupted, or failed
      with restarts left)
    Job Failed, remote job cancelled (openai)             Cancelled   Cancelled
    Job Failed by podFailurePolicy, the pod's termination Failed      EvaluationGateFailed
      message says gate_failed (the model missed
      spec.evaluation.gate; it is kept, not promoted)
    Job Failed by podFailurePolicy (exit code 2)          Failed      InvalidData
    Job Failed, backoffLimit reached                      Failed      BackoffLimitExceeded
    Job Failed, activeDeadlineSeconds reached             Failed      DeadlineExceeded
    spec.suspend, and the Job has it too (unless Kueue    Suspended   SuspendedByUser
      runs the Job and the operator cannot reach its
      Workload: support off); until the reconciler's
      patch lands, the rows below
    no Job (was running before)                           Failed      JobLost
    no Job, the API server refused to create it           Pending     JobRefused
    no Job, an older unfinished job writes to its output  Pending     OutputInUse
    no Job, not seen by the reconciler, previously one    (kept)      (kept)
      of the two rows above
    no Job yet                                            Pending     JobCreated
    the Job is Kueue's (queue label) and suspended        Queued      kueue.queue_state: why it waits
                                                                      (WaitingForQuota, Preempted, ...)
    every pod runs (all resources.nodes of a group)
      and the trainer reports steps                       Running     Training
    ... no step reported yet                              Validating  ValidatingData
    the pod cannot start: a Secret, ConfigMap or key missing  Pending  ConfigMissing
    ... the image cannot be pulled                        Pending     ImagePullFailed
    ... no node fits (GPUs, selector, taints)             Pending     Unschedulable
    some of a group's pods run, the others wait           Pending     GroupStarting
    otherwise (the pod waits to start)                    Pending     PodPending

A queued Job that Kueue admits is unsuspended and goes on through the rows below it; an eviction by Kueue
(preemption) suspends it again, which is Queued again, with Kueue's reason: the pods it deleted are no
failures, so no retry is counted, and the next pod resumes from the checkpoint made on SIGTERM.

The three blocked rows read the pod's status and the kubelet's and scheduler's Events (pod_problems);
they set the Blocked condition, whose message says what to do.

Terminal phases are Succeeded, Failed and Cancelled. A spec change after Failed or Cancelled starts a
new attempt (handlers reset the phase to Pending), after Succeeded it is ignored with an Event.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tooltune_api import GATE_FAILED_OUTCOME
from tooltune_api.models import Condition, Phase, ToolTuneJobStatus

from tooltune_operator import conditions as c
from tooltune_operator import kueue, pod_problems
from tooltune_operator.builders import DISRUPTION_RULE
from tooltune_operator.views import group_restarts, job_condition, job_generation, termination

TERMINAL = {Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED}
BLOCKING = {c.CONFIG_MISSING, c.IMAGE_PULL_FAILED, c.UNSCHEDULABLE, c.OUTPUT_IN_USE}
EXIT_CODE_REASONS: dict[int, str] = {
    137: "killed (SIGKILL, often out of memory)",
    143: "terminated (SIGTERM)",
}


@dataclass
class Observed:
    """Everything the status depends on, gathered by the handler."""

    generation: int
    spec_problems: list[str] | None = None  # None: the spec is valid
    suspend: bool = False
    attempt: int = 1
    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    previous: ToolTuneJobStatus = field(default_factory=ToolTuneJobStatus)
    now: str = ""
    refused: str | None = None  # why the API server refused to create the attempt's children
    output_holder: str | None = None  # namespace/name of an older unfinished job writing to the same output
    # refused and output_holder are known only to the reconciler; a sighting from an event leaves them unset
    reconciled: bool = False
    pod_events: list[dict[str, Any]] = field(default_factory=list)  # Warning Events of the attempt's pods
    workload: dict[str, Any] | None = None  # Kueue's Workload of the Job (kueue.workload_view), when read
    kueue_reading: bool = False  # whether the operator reads Workloads (its Kueue support is on)
    nodes: int = 1  # spec.resources.nodes: pods that must all run before the job trains
    gpus: int = 1  # spec.resources.gpus, per node
    backoff_limit: int = 3  # spec.backoffLimit: a group's counted restarts


def retry_wanted(
    ended_badly: bool,
    generation: int,
    built_from: int | None,
    suspend: bool,
    group_restart: str | None = None,
) -> bool:
    """The one rule for starting a new attempt, unless the job is suspended: the last one failed (or was
    cancelled) and the spec was changed after its Job was built — a fix after a failure tries again; or the
    last attempt was a group whose Job failed and may restart (group_restart). A finished or running
    attempt keeps the spec it started with."""
    return not suspend and ((ended_badly and generation > (built_from or 0)) or group_restart is not None)


COUNTED, UNCOUNTED = "counted", "uncounted"
_RULE_INDEX = re.compile(r"rule at index (\d+)")


def group_restart(job: dict[str, Any] | None, backoff_limit: int) -> str | None:
    """Whether a group's Job, failed (or failing: FailureTarget, while its pods stop), is to run again as the
    next attempt from the newest checkpoint: COUNTED when a pod failed and fewer than backoff_limit restarts
    were counted before, UNCOUNTED when a pod was disrupted (evicted, preempted, drained: the disruption
    rule of its podFailurePolicy matched), None otherwise (not a group, invalid data, the deadline, no
    restarts left)."""
    before = group_restarts(job)
    failed = job_condition(job, "Failed") or job_condition(job, "FailureTarget")
    if before is None or failed is None:
        return None
    if failed.get("reason") == "PodFailurePolicy":
        rule = _RULE_INDEX.search(failed.get("message") or "")
        return UNCOUNTED if rule and int(rule.group(1)) == DISRUPTION_RULE else None
    if failed.get("reason") == "BackoffLimitExceeded" and before < backoff_limit:
        return COUNTED
    return None


def needs_resync(status: Mapping[str, Any], meta: Mapping[str, Any], spec: Mapping[str, Any]) -> bool:
    """Whether the periodic resync watches a ToolTuneJob: while unfinished (a job with no status yet too:
    its create may have been lost, and reconcile.resync gives the create handler its turn first), or while
    retry_wanted says a new attempt is due (and its start may have been lost)."""
    phase = status.get("phase")
    if phase not in TERMINAL:
        return True
    ended_badly = phase in {Phase.FAILED, Phase.CANCELLED}
    return retry_wanted(
        ended_badly, meta.get("generation", 1), status.get("specGeneration"), bool(spec.get("suspend"))
    )


def failure_reason(pods: list[dict[str, Any]]) -> str | None:
    """The newest failed pod's termination message, else its exit code explained."""
    failed = [p for p in pods if (termination(p) or {}).get("exitCode", 0) != 0]
    if not failed:
        return None
    newest = max(failed, key=lambda p: (p.get("status") or {}).get("startTime") or "")
    state = termination(newest) or {}
    if state.get("reason") == "OOMKilled":  # its log tail (FallbackToLogsOnError) says nothing of why
        return (
            f"the trainer ran out of memory (OOMKilled, exit code {state.get('exitCode')}): raise "
            "resources.memory, or lower hyperparameters.batchSize or maxSeqLength"
        )
    message = (state.get("message") or "").strip()
    if message:
        return message.splitlines()[-1][:512]
    code = state.get("exitCode")
    explained = EXIT_CODE_REASONS.get(int(code or 0)) or str(state.get("reason") or "error")
    return f"trainer exited with code {code}: {explained}"


def pod_waiting_reason(pods: list[dict[str, Any]]) -> str | None:
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting")
            if waiting:
                return f"{waiting.get('reason', 'Waiting')}: {waiting.get('message', '')}".rstrip(": ")
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return f"Unschedulable: {condition.get('message', '')}".rstrip(": ")
    return None


def decide_phase(seen: Observed) -> tuple[Phase, str, str]:
    """The transition table above: (phase, reason, message)."""
    previous = seen.previous
    if seen.spec_problems:
        return Phase.FAILED, c.VALIDATION_FAILED, "; ".join(seen.spec_problems)
    if previous.phase in TERMINAL and previous.attempts == seen.attempt:
        return Phase(previous.phase), _reason(previous, previous.phase), previous.message or ""
    if job_condition(seen.job, "Complete"):
        return Phase.SUCCEEDED, c.COMPLETED, "training finished"
    restart = group_restart(seen.job, seen.backoff_limit)
    if restart:
        return Phase.PENDING, c.GROUP_RESTARTING, restart_message(seen, restart)
    failed = job_condition(seen.job, "Failed")
    if failed:
        reason = failure_reason(seen.pods) or failed.get("message") or "the Job failed"
        if previous.openai and previous.openai.status == "cancelled":
            return Phase.CANCELLED, c.CANCELLED, reason
        by_job_reason = {
            "PodFailurePolicy": c.INVALID_DATA,
            "BackoffLimitExceeded": c.BACKOFF_LIMIT_EXCEEDED,
            "DeadlineExceeded": c.DEADLINE_EXCEEDED,
        }
        if failed.get("reason") == "PodFailurePolicy" and reason.startswith(f"{GATE_FAILED_OUTCOME}: "):
            return Phase.FAILED, c.EVALUATION_GATE_FAILED, reason.removeprefix(f"{GATE_FAILED_OUTCOME}: ")
        return Phase.FAILED, by_job_reason.get(failed.get("reason", ""), c.BACKOFF_LIMIT_EXCEEDED), reason
    # Suspended once the Job carries it; a Kueue Job once its Workload does, which the operator reaches only
    # with Kueue support on (off: reconcile says SuspendIgnored and the Job runs on)
    job_suspended = ((seen.job or {}).get("spec") or {}).get("suspend")
    held = seen.job is None or job_suspended or (kueue.queue_of(seen.job) and seen.kueue_reading)
    if seen.suspend and held:
        return Phase.SUSPENDED, c.SUSPENDED_BY_USER, "spec.suspend is true; set it to false to resume"
    if seen.job is None:
        if previous.phase in {Phase.RUNNING, Phase.VALIDATING}:
            return Phase.FAILED, c.JOB_LOST, f"Job {previous.job_name} disappeared before it finished"
        if seen.refused:
            return Phase.PENDING, c.JOB_REFUSED, f"the API server refused the Job: {seen.refused}"
        if seen.output_holder:
            holder = seen.output_holder
            return Phase.PENDING, c.OUTPUT_IN_USE, (
                f"spec.output.uri is also written by ToolTuneJob {holder}, which has not finished: this job "
                "starts when it does (or give this job another output.uri)"
            )  # fmt: skip
        waiting = previous.reason in {c.JOB_REFUSED, c.OUTPUT_IN_USE} and previous.attempts == seen.attempt
        if waiting and not seen.reconciled:  # an event cannot tell; the reconciler's answer stands
            return Phase(previous.phase or Phase.PENDING), str(previous.reason), previous.message or ""
        return Phase.PENDING, c.JOB_CREATED, "creating the training Job"
    queue = kueue.queue_of(seen.job)
    if queue and (seen.job.get("spec") or {}).get("suspend"):
        priority = kueue.priority_of(seen.job)
        return Phase.QUEUED, *kueue.queue_state(seen.workload, queue, seen.kueue_reading, priority)
    running = sum((p.get("status") or {}).get("phase") == "Running" for p in seen.pods)
    if running and running >= seen.nodes:
        if previous.progress and previous.progress.total_steps:
            return Phase.RUNNING, c.TRAINING, "training"
        return Phase.VALIDATING, c.VALIDATING_DATA, "fetching and validating data, loading the model"
    blocked = pod_problems.blocker(seen.pods, seen.pod_events)
    if blocked:
        return Phase.PENDING, *blocked
    if running:
        return Phase.PENDING, c.GROUP_STARTING, (
            f"{running} of {seen.nodes} pods run; training starts when the whole group does"
        )  # fmt: skip
    return Phase.PENDING, c.POD_PENDING, pod_waiting_reason(seen.pods) or "waiting for the pod to start"


def restart_message(seen: Observed, restart: str) -> str:
    """Why and how a group restarts: the pod's failure, and what it costs of spec.backoffLimit."""
    before = group_restarts(seen.job) or 0
    why = failure_reason(seen.pods) or (job_condition(seen.job, "FailureTarget") or {}).get("message", "")
    if restart == COUNTED:
        count = f"restart {before + 1} of {seen.backoff_limit} (spec.backoffLimit)"
    else:
        count = "a disruption: not counted against spec.backoffLimit"
    return (
        f"a pod of the {seen.nodes}-node group failed ({why.rstrip('.')}): the whole group restarts from the "
        f"newest complete checkpoint, {count}"
    )


def workers(seen: Observed) -> str:
    """nodes x GPUs per node, as kubectl get ttj shows it: 2x4, or 2xCPU without GPUs."""
    return f"{seen.nodes}x{seen.gpus or 'CPU'}"


def _reason(status: ToolTuneJobStatus, phase: str) -> str:
    for condition in status.conditions:
        if condition.type in {c.SUCCEEDED, c.FAILED} and condition.status == "True":
            return condition.reason
    return {Phase.SUCCEEDED: c.COMPLETED, Phase.CANCELLED: c.CANCELLED}.get(Phase(phase), c.FAILED)


def build_conditions(phase: Phase, reason: str, message: str, seen: Observed) -> list[Condition]:
    validated = not seen.spec_problems
    wanted = [
        (c.VALIDATED, validated, c.SPEC_VALID if validated else c.VALIDATION_FAILED),
        (c.RUNNING, phase in {Phase.VALIDATING, Phase.RUNNING}, reason),
        (c.SUCCEEDED, phase == Phase.SUCCEEDED, reason),
        (c.FAILED, phase in {Phase.FAILED, Phase.CANCELLED}, reason),
        (c.SUSPENDED, phase == Phase.SUSPENDED, reason),
        (c.QUEUED, phase == Phase.QUEUED, reason),
        (c.BLOCKED, reason in BLOCKING, reason),
    ]
    old = {cond.type: cond for cond in seen.previous.conditions}
    result = []
    for kind, true, why in wanted:
        status = "True" if true else "False"
        if kind == c.VALIDATED:
            text = "; ".join(seen.spec_problems or [])
        else:
            text = message if true else ""
        before = old.get(kind)
        since = before.last_transition_time if before and before.status == status else seen.now
        result.append(
            Condition(
                type=kind,
                status=status,
                reason=why,
                message=text,
                last_transition_time=since,
                observed_generation=seen.generation,
            )
        )
    return result


def compute_status(seen: Observed) -> ToolTuneJobStatus:
    """The operator-owned fields of the new status."""
    phase, reason, message = decide_phase(seen)
    previous = seen.previous
    job_status = (seen.job or {}).get("status") or {}
    running = phase in {Phase.VALIDATING, Phase.RUNNING}
    start = previous.start_time or (seen.now if running else None)  # a refused spec never started
    terminal = phase in TERMINAL
    failed = phase in {Phase.FAILED, Phase.CANCELLED}
    return ToolTuneJobStatus(
        phase=phase,
        conditions=build_conditions(phase, reason, message, seen),
        observed_generation=seen.generation,
        attempts=previous.attempts if seen.spec_problems else seen.attempt,
        retries=retries(seen.job, seen.backoff_limit) if seen.job else previous.retries,
        job_name=(seen.job or {}).get("metadata", {}).get("name") or previous.job_name,
        workers=workers(seen) if not seen.spec_problems else previous.workers,
        spec_generation=job_generation(seen.job) or previous.spec_generation,
        start_time=job_status.get("startTime") or start,
        completion_time=(previous.completion_time or seen.now) if terminal else None,
        failure_reason=message if failed else None,
        reason=reason,
        message=message,
    )


def retries(job: dict[str, Any], backoff_limit: int = 0) -> int:
    """Pods the Job started again after a failure: each failure but the one that failed the Job. A group's:
    the counted restarts before its attempt, and the one its failure starts."""
    before = group_restarts(job)
    if before is not None:
        return before + (group_restart(job, backoff_limit) == COUNTED)
    failed = int((job.get("status") or {}).get("failed") or 0)
    return max(0, failed - 1) if job_condition(job, "Failed") else failed


OWNED_FIELDS = (
    "phase",
    "conditions",
    "observedGeneration",
    "attempts",
    "retries",
    "jobName",
    "workers",
    "specGeneration",
    "startTime",
    "completionTime",
    "failureReason",
    "reason",
    "message",
)


def status_patch(previous: dict[str, Any], new: ToolTuneJobStatus) -> dict[str, Any]:
    """A merge patch of the operator-owned fields that changed; {} when nothing did."""
    wanted = new.model_dump(by_alias=True, mode="json")
    patch = {}
    for key in OWNED_FIELDS:
        if (previous or {}).get(key) != wanted.get(key):
            patch[key] = wanted.get(key)
    return patch
