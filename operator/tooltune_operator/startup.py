"""The operator's startup wiring, in one place: kopf's settings and what the handlers find in ``memo``.

``memo`` holds, per operator: ``settings`` (Settings), ``kube`` (the API wrapper), ``metrics`` (its
Prometheus metrics, in a registry of their own), ``status_writer`` (the one writer of status, with what it
remembers per job, including the phases the jobs metric reads at scrape time), ``rbac_namespaces``
(where the trainer's RBAC exists) and ``resync`` (the task of the periodic resync). Tests may pre-fill
``settings``, ``kube`` and ``metrics``; the rest starts empty at every start, as in a new operator process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from tooltune_api import GROUP

from tooltune_operator import kube, reconcile
from tooltune_operator.metrics import OperatorMetrics, start_metrics_server
from tooltune_operator.settings import Settings
from tooltune_operator.status_writer import StatusWriter

CONSISTENCY_SECONDS = 30.0
# Handlers that run on every watch event of every ToolTuneJob, Job and Pod, about twenty per job: kopf's
# "Handler '…' succeeded." line for each said nothing and cost more CPU than the handler (writing the log).
EVERY_EVENT_HANDLERS = ("on_tooltunejob_event", "on_job_event", "on_pod_event", "on_workload_event")


class QuietEventHandlers(logging.Filter):
    """Drops kopf's success line of the every-event handlers; their failures and every other line stay."""

    SILENCED = frozenset(f"Handler {name!r} succeeded." for name in EVERY_EVENT_HANDLERS)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.SILENCED


def quiet_event_handlers() -> None:
    """Install QuietEventHandlers on kopf's per-object logger (once per process)."""
    objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietEventHandlers) for f in objects.filters):
        objects.addFilter(QuietEventHandlers())


def resync_with(memo: kopf.Memo, owners: Any, jobs: Any, pods: Any) -> None:
    """Start the operator's periodic resync (once) on kopf's live indexes."""
    if memo.get("resync") is None:
        memo.resync = asyncio.create_task(reconcile.resync_forever(memo, owners, jobs, pods))


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger) -> None:
    quiet_event_handlers()
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Warnings become Events; kopf's per-handler INFO logs would flood them (Normal ones are posted apart).
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    # How long kopf waits to see its own patch come back before it handles an older event as current: its
    # 5 s default runs the create handler of a job twice once a backlog is longer than that.
    settings.persistence.consistency_timeout = CONSISTENCY_SECONDS
    if "settings" not in memo:
        memo.settings = Settings.from_env()
    if "kube" not in memo:
        memo.kube = kube.Kube(kube.Connection(lambda: kube.login(settings=settings, logger=logger)))
    if "metrics" not in memo:  # kept over a restart in one process, as the server that serves them
        memo.metrics = OperatorMetrics()
    memo.status_writer = writer = StatusWriter(
        memo.kube, memo.metrics, kueue_reading=memo.settings.kueue_enabled
    )
    memo.rbac_namespaces = set()
    memo.resync = None  # started by the first ToolTuneJob event: resync_with
    memo.metrics.watch_jobs(lambda: dict(writer.phases))
    if "metrics_server" not in memo:  # once per process: a restarted operator keeps serving
        memo.metrics_server = start_metrics_server(memo.settings.metrics_port, memo.metrics.registry)
    logger.info("tooltune operator: trainer image %s", memo.settings.trainer_image)
