"""kopf handlers: thin. They read the body, call the pure builders and the phase machine, and apply.

- create / resume / update of a ToolTuneJob, and a periodic resync of unfinished ones → ``converge``:
  check the spec, pick the attempt (the next one when the last failed and the spec changed since its
  Job was built), make sure its ConfigMap and Job exist (deterministic names, so an operator restart
  never starts a second run), propagate ``spec.suspend``, then sync the status.
- any event of a ToolTuneJob, or of a Job or Pod it owns → ``sync_status``: compute the status from
  the indexed Job and Pods and patch only what changed.
- delete → stop the pods and cancel a remote OpenAI job; owner references take care of the rest.

Spec changes while an attempt runs: ``spec.suspend`` applies at once; any other change is recorded
(Event ``SpecChangeDeferred``) and applies to the next attempt, which starts when the change comes
after the job Failed or was Cancelled. After Succeeded a change is ignored with an Event.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import kopf
from tooltune_api import API_VERSION, GROUP, LABEL_ATTEMPT, LABEL_JOB, LABEL_MANAGED_BY, PLURAL, VERSION
from tooltune_api.models import (
    Backend,
    InvalidSpec,
    Phase,
    ToolTuneJobSpec,
    ToolTuneJobStatus,
    now_iso,
    parse_spec,
)

from tooltune_operator import builders
from tooltune_operator import conditions as c
from tooltune_operator.kube import Kube, make_api_client
from tooltune_operator.metrics import METRICS, start_metrics_server
from tooltune_operator.settings import Settings
from tooltune_operator.status import (
    TERMINAL,
    Observed,
    compute_status,
    job_condition,
    job_generation,
    job_view,
    pod_view,
    status_patch,
)

MANAGED = {LABEL_MANAGED_BY: "tooltune"}
Key = tuple[str, str]
REPORTED: dict[tuple[str, int], tuple[str, int]] = {}  # (uid, attempt) → (phase reported, retries counted)
# uid → (resourceVersion, status) of the API's answer to our last status patch. Events and indexes follow
# the watch, often from behind: a body older than that answer lacks the patch, and a status computed from
# it would patch again (with new timestamps, a new event, and so on while kopf's backlog lasts). Until the
# watch catches up, the status is computed from the answer instead.
PATCHED: dict[str, tuple[str, dict[str, Any]]] = {}
# Event handlers are not retried by kopf: a status patch lost to an API error (500, 429, a timeout) would
# leave an unfinished job's phase stale until its next event (and under API faults a create can go
# unhandled), so unfinished jobs are re-reconciled this often.
RESYNC_SECONDS = float(os.environ.get("TOOLTUNE_RESYNC_SECONDS", "30"))


# ------------------------------------------------------------------ startup wiring


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """All wiring in one place; tests may pre-fill memo.kube and memo.settings."""
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Warnings become Events; kopf's per-handler INFO logs would flood them (Normal ones are posted below).
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    if "settings" not in memo:
        memo.settings = Settings.from_env()
    if "kube" not in memo:
        memo.kube = Kube(make_api_client())
    memo.rbac_namespaces = set()
    if "phases" not in memo:
        memo.phases = {}  # (namespace, name) → phase, read by the jobs collector at scrape time
    METRICS.watch_jobs(lambda: dict(memo.phases))
    if "metrics_server" not in memo:  # once per process: a restarted operator keeps serving
        memo.metrics_server = start_metrics_server(memo.settings.metrics_port)
    logger.info("tooltune operator: trainer image %s", memo.settings.trainer_image)


# ------------------------------------------------------------------ indexes of what we observe


# The indexes keep small detached views, not whole bodies (Pod specs, managedFields, kopf's annotations).
# They are async, like the event handlers below, so that kopf runs them on the event loop at once
# instead of queueing each event for a worker thread.
@kopf.index(GROUP, VERSION, PLURAL)
async def tooltunejobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): _owner_view(body)}


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
async def trainer_jobs(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {(namespace, labels[LABEL_JOB]): job_view(body)}


@kopf.index("", "v1", "pods", labels=MANAGED)
async def trainer_pods(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {(namespace, labels[LABEL_JOB]): pod_view(body)}


# What sync_status and kopf.event read of a ToolTuneJob's metadata.
OWNER_METADATA = ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp")


def _owner_view(body: kopf.Body) -> dict[str, Any]:
    """A ToolTuneJob as sync_status reads it: spec and status whole, metadata without annotations."""
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {key: body.metadata[key] for key in OWNER_METADATA if key in body.metadata},
        "spec": copy.deepcopy(dict(body.spec)),
        "status": copy.deepcopy(dict(body.status)),
    }


def _plain(body: kopf.Body) -> dict[str, Any]:
    """A detached copy of what handlers need (kopf's Body is a live view)."""
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.metadata),
        "spec": dict(body.spec),
        "status": dict(body.status),
    }


def of_attempt(objects: Any, attempt: int) -> list[dict[str, Any]]:
    return [o for o in objects or [] if o["metadata"].get("labels", {}).get(LABEL_ATTEMPT) == str(attempt)]


# ------------------------------------------------------------------ reconcile the children


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@METRICS.reconciled("reconcile")
def reconcile(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    trainer_jobs: kopf.Index[Key, dict[str, Any]],
    trainer_pods: kopf.Index[Key, dict[str, Any]],
    **_: Any,
) -> None:
    converge(memo, _plain(body), logger, trainer_jobs, trainer_pods)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@METRICS.reconciled("spec_changed")
def spec_changed(
    body: kopf.Body,
    old: Any,
    new: Any,
    memo: kopf.Memo,
    logger: kopf.Logger,
    trainer_jobs: kopf.Index[Key, dict[str, Any]],
    trainer_pods: kopf.Index[Key, dict[str, Any]],
    **_: Any,
) -> None:
    raw = _plain(body)
    status = ToolTuneJobStatus.model_validate(raw["status"] or {})
    only_suspend = {k: v for k, v in (old or {}).items() if k != "suspend"} == {
        k: v for k, v in (new or {}).items() if k != "suspend"
    }
    attempt = converge(memo, raw, logger, trainer_jobs, trainer_pods)
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


@kopf.timer(
    GROUP,
    VERSION,
    PLURAL,
    interval=RESYNC_SECONDS,
    initial_delay=RESYNC_SECONDS,
    when=lambda status, meta, **_: (
        status.get("phase") not in TERMINAL
        or (
            status.get("phase") != Phase.SUCCEEDED
            and meta.get("generation", 1) > (status.get("specGeneration") or 0)
        )
    ),
)
def resync(
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    trainer_jobs: kopf.Index[Key, dict[str, Any]],
    trainer_pods: kopf.Index[Key, dict[str, Any]],
    **_: Any,
) -> None:
    """Level-triggered safety net: kopf never retries event handlers, so a create or a status patch lost
    to an API error (or a spec fix whose update was missed) is repaired here, not at the next event."""
    if not body.metadata.get("deletionTimestamp"):
        converge(memo, _plain(body), logger, trainer_jobs, trainer_pods, indexed_job=True)


def converge(
    memo: kopf.Memo, raw: dict[str, Any], logger: kopf.Logger, jobs: Any, pods: Any, indexed_job: bool = False
) -> int:
    """Make the current attempt's children exist, then sync the status; returns the attempt.

    With indexed_job the attempt's Job is read from the index when it is there (the resync: a stale index
    delays a correction by one period); otherwise from the API (an event comes once, and the index may
    not yet show the Job's last change, e.g. its suspend)."""
    kube: Kube = memo.kube
    key = (raw["metadata"]["namespace"], raw["metadata"]["name"])
    spec = checked_spec(raw, logger)
    attempt = (raw["status"] or {}).get("attempts") or 1
    if spec is not None:
        attempt, job = current_attempt(kube, raw, spec, jobs.get(key) if indexed_job else None)
        ensure_children(kube, memo, raw, spec, attempt, job)
    sync_status(kube, observe(raw, jobs.get(key), pods.get(key), attempt))
    return int(attempt)


def current_attempt(
    kube: Kube, raw: dict[str, Any], spec: ToolTuneJobSpec, indexed: Any = None
) -> tuple[int, dict[str, Any] | None]:
    """The attempt to run and its Job: the recorded attempt, or the next one when the recorded attempt's
    Job failed and the spec changed after it was built (a fix after a failure: try again)."""
    meta = raw["metadata"]
    attempt = (raw["status"] or {}).get("attempts") or 1
    job = attempt_job(kube, meta, attempt, indexed)
    built_from = job_generation(job) or 0
    if job and job_condition(job, "Failed") and meta.get("generation", 1) > built_from and not spec.suspend:
        attempt += 1
        METRICS.job_retried(str(spec.backend))
        message = f"spec changed after attempt {attempt - 1} failed: starting attempt {attempt}"
        kopf.event(raw, type="Normal", reason="NewAttempt", message=message)
        job = attempt_job(kube, meta, attempt, indexed)
    return attempt, job


def attempt_job(kube: Kube, meta: dict[str, Any], attempt: int, indexed: Any) -> dict[str, Any] | None:
    """The attempt's Job as indexed when given an index that holds it, else as the API has it (the index
    may not have caught up with a Job created a moment ago)."""
    known = of_attempt(indexed, attempt)
    if known:
        return known[0]
    return kube.get("batch/v1", "Job", meta["namespace"], builders.child_name(meta["name"], attempt))


def checked_spec(raw: dict[str, Any], logger: kopf.Logger) -> ToolTuneJobSpec | None:
    """The parsed spec, or None when it is invalid (sync_status reports why, with an Event)."""
    try:
        return parse_spec(raw["spec"])
    except InvalidSpec as error:
        logger.warning("invalid spec: %s", error)
        return None


def ensure_children(
    kube: Kube,
    memo: kopf.Memo,
    raw: dict[str, Any],
    spec: ToolTuneJobSpec,
    attempt: int,
    job: dict[str, Any] | None,
) -> None:
    """Create the attempt's ConfigMap and Job unless they exist; apply spec.suspend to the Job."""
    namespace = raw["metadata"]["namespace"]
    settings: Settings = memo.settings
    if job is None:
        previous = ToolTuneJobStatus.model_validate(raw["status"] or {})
        if previous.phase in TERMINAL and previous.attempts == attempt:
            return  # finished and cleaned up (ttlSecondsAfterFinished): nothing to recreate
        ensure_trainer_rbac(kube, memo, namespace, settings)
        configmap = kube.create(builders.contract_configmap(raw, spec, attempt, settings))
        job = kube.create(builders.training_job(raw, spec, attempt, settings))
        # Hand the ConfigMap to the Job so that both go when the Job's TTL expires.
        kube.patch(
            "v1", "ConfigMap", namespace, configmap["metadata"]["name"], builders.owned_by(configmap, job)
        )
        message = f"created Job {job['metadata']['name']} (attempt {attempt})"
        kopf.event(raw, type="Normal", reason="JobCreated", message=message)
    elif bool(job["spec"].get("suspend")) != spec.suspend and not job_condition(job, "Complete"):
        kube.patch("batch/v1", "Job", namespace, job["metadata"]["name"], {"spec": {"suspend": spec.suspend}})
        message = "suspended: the pod stops, the next one resumes from the last checkpoint"
        kopf.event(raw, type="Normal", reason="Suspended" if spec.suspend else "Resumed",
                   message=message if spec.suspend else "resumed")  # fmt: skip
        if spec.suspend and spec.backend == Backend.OPENAI:
            cancel_remote(kube, raw, spec, reason="suspended")


def ensure_trainer_rbac(kube: Kube, memo: kopf.Memo, namespace: str, settings: Settings) -> None:
    if namespace in memo.rbac_namespaces:
        return
    for obj in builders.trainer_rbac(namespace, settings):
        kube.create(obj)
    memo.rbac_namespaces.add(namespace)


# ------------------------------------------------------------------ status from observations


# The event handlers are async: they run for every event of every ToolTuneJob, Job and Pod, and most
# events change nothing. Computed on the event loop, only a change waits for a worker thread (the API
# client blocks); before, every event queued for one of the few threads behind slow API calls, and kopf
# kept each queued event's whole body meanwhile (at a thousand jobs, most of the operator's memory).


@kopf.on.event(GROUP, VERSION, PLURAL)
@METRICS.reconciled("status")
async def on_tooltunejob_event(
    type: str, body: kopf.Body, memo: kopf.Memo, trainer_jobs: kopf.Index, trainer_pods: kopf.Index, **_: Any
) -> None:
    key = (body.metadata["namespace"], body.metadata["name"])
    if type == "DELETED":
        forget(memo, key, body.metadata.get("uid"))
        return
    if "phases" in memo:
        memo.phases[key] = body.status.get("phase")
    if body.metadata.get("deletionTimestamp") or "kube" not in memo:
        return
    await sync_status_soon(memo.kube, observe(_plain(body), trainer_jobs.get(key), trainer_pods.get(key)))


def forget(memo: kopf.Memo, key: Key, uid: str | None) -> None:
    """Drop what the operator keeps per job once the ToolTuneJob is gone."""
    memo.get("phases", {}).pop(key, None)
    for reported in [k for k in list(REPORTED) if k[0] == uid]:
        REPORTED.pop(reported, None)
    PATCHED.pop(uid or "", None)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
@kopf.on.event("", "v1", "pods", labels=MANAGED)
@METRICS.reconciled("status")
async def on_child_event(
    namespace: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    tooltunejobs: kopf.Index,
    trainer_jobs: kopf.Index,
    trainer_pods: kopf.Index,
    **_: Any,
) -> None:
    key = (namespace, labels.get(LABEL_JOB, ""))
    for owner in tooltunejobs.get(key, []):
        if not owner["metadata"].get("deletionTimestamp") and "kube" in memo:
            await sync_status_soon(memo.kube, observe(owner, trainer_jobs.get(key), trainer_pods.get(key)))


@dataclass
class Sighting:
    """A ToolTuneJob (as handlers read it) and what was observed of it."""

    raw: dict[str, Any]
    status: dict[str, Any]  # the latest status known: the body's, or the answer to our patch of that body
    seen: Observed


def observe(raw: dict[str, Any], jobs: Any, pods: Any, attempt: int | None = None) -> Sighting:
    """What the status depends on, from the indexed Jobs and Pods of the job's current attempt."""
    meta = raw["metadata"]
    status = latest_status(raw)
    attempt = attempt or status.get("attempts") or 1
    current = of_attempt(jobs, attempt)
    try:
        parse_spec(raw["spec"])
        problems = None
    except InvalidSpec as error:
        problems = error.problems
    seen = Observed(
        generation=meta.get("generation", 1),
        spec_problems=problems,
        suspend=bool((raw["spec"] or {}).get("suspend")),
        attempt=attempt,
        job=current[0] if current else None,
        pods=of_attempt(pods, attempt),
        previous=ToolTuneJobStatus.model_validate(status),
        now=now_iso(),
    )
    return Sighting(raw, status, seen)


def latest_status(raw: dict[str, Any]) -> dict[str, Any]:
    uid = raw["metadata"].get("uid", "")
    patched = PATCHED.get(uid)
    if patched is None:
        return raw["status"] or {}
    if at_least(raw["metadata"].get("resourceVersion"), patched[0]):
        PATCHED.pop(uid, None)  # the watch has caught up: this body has the patch
        return raw["status"] or {}
    return patched[1]


def at_least(version: str | None, other: str) -> bool:
    """Whether a body of resourceVersion version is as new as one of other. The API calls versions opaque;
    they are etcd revisions (integers) in practice, and otherwise only equality says anything."""
    if version is None:
        return True
    if version.isdigit() and other.isdigit():
        return int(version) >= int(other)
    return version == other


def sync_status(kube: Kube, sighting: Sighting) -> None:
    """Compute the operator-owned status and patch it when it changed, with an Event on phase changes."""
    new = compute_status(sighting.seen)
    patch = status_patch(sighting.status, new)
    if patch:
        apply_status(kube, sighting, new, patch)


async def sync_status_soon(kube: Kube, sighting: Sighting) -> None:
    """sync_status for the event handlers: only a change goes to a thread for its API calls."""
    new = compute_status(sighting.seen)
    patch = status_patch(sighting.status, new)
    if patch:
        await asyncio.to_thread(apply_status, kube, sighting, new, patch)


def apply_status(kube: Kube, sighting: Sighting, new: ToolTuneJobStatus, patch: dict[str, Any]) -> None:
    raw, seen = sighting.raw, sighting.seen
    meta = raw["metadata"]
    # Reported before the patch is sent, and once per attempt: the body we computed from may lag our own
    # last patch (indexes follow the watch), and a patch whose answer is lost may still have been applied.
    key = (meta.get("uid", ""), seen.attempt)
    reported_phase, counted_retries = REPORTED.get(key, (None, seen.previous.retries or 0))
    REPORTED[key] = (str(new.phase), max(counted_retries, new.retries or 0))
    backend = str((raw["spec"] or {}).get("backend", Backend.UNSLOTH))
    for _ in range((new.retries or 0) - counted_retries):
        METRICS.job_retried(backend)
    if new.phase in TERMINAL and reported_phase != new.phase:  # one Event per transition
        reason = next(
            cond.reason for cond in new.conditions if cond.status == "True" and cond.type != "Validated"
        )
        if seen.spec_problems:
            reason, message = c.VALIDATION_FAILED, f"invalid spec: {new.message}"
        else:
            message = new.message or ""
        kind = "Normal" if new.phase == Phase.SUCCEEDED else "Warning"
        kopf.event(raw, type=kind, reason=reason, message=message)
        if new.start_time and new.completion_time:
            METRICS.job_finished(
                backend, str(new.phase), seconds_between(new.start_time, new.completion_time)
            )
    path = (API_VERSION, "ToolTuneJob", meta["namespace"], meta["name"])
    answer = kube.patch(*path, {"status": patch}, "status") or {}
    version, uid = answer.get("metadata", {}).get("resourceVersion"), meta.get("uid", "")
    if version and (uid not in PATCHED or at_least(version, PATCHED[uid][0])):
        PATCHED[uid] = (version, answer.get("status") or {})


def seconds_between(start: str, end: str) -> float:
    parse = lambda moment: datetime.strptime(moment, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return max(0.0, (parse(end) - parse(start)).total_seconds())


# ------------------------------------------------------------------ deletion


@kopf.on.delete(GROUP, VERSION, PLURAL)
@METRICS.reconciled("delete")
def cleanup(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Stop the pods now (owner references would, eventually) and cancel a remote OpenAI job.
    Data in S3 is never deleted."""
    kube: Kube = memo.kube
    raw = _plain(body)
    status = ToolTuneJobStatus.model_validate(raw["status"] or {})
    for attempt in range(1, (status.attempts or 1) + 1):
        kube.delete(
            "batch/v1",
            "Job",
            raw["metadata"]["namespace"],
            builders.child_name(raw["metadata"]["name"], attempt),
        )
    try:
        spec = parse_spec(raw["spec"])
    except InvalidSpec:
        return
    if spec.backend == Backend.OPENAI and status.phase not in TERMINAL:
        cancel_remote(kube, raw, spec, reason="deleted")


def cancel_remote(kube: Kube, raw: dict[str, Any], spec: ToolTuneJobSpec, reason: str) -> None:
    """Cancel the remote fine-tuning job so that no paid training outlives its ToolTuneJob."""
    from tooltune_operator import openai_remote

    status = ToolTuneJobStatus.model_validate(raw["status"] or {})
    job_id = status.openai.job_id if status.openai else None
    if not job_id or spec.openai is None:
        return
    key = openai_remote.read_api_key(kube, raw["metadata"]["namespace"], spec.openai.api_key_secret)
    remote = openai_remote.cancel_remote_job(
        key, spec.openai.base_url, job_id, secret_ref=spec.openai.api_key_secret
    )
    kopf.event(
        raw, type="Normal", reason="RemoteJobCancelled", message=f"OpenAI job {job_id} {remote} ({reason})"
    )
