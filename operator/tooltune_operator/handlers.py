"""kopf's registry of the operator's handlers, and nothing else: each body hands over to a module.

- login → ``kube.login``: the service account or the kubeconfig (a registry of one's own has none);
- startup → ``startup.configure``: kopf's settings and the per-operator state in ``memo``;
- indexes of ToolTuneJobs, their Jobs and Pods → the small views of ``views``;
- create / resume / spec change of a ToolTuneJob → ``reconcile.converge``; the periodic resync of them all
  → ``reconcile.resync_forever``, started with the first ToolTuneJob event (it reads the indexes);
- any event of a ToolTuneJob, or of a Job or Pod it owns → the status writer (``memo.status_writer``); a
  multi-node group's failed Job → ``reconcile.job_event`` (the group restarts);
- a pod that stays Pending → the status writer reads its Events (what the kubelet says nowhere else);
- any event of a Kueue Workload (only with Kueue support on: ``watch_workloads``) → the status writer;
- delete of an OpenAI job → ``reconcile.clean_up`` (the others go with their owner references).

The handlers live in ``registry``, not in kopf's global default one: ``__main__`` runs it, and a test
runs it against an emulated cluster as often as it likes without re-importing anything.
"""

from __future__ import annotations

from typing import Any

import kopf
from tooltune_api import GROUP, LABEL_JOB, LABEL_MANAGED_BY, PLURAL, VERSION

from tooltune_operator import kube, startup
from tooltune_operator import reconcile as reconciler
from tooltune_operator.builders import job_label
from tooltune_operator.kueue import GROUP as GROUP_KUEUE
from tooltune_operator.kueue import LABEL_JOB_UID, WORKLOADS
from tooltune_operator.metrics import reconciled
from tooltune_operator.views import job_view, owner_view, pod_view

registry = kopf.OperatorRegistry()
TOOLTUNEJOBS = (GROUP, VERSION, PLURAL)
MANAGED = {LABEL_MANAGED_BY: "tooltune"}
Key = tuple[str, str]  # (namespace, the ToolTuneJob's LABEL_JOB value: builders.job_label of its name)


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kube.login(**kwargs)


@kopf.on.startup(registry=registry)
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    startup.configure(settings, memo, logger)


# The indexes and event handlers are async so that kopf runs them on the event loop at once instead of
# queueing each event (and its whole body) for a worker thread; only a status change goes to a thread.


@kopf.index(*TOOLTUNEJOBS, registry=registry)
async def tooltunejobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {(namespace, job_label(name)): owner_view(body)}


@kopf.index("batch", "v1", "jobs", labels=MANAGED, registry=registry)
async def trainer_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {(namespace, labels[LABEL_JOB]): job_view(body)}


@kopf.index("", "v1", "pods", labels=MANAGED, registry=registry)
async def trainer_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {(namespace, labels[LABEL_JOB]): pod_view(body)}


@kopf.on.create(*TOOLTUNEJOBS, registry=registry)
@kopf.on.resume(*TOOLTUNEJOBS, registry=registry)
@reconciled("reconcile")
def reconcile(
    body: kopf.Body, memo: kopf.Memo, tooltunejobs: kopf.Index, trainer_jobs: kopf.Index,
    trainer_pods: kopf.Index, **_: Any,
) -> None:  # fmt: skip
    reconciler.converge(memo, owner_view(body), trainer_jobs, trainer_pods, restart=True, owners=tooltunejobs)


@kopf.on.update(*TOOLTUNEJOBS, field="spec", registry=registry)
@reconciled("spec_changed")
def spec_changed(
    body: kopf.Body, old: Any, new: Any, memo: kopf.Memo, tooltunejobs: kopf.Index, trainer_jobs: kopf.Index,
    trainer_pods: kopf.Index, **_: Any,
) -> None:  # fmt: skip
    raw = owner_view(body)
    attempt = reconciler.converge(memo, raw, trainer_jobs, trainer_pods, owners=tooltunejobs)
    reconciler.note_spec_change(raw, old, new, attempt)


@kopf.on.event(*TOOLTUNEJOBS, registry=registry)
@reconciled("status")
async def on_tooltunejob_event(
    type: str, body: kopf.Body, memo: kopf.Memo, tooltunejobs: kopf.Index, trainer_jobs: kopf.Index,
    trainer_pods: kopf.Index, **_: Any,
) -> None:  # fmt: skip
    """The view is the one the index made of this event a moment ago (kopf indexes first). The first event
    (kopf lists every ToolTuneJob at start) also starts the periodic resync, which reads the indexes."""
    startup.resync_with(memo, tooltunejobs, trainer_jobs, trainer_pods)
    key, uid = (body.metadata["namespace"], job_label(body.metadata["name"])), body.metadata.get("uid")
    view = next((v for v in tooltunejobs.get(key, []) if v["metadata"].get("uid") == uid), None)
    if view is None or view["metadata"].get("resourceVersion") != body.metadata.get("resourceVersion"):
        view = owner_view(body)
    await memo.status_writer.owner_event(type, view, trainer_jobs.get(key), trainer_pods.get(key))


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED, registry=registry)
@reconciled("status")
async def on_job_event(
    namespace: str, labels: kopf.Labels, memo: kopf.Memo, tooltunejobs: kopf.Index, trainer_jobs: kopf.Index,
    trainer_pods: kopf.Index, **_: Any,
) -> None:  # fmt: skip
    """Also: a multi-node group whose Job failed restarts now (reconcile.job_event)."""
    key = (namespace, labels.get(LABEL_JOB, ""))
    await memo.status_writer.child_event(tooltunejobs.get(key), trainer_jobs.get(key), trainer_pods.get(key))
    await reconciler.job_event(memo, tooltunejobs.get(key), trainer_jobs, trainer_pods, tooltunejobs)


@kopf.on.event("", "v1", "pods", labels=MANAGED, registry=registry)
@reconciled("status")
async def on_pod_event(
    type: str, body: kopf.Body, namespace: str, labels: kopf.Labels, memo: kopf.Memo,
    tooltunejobs: kopf.Index, trainer_jobs: kopf.Index, trainer_pods: kopf.Index, **_: Any,
) -> None:  # fmt: skip
    """Also: a pod that stays Pending has its Events read (what the kubelet says nowhere else)."""
    key, writer = (namespace, labels.get(LABEL_JOB, "")), memo.status_writer
    writer.watch_pending(
        type, body, memo.settings.pod_events_seconds, tooltunejobs, trainer_jobs, trainer_pods
    )
    await writer.child_event(tooltunejobs.get(key), trainer_jobs.get(key), trainer_pods.get(key))


async def on_workload_event(
    type: str, body: kopf.Body, memo: kopf.Memo, tooltunejobs: kopf.Index, trainer_jobs: kopf.Index,
    trainer_pods: kopf.Index, **_: Any,
) -> None:  # fmt: skip
    """A Kueue Workload changed (queued, admitted, evicted): the status of the job whose Job it is for."""
    writer = memo.status_writer
    key = writer.workload_event(type, body)
    if key is not None:
        await writer.child_event(tooltunejobs.get(key), trainer_jobs.get(key), trainer_pods.get(key))


def watch_workloads(target: kopf.OperatorRegistry) -> None:
    """Add the watch of Kueue's Workloads to a registry: only when the operator's Kueue support is on
    (Settings.kueue_enabled), so that without it the operator never asks for a resource the cluster may not
    serve and its RBAC does not grant. The Workload's version is the one the cluster prefers (v1beta2 on
    Kueue 0.15+); the fields read are the same in each."""
    on_event = kopf.on.event(GROUP_KUEUE, WORKLOADS, labels={LABEL_JOB_UID: kopf.PRESENT}, registry=target)
    on_event(reconciled("status")(on_workload_event))


@kopf.on.cleanup(registry=registry)
async def stop(memo: kopf.Memo, **_: Any) -> None:
    if memo.get("resync") is not None:
        memo.resync.cancel()
    await memo.status_writer.stop()


# Only an OpenAI job waits for the operator when deleted (its finalizer): a remote job must be cancelled. The
# Jobs of the others, and their pods and ConfigMaps, go with their owner references (the API's garbage
# collector), so that deleting them never waits for the operator.
@kopf.on.delete(*TOOLTUNEJOBS, when=lambda spec, **_: spec.get("backend") == "openai", registry=registry)
@reconciled("delete")
def cleanup(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Stop the pods now and cancel the remote OpenAI job; data in S3 is never deleted."""
    reconciler.clean_up(memo, owner_view(body))
