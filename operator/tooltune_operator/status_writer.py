"""The one place that writes a ToolTuneJob's operator-owned status: compute it all, patch once on change.

Three kinds of callers reach it concurrently: the reconciler (after creating children), the event
handlers of ToolTuneJobs, Jobs and Pods, and the periodic resync. They all go through one
``StatusWriter``, which the operator keeps in kopf's ``memo`` (one per operator, so a test's operator
starts clean), and which remembers per job:

- the answer to its last status patch. Events and indexes follow the watch, often from behind: a body
  older than that answer lacks the patch, and a status computed from it would patch again (new
  timestamps, a new Event, and so on while kopf's backlog lasts). Until the watch catches up, the status
  is computed from the answer instead;
- what it has reported per attempt (the phase whose Event was posted, the retries counted in metrics),
  recorded before the patch is sent, so a lagging body or a lost answer never reports twice;
- the Job the reconciler has just made (or read) for an attempt, until the index of Jobs shows one of that
  attempt: the echo of the reconciler's own status patch often arrives first, and read from the index
  alone the job would go back to "creating the training Job" and forth again (two patches, two events).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf
from tooltune_api import API_VERSION, LABEL_JOB
from tooltune_api.models import (
    Backend,
    InvalidSpec,
    Phase,
    ToolTuneJobSpec,
    ToolTuneJobStatus,
    now_iso,
    parse_spec,
)

from tooltune_operator import conditions as c
from tooltune_operator import kueue
from tooltune_operator.builders import job_label
from tooltune_operator.kube import Kube
from tooltune_operator.metrics import OperatorMetrics
from tooltune_operator.pod_problems import event_view, incidents
from tooltune_operator.status import BLOCKING, TERMINAL, Observed, compute_status, status_patch
from tooltune_operator.views import of_attempt

log = logging.getLogger(__name__)


@dataclass
class Sighting:
    """A ToolTuneJob (as the writer reads it) and what was observed of it."""

    raw: dict[str, Any]
    status: dict[str, Any]  # the latest status known: the body's, or the answer to our patch of that body
    seen: Observed
    inputs: tuple[Any, ...] = ()  # what seen was made of (the clock aside): the same inputs, the same status


@dataclass
class StatusWriter:
    kube: Kube
    metrics: OperatorMetrics
    # uid → (resourceVersion, status) of the API's answer to the last status patch
    patched: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    # (uid, attempt) → (phase reported, retries counted)
    reported: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    # (namespace, name) → phase, read by the jobs metric at scrape time
    phases: dict[tuple[str, str], str | None] = field(default_factory=dict)
    # (namespace, LABEL_JOB) → pod name → the Warning Events of that pod while it is Pending
    pod_events: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    # (uid, what) of the pod problems already told to the user with an Event on the ToolTuneJob
    warned: set[tuple[str, str]] = field(default_factory=set)
    # whether Kueue's Workloads are watched (Settings.kueue_enabled); Job uid → its Workload's view
    kueue_reading: bool = False
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    # ToolTuneJob uid → the view of the Job the reconciler made or read, until the index shows it
    made: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Job uid → (namespace, LABEL_JOB) of its ToolTuneJob: whose status a Workload event changes
    job_keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    # uid → (generation, the spec parsed or its problems): a spec changes only with its generation
    specs: dict[str, tuple[int, ToolTuneJobSpec | list[str]]] = field(default_factory=dict)
    # uid → the inputs of the last status synced: an event that changes none of them (kopf's own annotation
    # patch, the watch event of a Job the reconciler made a moment ago) has nothing to sync
    synced: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # uid → the lock its status patches take: the reconciler's threads and the event handlers race
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    # pod uid → the task reading the Events of that Pending pod
    _pending: dict[str, asyncio.Future[None]] = field(default_factory=dict)

    def watch_pending(self, type: str, pod: Any, every: float, owners: Any, jobs: Any, pods: Any) -> None:
        """While a pod is Pending, read its Events every `every` seconds (a kopf daemon would put a
        finalizer on every trainer pod); stop when it starts or goes."""
        meta = pod["metadata"]
        uid, phase = meta.get("uid", ""), (pod.get("status") or {}).get("phase")
        watching = self._pending.get(uid)
        if type != "DELETED" and phase in (None, "Pending") and not meta.get("deletionTimestamp"):
            if watching is None:
                plain = {
                    "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")}
                    | {"labels": dict(meta.get("labels") or {})}
                }
                self._pending[uid] = asyncio.ensure_future(
                    self._read_events(plain, every, owners, jobs, pods)
                )
        elif watching is not None:
            watching.cancel()
            self._pending.pop(uid, None)
            self._pod_started(meta)

    async def stop(self) -> None:
        """Stop reading pod Events (the operator is exiting)."""
        for task in self._pending.values():
            task.cancel()
        await asyncio.gather(*self._pending.values(), return_exceptions=True)
        self._pending.clear()

    async def _read_events(
        self, pod: dict[str, Any], every: float, owners: Any, jobs: Any, pods: Any
    ) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["labels"].get(LABEL_JOB, ""))
        while True:
            await asyncio.sleep(every)
            try:
                events = await asyncio.to_thread(
                    self.kube.list, "v1", "Event", meta["namespace"], f"involvedObject.uid={meta['uid']}"
                )
            except Exception as error:  # the next round tries again
                log.warning("cannot read the Events of pod %s: %s", meta["name"], error)
                continue
            worth = [e for e in events if e.get("type") == "Warning" or e.get("reason") == "BackOff"]
            views = [event_view(e) for e in sorted(worth, key=lambda e: e.get("lastTimestamp") or "")]
            if self.pod_events.get(key, {}).get(meta["name"]) != views:
                self.pod_events.setdefault(key, {})[meta["name"]] = views
                await self.child_event(owners.get(key), jobs.get(key), pods.get(key))

    def _pod_started(self, meta: Any) -> None:
        """The pod is no longer Pending (or gone): its Events no longer say why it waits."""
        key = (meta["namespace"], (meta.get("labels") or {}).get(LABEL_JOB, ""))
        self.pod_events.get(key, {}).pop(meta["name"], None)
        if not self.pod_events.get(key, True):
            self.pod_events.pop(key, None)

    async def owner_event(self, type: str, raw: dict[str, Any], jobs: Any, pods: Any) -> None:
        """Any event of a ToolTuneJob: keep its phase for the metrics, sync its status."""
        meta = raw["metadata"]
        key = (meta["namespace"], meta["name"])
        if type == "DELETED":
            self.phases.pop(key, None)
            self.pod_events.pop((meta["namespace"], job_label(meta["name"])), None)
            self.forget(meta.get("uid"))
        elif not meta.get("deletionTimestamp"):
            self.phases[key] = (raw["status"] or {}).get("phase")
            if raw["status"]:  # a new job's first status is the reconciler's, written once it has acted
                await self.sync_soon(self.observe_change(raw, jobs, pods))

    async def child_event(self, owners: Any, jobs: Any, pods: Any) -> None:
        """Any event of a Job or Pod: sync the status of the ToolTuneJob that owns it."""
        for owner in owners or []:
            if not owner["metadata"].get("deletionTimestamp"):
                await self.sync_soon(self.observe_change(owner, jobs, pods))

    def workload_event(self, type: str, body: Any) -> tuple[str, str] | None:
        """Any event of a Kueue Workload: keep its view; returns the key of the ToolTuneJob whose Job it is
        for, when known (an unknown one is some other Job's, or a Job not yet seen: its own events read the
        view kept here)."""
        view = kueue.workload_view(body)
        job_uid = view["metadata"]["jobUid"] or ""
        kept = self.workloads.get(job_uid)
        if type == "DELETED":
            if kept is not None and kept["metadata"]["name"] == view["metadata"]["name"]:
                self.workloads.pop(job_uid, None)
                return self.job_keys.pop(job_uid, None)
        elif kept is None or (kept["metadata"]["creationTimestamp"] or "") <= (
            view["metadata"]["creationTimestamp"] or ""
        ):  # a Job's newest Workload is the one Kueue acts on
            self.workloads[job_uid] = view
        return self.job_keys.get(job_uid)

    def observe(self, raw: dict[str, Any], jobs: Any, pods: Any, attempt: int | None = None) -> Sighting:
        """What the status depends on, from the indexed Jobs and Pods of the job's current attempt."""
        sighting = self._observe(raw, jobs, pods, attempt)
        assert sighting is not None
        return sighting

    def observe_change(self, raw: dict[str, Any], jobs: Any, pods: Any) -> Sighting | None:
        """observe, or None when that is what the last status synced was computed from."""
        return self._observe(raw, jobs, pods, unless_unchanged=True)

    def _observe(
        self,
        raw: dict[str, Any],
        jobs: Any,
        pods: Any,
        attempt: int | None = None,
        unless_unchanged: bool = False,
    ) -> Sighting | None:
        meta = raw["metadata"]
        status = self.latest_status(raw)
        attempt = attempt or status.get("attempts") or 1
        current = of_attempt(jobs, attempt)
        if current:
            self.made.pop(meta.get("uid", ""), None)  # the index has caught up
        else:
            current = of_attempt([self.made[meta["uid"]]] if meta.get("uid") in self.made else [], attempt)
        spec = self.spec_of(raw)
        problems, shape = (spec, {}) if isinstance(spec, list) else (None, {})
        if not isinstance(spec, list):
            gpus = spec.resources.gpus if spec.backend == Backend.UNSLOTH else 0  # a submitter needs none
            shape = dict(nodes=spec.resources.nodes, gpus=gpus, backoff_limit=spec.backoff_limit)
        job = current[0] if current else None
        job_uid = (job or {}).get("metadata", {}).get("uid")
        if job_uid:
            self.job_keys[job_uid] = (meta["namespace"], job_label(meta["name"]))
        attempt_pods = of_attempt(pods, attempt)
        events = self.pod_events.get((meta["namespace"], job_label(meta["name"])), {})
        pod_events = [event for pod in attempt_pods for event in events.get(pod["metadata"]["name"], [])]
        workload = self.workloads.get(job_uid or "")
        inputs = (
            meta.get("generation", 1),
            raw["spec"],
            status,
            attempt,
            job,
            attempt_pods,
            pod_events,
            workload,
        )
        if unless_unchanged and meta.get("uid") and self.synced.get(meta["uid"]) == inputs:
            return None
        seen = Observed(
            pod_events=pod_events,
            generation=meta.get("generation", 1),
            spec_problems=problems,
            suspend=bool((raw["spec"] or {}).get("suspend")),
            attempt=attempt,
            job=job,
            pods=attempt_pods,
            previous=ToolTuneJobStatus.model_validate(status),
            now=now_iso(),
            workload=workload,
            kueue_reading=self.kueue_reading,
            **shape,
        )
        return Sighting(raw, status, seen, inputs)

    def spec_of(self, raw: dict[str, Any]) -> ToolTuneJobSpec | list[str]:
        """The ToolTuneJob's spec parsed, or its problems; parsed once per generation."""
        uid, generation = raw["metadata"].get("uid"), raw["metadata"].get("generation", 1)
        kept = self.specs.get(uid) if uid else None
        if kept is None or kept[0] != generation:
            try:
                kept = (generation, parse_spec(raw["spec"]))
            except InvalidSpec as error:
                kept = (generation, error.problems)
            if uid:
                self.specs[uid] = kept
        return kept[1]

    def made_job(self, raw: dict[str, Any], job: dict[str, Any]) -> None:
        """The reconciler made or read this Job (a view) for the ToolTuneJob: read it until the index does."""
        self.made[raw["metadata"].get("uid", "")] = job

    def latest_status(self, raw: dict[str, Any]) -> dict[str, Any]:
        uid = raw["metadata"].get("uid", "")
        patched = self.patched.get(uid)
        if patched is None:
            return raw["status"] or {}
        if at_least(raw["metadata"].get("resourceVersion"), patched[0]):
            self.patched.pop(uid, None)  # the watch has caught up: this body has the patch
            return raw["status"] or {}
        return patched[1]

    def sync(self, sighting: Sighting) -> None:
        """Compute the operator-owned status and patch it when it changed, with an Event on phase changes."""
        new = compute_status(sighting.seen)
        self._warn(sighting, new)
        patch = status_patch(sighting.status, new)
        if patch:
            self._apply(sighting, new, patch)
        self._synced(sighting, new)

    async def sync_soon(self, sighting: Sighting | None) -> None:
        """sync for the event handlers (nothing for None: unchanged): only a change goes to a thread for its
        API calls."""
        if sighting is None:
            return
        new = compute_status(sighting.seen)
        self._warn(sighting, new)
        patch = status_patch(sighting.status, new)
        if patch:
            await asyncio.to_thread(self._apply, sighting, new, patch)
        self._synced(sighting, new)

    def _synced(self, sighting: Sighting, new: ToolTuneJobStatus) -> None:
        uid = sighting.raw["metadata"].get("uid")
        if not uid:
            return
        if new.phase in TERMINAL:  # kept for running jobs only: a thousand finished ones would hold megabytes
            self.synced.pop(uid, None)
            self.specs.pop(uid, None)
        elif sighting.inputs:
            self.synced[uid] = sighting.inputs

    def forget(self, uid: str | None) -> None:
        """Drop what is kept of a ToolTuneJob once it is gone."""
        for reported in [key for key in self.reported if key[0] == uid]:
            self.reported.pop(reported, None)
        self.warned -= {key for key in self.warned if key[0] == uid}
        self.patched.pop(uid or "", None)
        self.made.pop(uid or "", None)
        self.specs.pop(uid or "", None)
        self.synced.pop(uid or "", None)
        self._locks.pop(uid or "", None)

    def _warn(self, sighting: Sighting, new: ToolTuneJobStatus) -> None:
        """A Warning Event on the ToolTuneJob, once each, for what blocks its pod or ended one: what
        `kubectl describe ttj` shows within seconds of the kubelet or scheduler saying it."""
        uid, seen = sighting.raw["metadata"].get("uid", ""), sighting.seen
        told = [(str(new.reason), new.message or "")] if new.reason in BLOCKING else []
        told += [(reason, message) for _, reason, message in incidents(seen.pods)]
        for reason, message in told:
            if (uid, f"{seen.attempt}/{reason}/{message}") not in self.warned:
                self.warned.add((uid, f"{seen.attempt}/{reason}/{message}"))
                kopf.event(sighting.raw, type="Warning", reason=reason, message=message)

    def _apply(self, sighting: Sighting, new: ToolTuneJobStatus, patch: dict[str, Any]) -> None:
        raw = sighting.raw
        with self._locks.setdefault(raw["metadata"].get("uid", ""), threading.Lock()):
            # another caller may have patched this job since the sighting: patch only what is still to do
            patch = status_patch(self.latest_status(raw), new)
            if patch:
                self._patch(sighting, new, patch)

    def _patch(self, sighting: Sighting, new: ToolTuneJobStatus, patch: dict[str, Any]) -> None:
        raw, seen = sighting.raw, sighting.seen
        meta = raw["metadata"]
        key = (meta.get("uid", ""), seen.attempt)
        reported_phase, counted_retries = self.reported.get(key, (None, seen.previous.retries or 0))
        self.reported[key] = (str(new.phase), max(counted_retries, new.retries or 0))
        backend = str((raw["spec"] or {}).get("backend", Backend.UNSLOTH))
        for _ in range((new.retries or 0) - counted_retries):
            self.metrics.job_retried(backend)
        if new.phase in TERMINAL and reported_phase != new.phase:  # one Event per transition
            self._report_end(raw, seen, new, backend)
        self._report_queue(raw, seen.previous, new)
        path = (API_VERSION, "ToolTuneJob", meta["namespace"], meta["name"])
        answer = self.kube.patch(*path, {"status": patch}, "status") or {}
        version, uid = answer.get("metadata", {}).get("resourceVersion"), meta.get("uid", "")
        if version and (uid not in self.patched or at_least(version, self.patched[uid][0])):
            self.patched[uid] = (version, answer.get("status") or {})

    @staticmethod
    def _report_queue(raw: dict[str, Any], previous: ToolTuneJobStatus, new: ToolTuneJobStatus) -> None:
        """Kueue's decisions as Events on the ToolTuneJob: queued (and why, when that changes), preempted or
        evicted, admitted."""
        if new.phase == Phase.QUEUED and (previous.phase, previous.reason) != (new.phase, new.reason):
            evicted = new.reason in {kueue.PREEMPTED, kueue.EVICTED}
            kind, reason = ("Warning", str(new.reason)) if evicted else ("Normal", "Queued")
            if new.reason != kueue.ADMITTED:  # a moment before the Job starts: the Admitted Event follows
                kopf.event(raw, type=kind, reason=reason, message=new.message or "")
        elif previous.phase == Phase.QUEUED and new.phase not in {Phase.QUEUED, *TERMINAL, Phase.SUSPENDED}:
            kopf.event(raw, type="Normal", reason="Admitted", message="admitted by Kueue: the Job starts")

    def _report_end(self, raw: dict[str, Any], seen: Observed, new: ToolTuneJobStatus, backend: str) -> None:
        reason = next(
            cond.reason for cond in new.conditions if cond.status == "True" and cond.type != c.VALIDATED
        )
        if seen.spec_problems:
            reason, message = c.VALIDATION_FAILED, f"invalid spec: {new.message}"
        else:
            message = new.message or ""
        kind = "Normal" if new.phase == Phase.SUCCEEDED else "Warning"
        kopf.event(raw, type=kind, reason=reason, message=message)
        if new.start_time and new.completion_time:
            seconds = seconds_between(new.start_time, new.completion_time)
            self.metrics.job_finished(backend, str(new.phase), seconds)


def at_least(version: str | None, other: str) -> bool:
    """Whether a body of resourceVersion version is as new as one of other. The API calls versions opaque;
    they are etcd revisions (integers) in practice, and otherwise only equality says anything."""
    if version is None:
        return True
    if version.isdigit() and other.isdigit():
        return int(version) >= int(other)
    return version == other


def seconds_between(start: str, end: str) -> float:
    parse = lambda moment: datetime.strptime(moment, "%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return max(0.0, (parse(end) - parse(start)).total_seconds())
