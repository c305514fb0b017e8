"""The reconciler: everything the operator does to the cluster for a ToolTuneJob, called by the handlers.

- ``converge`` (create, resume, spec change, the periodic resync, a multi-node group's failed Job): check
  the spec, pick the attempt (``status.retry_wanted`` is the one rule for a new one: a spec fix after a
  failure, or a group restart), make sure its Job and contract ConfigMap (and a group's headless Service)
  exist (deterministic names, so an operator restart never starts a second run), apply ``spec.suspend``
  to the Job (to its Kueue Workload's ``spec.active`` when Kueue manages the Job: ``kueue``), then hand the
  status to the status writer.
- ``note_spec_change``: tell the user what a spec edit does to a running or finished attempt.
- ``clean_up`` (delete): stop the pods now and cancel a remote OpenAI job (in a pod of its own, which
  gets the API key through secretKeyRef: the operator reads no Secret); owner references take care of the
  rest, and data in S3 is never deleted.

Spec changes while an attempt runs: ``spec.suspend`` applies at once; any other change is recorded
(Event ``SpecChangeDeferred``) and applies to the next attempt, which starts when the change comes
after the job Failed or was Cancelled. After Succeeded a change is ignored with an Event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from tooltune_api.models import Backend, Phase, ToolTuneJobSpec, ToolTuneJobStatus

from tooltune_operator import builders, kueue
from tooltune_operator import conditions as c
from tooltune_operator.kube import ApiError, Kube
from tooltune_operator.metrics import OperatorMetrics
from tooltune_operator.settings import Settings
from tooltune_operator.status import COUNTED, TERMINAL, group_restart, needs_resync, retry_wanted
from tooltune_operator.status_writer import StatusWriter
from tooltune_operator.views import group_restarts, job_condition, job_generation, job_view, of_attempt

REFUSED_RETRY_SECONDS = 60.0
log = logging.getLogger(__name__)
UNSEEN_GRACE_ROUNDS = 3  # resync periods a job without status is left to its create handler
BUSY_RETRY_SECONDS = 2.0


def converge(
    memo: kopf.Memo,
    raw: dict[str, Any],
    jobs: Any,
    pods: Any,
    indexed_job: bool = False,
    restart: bool = False,
    owners: Any = None,
) -> int:
    """Make the current attempt's children exist, then sync the status; returns the attempt.

    With indexed_job the attempt's Job is read from the index when it is there (the resync: a stale index
    delays a correction by one period); otherwise from the API (an event comes once, and the index may
    not yet show the Job's last change, e.g. its suspend). On create and resume (restart) an existing
    unfinished Job's ConfigMap is made sure of too: a crash or an API error may have come between them.
    owners (the index of every ToolTuneJob) tells whether another one writes to the same output."""
    kube: Kube = memo.kube
    key = (raw["metadata"]["namespace"], builders.job_label(raw["metadata"]["name"]))
    spec = checked_spec(memo, raw)
    attempt = (raw["status"] or {}).get("attempts") or 1
    refused = holder = job = None
    if spec is not None:
        attempt, job = current_attempt(kube, memo.metrics, raw, spec, jobs.get(key) if indexed_job else None)
        holder = output_holder(raw, spec, owners) if job is None else None
        try:
            if holder is None:
                job = ensure_children(memo, raw, spec, attempt, job, restart)
        except ApiError as error:
            if error.status == 429:  # throttled: nothing was refused, try again shortly
                busy = "the API server asked to slow down (429)"
                raise kopf.TemporaryError(busy, delay=BUSY_RETRY_SECONDS) from None
            if not 400 <= error.status < 500:
                raise
            refused = api_message(error)
            kopf.event(raw, type="Warning", reason=c.JOB_REFUSED, message=refused)
    writer: StatusWriter = memo.status_writer
    known = list(jobs.get(key) or [])
    if spec is not None and job is not None and not of_attempt(known, attempt):
        writer.made_job(raw, job_view(job))  # created a moment ago: the index has not seen it yet
    sighting = writer.observe(raw, known, pods.get(key), attempt)
    sighting.seen.refused, sighting.seen.reconciled = refused, True
    if holder is not None:
        sighting.seen.output_holder = "{namespace}/{name}".format(**holder["metadata"])
    writer.sync(sighting)
    if refused:  # an admin may fix what the API server refused (RBAC, a quota, a webhook): try again later
        raise kopf.TemporaryError(refused, delay=REFUSED_RETRY_SECONDS)
    return int(attempt)


def output_holder(raw: dict[str, Any], spec: ToolTuneJobSpec, owners: Any) -> dict[str, Any] | None:
    """The older unfinished ToolTuneJob whose output.uri is this one's or nests with it: two writers of one
    output would share (and prune) each other's checkpoints, and a resume could take the other's."""
    mine = shared_output(spec.output.uri)
    if mine is None:
        return None
    meta = raw["metadata"]
    rank = (meta.get("creationTimestamp") or "", meta["namespace"], meta["name"])
    for key in owners or {}:
        for other in owners[key]:
            theirs = shared_output(((other.get("spec") or {}).get("output") or {}).get("uri") or "")
            their = other["metadata"]
            if (
                theirs is None
                or their.get("uid") == meta.get("uid")
                or their.get("deletionTimestamp")
                or (other.get("status") or {}).get("phase") in TERMINAL
                or not (mine == theirs or mine.startswith(theirs + "/") or theirs.startswith(mine + "/"))
            ):
                continue
            if (their.get("creationTimestamp") or "", their["namespace"], their["name"]) < rank:
                return other
    return None


def shared_output(uri: str) -> str | None:
    """An output URI every pod shares (s3://), normalised; None for a path, which each pod has its own of."""
    scheme, separator, rest = uri.partition("://")
    return f"s3://{rest.strip('/')}" if separator and scheme.lower() == "s3" else None


def api_message(error: ApiError) -> str:
    """The API server's own message in an error answer (it names the object and the field)."""
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except ValueError:
        return f"{error.status} {error.reason}"


async def resync(memo: kopf.Memo, raw: dict[str, Any], jobs: Any, pods: Any, owners: Any) -> None:
    """One round of the periodic resync (in a thread: the API client blocks). A job with no status yet is
    the create handler's while it is younger than UNSEEN_GRACE_ROUNDS resync periods: racing it would create
    every new job's children twice under a backlog; after that, its create was lost and is made here."""
    if raw["metadata"].get("deletionTimestamp"):
        return
    if not raw.get("status") and age_seconds(raw) < UNSEEN_GRACE_ROUNDS * memo.settings.resync_seconds:
        return
    await asyncio.to_thread(converge, memo, raw, jobs, pods, indexed_job=True, owners=owners)


async def resync_forever(memo: kopf.Memo, owners: Any, jobs: Any, pods: Any) -> None:
    """The periodic resync of every ToolTuneJob that needs_resync says is watched and that is older than
    one period (its events keep a young job current), one round each resync_seconds (owners, jobs, pods:
    the operator's live indexes). One loop for the operator, not a kopf daemon per job: kopf puts a
    finalizer on everything a daemon watches, a patch and a watch event more per job (a fifth of the
    operator's CPU in a burst) and a deletion that waits for the operator."""
    while True:
        await asyncio.sleep(memo.settings.resync_seconds)
        for views in list(owners.values()):
            for raw in list(views):
                if age_seconds(raw) < memo.settings.resync_seconds:
                    continue
                if needs_resync(raw["status"] or {}, raw["metadata"], raw["spec"] or {}):
                    try:
                        await resync(memo, raw, jobs, pods, owners)
                    except Exception as error:  # kopf.TemporaryError among them: the next round tries again
                        meta = raw["metadata"]
                        log.warning("resync of %s/%s: %s", meta["namespace"], meta["name"], error)


def age_seconds(raw: dict[str, Any]) -> float:
    """Seconds since the object was created (0 when the API did not say)."""
    created = raw["metadata"].get("creationTimestamp")
    if not created:
        return 0.0
    return (datetime.now(UTC) - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds()


async def job_event(memo: kopf.Memo, owners: Any, jobs: Any, pods: Any, every_owner: Any) -> None:
    """After any event of a Job: a multi-node group's Job that has failed (all its pods stopped) starts the
    next attempt now rather than at the next resync (jobs, pods, every_owner: the operator's indexes)."""
    for owner in owners or []:
        spec = checked_spec(memo, owner)
        if spec is None or spec.resources.nodes == 1 or owner["metadata"].get("deletionTimestamp"):
            continue
        raw = {**owner, "status": memo.status_writer.latest_status(owner)}  # the index may lag our patch
        key = (raw["metadata"]["namespace"], builders.job_label(raw["metadata"]["name"]))
        current = of_attempt(jobs.get(key), raw["status"].get("attempts") or 1)
        if current and job_condition(current[0], "Failed") and group_restart(current[0], spec.backoff_limit):
            await asyncio.to_thread(converge, memo, raw, jobs, pods, indexed_job=True, owners=every_owner)


def current_attempt(
    kube: Kube, metrics: OperatorMetrics, raw: dict[str, Any], spec: ToolTuneJobSpec, indexed: Any = None
) -> tuple[int, dict[str, Any] | None]:
    """The attempt to run and its Job: the recorded attempt, or the next one when retry_wanted."""
    meta = raw["metadata"]
    attempt = (raw["status"] or {}).get("attempts") or 1
    if not raw["status"]:  # never reconciled: nothing to retry, and creating is idempotent (409 → fetch)
        return attempt, None
    job = attempt_job(kube, meta, attempt, indexed)
    failed = job is not None and job_condition(job, "Failed") is not None
    restart = group_restart(job, spec.backoff_limit) if failed else None  # Failed: every pod has stopped
    if retry_wanted(failed, meta.get("generation", 1), job_generation(job), spec.suspend, restart):
        attempt += 1
        job = attempt_job(kube, meta, attempt, indexed)
        if job is not None:  # started already, by a converge that read a newer status: told then
            return attempt, job
        if restart is None:
            metrics.job_retried(str(spec.backend))  # a group restart's retry is counted by the status writer
            message = f"spec changed after attempt {attempt - 1} failed: starting attempt {attempt}"
            kopf.event(raw, type="Normal", reason="NewAttempt", message=message)
        else:
            message = (
                f"a pod of attempt {attempt - 1} failed: all {spec.resources.nodes} pods restart as attempt "
                f"{attempt} from the newest complete checkpoint ({restart} against spec.backoffLimit)"
            )
            kopf.event(raw, type="Normal", reason=c.GROUP_RESTARTING, message=message)
    return attempt, job


def restarts_before(kube: Kube, raw: dict[str, Any], spec: ToolTuneJobSpec, attempt: int) -> int:
    """The counted group restarts before a new attempt's Job: carried over from the previous attempt when its
    group failed and restarts; a first attempt, or a spec fix after a failure, starts counting afresh."""
    if attempt == 1 or spec.resources.nodes == 1:
        return 0
    previous = attempt_job(kube, raw["metadata"], attempt - 1, None)
    restart = group_restart(previous, spec.backoff_limit) if job_condition(previous, "Failed") else None
    return (group_restarts(previous) or 0) + (restart == COUNTED) if restart else 0


def attempt_job(kube: Kube, meta: dict[str, Any], attempt: int, indexed: Any) -> dict[str, Any] | None:
    """The attempt's Job as indexed when given an index that holds it, else as the API has it (the index
    may not have caught up with a Job created a moment ago)."""
    known = of_attempt(indexed, attempt)
    if known:
        return known[0]
    return kube.get("batch/v1", "Job", meta["namespace"], builders.child_name(meta["name"], attempt))


def checked_spec(memo: kopf.Memo, raw: dict[str, Any]) -> ToolTuneJobSpec | None:
    """The parsed spec (the status writer's, parsed once per generation), or None when it is invalid (the
    status writer reports why, with an Event)."""
    spec = memo.status_writer.spec_of(raw)
    return None if isinstance(spec, list) else spec


def ensure_children(
    memo: kopf.Memo,
    raw: dict[str, Any],
    spec: ToolTuneJobSpec,
    attempt: int,
    job: dict[str, Any] | None,
    restart: bool = False,
) -> dict[str, Any] | None:
    """Create the attempt's contract ConfigMap and Job unless they exist, and hand the ConfigMap to the Job;
    apply spec.suspend to the Job. After a restart (create or resume: a crash or an API error may have come
    between the create and the handover) the handover of an unfinished Job's ConfigMap is made again."""
    kube: Kube = memo.kube
    settings: Settings = memo.settings
    grouped = spec.resources.nodes > 1
    if job is None:
        previous = ToolTuneJobStatus.model_validate(raw["status"] or {})
        if previous.phase in TERMINAL and previous.attempts == attempt:
            return None  # finished and cleaned up (ttlSecondsAfterFinished): nothing to recreate
        if spec.suspend and kueue.job_labels(spec, settings.kueue_default_queue):
            return None  # Kueue would admit a queued Job at once: it is created when the job is resumed
        ensure_trainer_rbac(memo, raw["metadata"]["namespace"])
        kube.create(builders.contract_configmap(raw, spec, attempt, settings))
        if grouped:  # before the Job: its pods' names resolve from their start
            kube.create(builders.group_service(raw, spec, attempt))
        restarts = restarts_before(kube, raw, spec, attempt)
        job = kube.create(builders.training_job(raw, spec, attempt, settings, restarts))
        hand_over(kube, raw, attempt, job, grouped)
        message = f"created Job {job['metadata']['name']} (attempt {attempt})"
        kopf.event(raw, type="Normal", reason=c.JOB_CREATED, message=message)
        return job
    if restart and "uid" in job["metadata"] and not job_condition(job, "Complete"):
        hand_over(kube, raw, attempt, job, grouped)
    if job_condition(job, "Complete"):
        return job
    if kueue.queue_of(job):  # Kueue writes this Job's suspend; the user's goes to its Workload
        suspend_workload(memo, raw, spec, job)
    elif bool(job["spec"].get("suspend")) != spec.suspend:
        name = job["metadata"]["name"]
        kube.patch("batch/v1", "Job", raw["metadata"]["namespace"], name, {"spec": {"suspend": spec.suspend}})
        report_suspend(memo, raw, spec)
    return job


def hand_over(kube: Kube, raw: dict[str, Any], attempt: int, job: dict[str, Any], grouped: bool) -> None:
    """Make the Job the owner of its contract ConfigMap (and a group's Service): they go when it goes."""
    namespace, name = raw["metadata"]["namespace"], raw["metadata"]["name"]
    contract = builders.child_name(name, attempt, "-contract")
    kube.patch("v1", "ConfigMap", namespace, contract, builders.owned_by(job))
    if grouped:
        kube.patch("v1", "Service", namespace, job["metadata"]["name"], builders.owned_by(job))


def suspend_workload(
    memo: kopf.Memo, raw: dict[str, Any], spec: ToolTuneJobSpec, job: dict[str, Any]
) -> None:
    """spec.suspend of a job Kueue queues, as its Workload's spec.active: false evicts it (Kueue suspends the
    Job, the trainer checkpoints on SIGTERM) and keeps it from being admitted; true requeues it."""
    writer: StatusWriter = memo.status_writer
    if not writer.kueue_reading:
        told = (raw["metadata"].get("uid", ""), f"{c.SUSPEND_IGNORED}/{job['metadata']['name']}")
        if spec.suspend and told not in writer.warned:
            writer.warned.add(told)
            kopf.warn(raw, reason=c.SUSPEND_IGNORED, message=(
                "spec.suspend cannot stop a Job Kueue manages while the operator's Kueue support is off "
                "(Helm value kueue.enabled): Kueue would undo it; deactivate its Workload, or turn it on"
            ))  # fmt: skip
        return
    workload = writer.workloads.get(job["metadata"].get("uid") or "")
    if workload is None or workload["spec"]["active"] != spec.suspend:
        return  # no Workload yet: the next resync, or it agrees already
    meta = workload["metadata"]
    patch = {"spec": {"active": not spec.suspend}}
    memo.kube.patch(workload["apiVersion"], "Workload", meta["namespace"], meta["name"], patch)
    report_suspend(memo, raw, spec)


def report_suspend(memo: kopf.Memo, raw: dict[str, Any], spec: ToolTuneJobSpec) -> None:
    if spec.suspend:
        message = "suspended: the pod stops, the next one resumes from the last checkpoint"
        kopf.event(raw, type="Normal", reason="Suspended", message=message)
        if spec.backend == Backend.OPENAI:
            cancel_remote(memo, raw, spec, why="suspended")  # its pod posts how it went
    else:
        kopf.event(raw, type="Normal", reason="Resumed", message="resumed")


def ensure_trainer_rbac(memo: kopf.Memo, namespace: str) -> None:
    """The trainer's ServiceAccount, Role and RoleBinding in namespace, once per operator run."""
    if namespace in memo.rbac_namespaces:
        return
    for obj in builders.trainer_rbac(namespace, memo.settings):
        memo.kube.create(obj)
    memo.rbac_namespaces.add(namespace)


def note_spec_change(raw: dict[str, Any], old: Any, new: Any, attempt: int) -> None:
    """After converge: an Event when a spec edit does not reach the running or finished attempt."""
    status = ToolTuneJobStatus.model_validate(raw["status"] or {})
    only_suspend = {k: v for k, v in (old or {}).items() if k != "suspend"} == {
        k: v for k, v in (new or {}).items() if k != "suspend"
    }
    if only_suspend or attempt != (status.attempts or 1) or status.attempts is None:
        return
    if status.phase == Phase.SUCCEEDED:
        message = (
            "the job has succeeded; the spec change is ignored (create a new ToolTuneJob to train again)"
        )
        kopf.event(raw, type="Normal", reason=c.SPEC_CHANGE_DEFERRED, message=message)
    elif status.phase not in TERMINAL:
        message = (
            "the running attempt keeps the spec it started with; the change applies if the job fails and "
            "is retried (spec.suspend applies at once)"
        )
        kopf.warn(raw, reason=c.SPEC_CHANGE_DEFERRED, message=message)


def clean_up(memo: kopf.Memo, raw: dict[str, Any]) -> None:
    """Stop the pods now (owner references would, eventually) and cancel a remote OpenAI job: the deletion
    waits (kopf retries this handler) until the pod that cancels it has ended, which posts the outcome."""
    kube: Kube = memo.kube
    status = ToolTuneJobStatus.model_validate(raw["status"] or {})
    namespace, name = raw["metadata"]["namespace"], raw["metadata"]["name"]
    for attempt in range(1, (status.attempts or 1) + 1):
        kube.delete("batch/v1", "Job", namespace, builders.child_name(name, attempt))
    spec = checked_spec(memo, raw)
    if spec is None or spec.backend != Backend.OPENAI or status.phase in TERMINAL:
        return
    job = cancel_remote(memo, raw, spec, why="deleted")
    if job is None or job_condition(job, "Complete"):
        return
    job_name, remote = job["metadata"]["name"], (status.openai.job_id if status.openai else "")
    failed = job_condition(job, "Failed")
    if failed is None:
        raise kopf.TemporaryError(f"waiting for Job {job_name} to cancel OpenAI job {remote}", delay=2.0)
    why = f"{failed.get('reason') or 'Failed'}: {failed.get('message') or 'see its pod'}"
    message = (
        f"Job {job_name} did not cancel OpenAI job {remote} ({why}); cancel it with the provider by hand"
    )
    kopf.event(raw, type="Warning", reason="RemoteCancelFailed", message=message)


def cancel_remote(
    memo: kopf.Memo, raw: dict[str, Any], spec: ToolTuneJobSpec, why: str
) -> dict[str, Any] | None:
    """The Job whose pod cancels the remote fine-tuning job, so that no paid training outlives its ToolTuneJob
    (created unless it exists; None when no remote job was started). The pod reads the API key through
    secretKeyRef, as the submitter does: the operator needs no access to Secrets."""
    status = ToolTuneJobStatus.model_validate(raw["status"] or {})
    remote = status.openai.job_id if status.openai else None
    if not remote or spec.openai is None:
        return None
    attempt = status.attempts or 1
    body = builders.remote_cancel_job(raw, spec, attempt, remote, why, memo.settings)
    meta = body["metadata"]
    existing = memo.kube.get("batch/v1", "Job", meta["namespace"], meta["name"])
    if existing is not None:
        return existing
    ensure_trainer_rbac(memo, meta["namespace"])  # its pod posts Events as the trainer's ServiceAccount
    job = memo.kube.create(body)
    message = f"started Job {meta['name']} to cancel OpenAI job {remote} ({why})"
    kopf.event(raw, type="Normal", reason="RemoteCancelStarted", message=message)
    return job
