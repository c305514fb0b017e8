"""The operator's own Prometheus metrics: reconciles, jobs by phase (read at scrape time), durations, retries.

One ``OperatorMetrics`` per operator, in its own registry, kept in kopf's ``memo`` (nothing at module
level: two operators in one process, as tests run them, count apart). Wiring:

    @kopf.on.create(GROUP, VERSION, PLURAL)
    @reconciled("create")                           # innermost, under the kopf decorators: memo.metrics
    def reconcile(memo, ...): ...

    # in the startup handler: phases from a dict the status writer keeps current, read at each scrape
    memo.metrics = OperatorMetrics()
    memo.metrics.watch_jobs(lambda: dict(writer.phases))   # or job_phases(<ToolTuneJob bodies>)
    start_metrics_server(settings.metrics_port, memo.metrics.registry)

and, where a job ends or a new attempt starts: ``metrics.job_finished(backend, phase, seconds)``,
``metrics.job_retried(backend)``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import kopf
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from tooltune_api.models import Phase

JobKey = tuple[str, str]  # (namespace, name)
PhaseReader = Callable[[], Mapping[JobKey, str | None]]
Handler = TypeVar("Handler", bound=Callable[..., Any])

# Reconciles take milliseconds to a few seconds (API round trips); slower ones are worth seeing.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Training runs last minutes (the tiny model) to a day (an 8B model over a large dataset).
JOB_DURATION_BUCKETS = (60, 300, 600, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 24 * 3600, 72 * 3600)

# kopf's error kinds: temporary errors are retried on purpose, permanent ones give up.
ERROR_TEMPORARY = "temporary"
ERROR_PERMANENT = "permanent"
ERROR_UNEXPECTED = "unexpected"

JOBS_METRIC = "tooltune_jobs"
JOB_PHASE_METRIC = "tooltune_job_phase"


def error_kind(error: BaseException) -> str:
    if isinstance(error, kopf.TemporaryError):
        return ERROR_TEMPORARY
    if isinstance(error, kopf.PermanentError):
        return ERROR_PERMANENT
    return ERROR_UNEXPECTED


def job_phases(bodies: Iterable[Mapping[str, Any]]) -> dict[JobKey, str | None]:
    """(namespace, name) → status.phase of ToolTuneJob bodies, for the jobs collector."""
    phases: dict[JobKey, str | None] = {}
    for body in bodies:
        metadata = body.get("metadata") or {}
        phases[(metadata.get("namespace", ""), metadata.get("name", ""))] = (body.get("status") or {}).get(
            "phase"
        )
    return phases


class JobsCollector(Collector):
    """Reads the jobs' current phases at scrape time: nothing to keep in sync, nothing stale.

    tooltune_jobs{phase} counts jobs per phase (every phase present, 0 included, so dashboards and
    alerts see zeros rather than gaps); tooltune_job_phase{namespace, name, phase} is 1 per job, so an
    alert can name the job that failed. A job without a phase has not been handled yet: Pending.
    """

    def __init__(self, read_phases: PhaseReader):
        self.read_phases = read_phases

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from _job_families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        phases = {key: phase or Phase.PENDING.value for key, phase in self.read_phases().items()}
        by_phase, per_job = _job_families()
        for known in Phase:
            by_phase.add_metric([known.value], sum(1 for phase in phases.values() if phase == known.value))
        for (namespace, name), phase in sorted(phases.items()):
            per_job.add_metric([namespace, name, phase], 1)
        yield by_phase
        yield per_job


def _job_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(JOBS_METRIC, "ToolTuneJobs by phase.", labels=["phase"]),
        GaugeMetricFamily(
            JOB_PHASE_METRIC, "1 for each ToolTuneJob's phase.", labels=["namespace", "name", "phase"]
        ),
    )


class OperatorMetrics:
    """The operator's metrics, in registry, or else in a registry of their own that also holds the process's
    CPU, memory and garbage collector figures (what the default registry would show)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        if registry is None:
            registry = CollectorRegistry()
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                registry.register(collector)
        self.registry = registry
        self.reconciles = Counter(
            "tooltune_operator_reconciles_total", "Handler runs, by handler.", ["handler"], registry=registry
        )
        self.reconcile_errors = Counter(
            "tooltune_operator_reconcile_errors_total",
            "Handler runs that raised, by handler and kind (temporary, permanent, unexpected).",
            ["handler", "kind"],
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "tooltune_operator_reconcile_duration_seconds",
            "Time spent in a handler, by handler.",
            ["handler"],
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self.job_duration = Histogram(
            "tooltune_job_duration_seconds",
            "Time from start to the end of finished ToolTuneJobs, by backend and final phase.",
            ["backend", "phase"],
            buckets=JOB_DURATION_BUCKETS,
            registry=registry,
        )
        retries_help = "Training attempts started after a failed one, by backend."
        self.retries = Counter("tooltune_job_retries_total", retries_help, ["backend"], registry=registry)
        self._jobs: JobsCollector | None = None

    def watch_jobs(self, read_phases: PhaseReader) -> None:
        """Export jobs by phase from read_phases(), called at each scrape."""
        if self._jobs is not None:
            self.registry.unregister(self._jobs)
        self._jobs = JobsCollector(read_phases)
        self.registry.register(self._jobs)

    @contextmanager
    def reconcile(self, handler: str) -> Iterator[None]:
        """Count and time one handler run; an exception is counted by kind and re-raised."""
        self.reconciles.labels(handler=handler).inc()
        started = time.perf_counter()
        try:
            yield
        except BaseException as error:
            self.reconcile_errors.labels(handler=handler, kind=error_kind(error)).inc()
            raise
        finally:
            self.reconcile_duration.labels(handler=handler).observe(time.perf_counter() - started)

    def job_finished(self, backend: str, phase: str, seconds: float) -> None:
        self.job_duration.labels(backend=backend, phase=phase).observe(seconds)

    def job_retried(self, backend: str) -> None:
        self.retries.labels(backend=backend).inc()


def reconciled(handler: str) -> Callable[[Handler], Handler]:
    """Count and time each run of a sync or async kopf handler with the operator's own metrics
    (``memo.metrics``); keeps the handler's signature."""

    def wrap(function: Handler) -> Handler:
        if asyncio.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with kwargs["memo"].metrics.reconcile(handler):
                    return await function(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with kwargs["memo"].metrics.reconcile(handler):
                return function(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


def start_metrics_server(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> Any:
    """Serve /metrics on port (0: not at all). Returns the server, whose shutdown() stops it."""
    if not port:
        return None
    server, _ = start_http_server(port, addr=addr, registry=registry)
    return server
