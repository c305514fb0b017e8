"""What a training run tells the world: Prometheus metrics, status patches, Events and the loss diagnosis.

The recipe builds the three sinks from the contract and hands them to the Trainer:

    reporter = StatusReporter(contract)
    metrics = TrainingMetrics(contract)
    metrics.serve()
    callbacks = telemetry_callbacks(contract, reporter, metrics)
    trainer = SFTTrainer(..., callbacks=callbacks)
    trainer.train()
    telemetry = callbacks[0]  # TelemetryCallback: train_losses, eval_losses, diagnosis, for the report's plot

Nothing here may end a training run: a status patch or an Event that fails is logged and dropped.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, start_http_server
from tooltune_api import API_VERSION, GROUP, KIND, PLURAL, VERSION
from tooltune_api.diagnosis import CONVERGING, EARLY_STOP_PATTERNS, PATTERNS, by_step, diagnose
from tooltune_api.models import Diagnosis, JobRef, Progress, TrainerContract, now_iso

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger(__name__)

# Status fields the trainer writes; the operator owns the rest (phase, conditions, attempts, times...).
TRAINER_STATUS_FIELDS = frozenset(
    {"progress", "diagnosis", "checkpoints", "evaluation", "output", "openai", "cost", "training"}
)
EVENT_COMPONENT = "tooltune-trainer"
# (connect, read) seconds for a status patch or an Event: a slow API server must not stall training for long
API_TIMEOUT_SECONDS = (5, 10)
# Events waiting for their turn under the rate limit; older ones are dropped first.
EVENT_BACKLOG = 5

Patch = Callable[[dict[str, Any]], None]
CreateEvent = Callable[[dict[str, Any]], None]
Clock = Callable[[], float]


# ---------------------------------------------------------------- status


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge of two status fragments: nested dicts merge, anything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class StatusReporter:
    """Patches fields of the ToolTuneJob's status (merge patch on the status subresource) at most once
    per contract.progress_interval_seconds (default 10 s), plus a final flush. Fields the trainer owns:
    progress, diagnosis, checkpoints, evaluation, output, openai, cost, training (camelCase, as in
    ToolTuneJobStatus).
    The operator owns phase, conditions, attempts, jobName, times, failureReason.

    ``patch`` receives the merge-patch body ``{"status": {...}}``. Without one, the Kubernetes client
    patches the job's status subresource when contract.report_progress, else nothing is sent.
    """

    def __init__(self, contract: TrainerContract, patch: Patch | None = None, clock: Clock = time.monotonic):
        self.interval = contract.progress_interval_seconds
        self._patch = patch if patch is not None else kubernetes_status_patch(contract)
        self._clock = clock
        self._pending: dict[str, Any] = {}
        self._last_sent: float | None = None
        self.patches_sent = 0

    def update(self, **fields: dict[str, Any]) -> None:
        """Merge status fields (e.g. ``progress={"step": 10}``) into the next patch; send it when due."""
        unknown = sorted(set(fields) - TRAINER_STATUS_FIELDS)
        if unknown:
            raise ValueError(
                f"status field(s) {', '.join(unknown)} are not the trainer's to write; "
                f"use one of {', '.join(sorted(TRAINER_STATUS_FIELDS))}"
            )
        self._pending = deep_merge(self._pending, fields)
        if self._due():
            self._send()

    def flush(self) -> None:
        """Send whatever is pending now, whatever the rate limit (end of run)."""
        if self._pending:
            self._send()

    def _due(self) -> bool:
        return self._last_sent is None or self._clock() - self._last_sent >= self.interval

    def _send(self) -> None:
        status, self._pending = self._pending, {}
        self._last_sent = self._clock()
        if "progress" in status:
            status["progress"] = {**status["progress"], "updatedAt": now_iso()}
        if self._patch is None:
            return
        try:
            self._patch({"status": status})
            self.patches_sent += 1
        except Exception as error:  # a status update must never end a training run
            log.warning("status patch failed, retrying with the next one: %s", describe_error(error))
            self._pending = deep_merge(status, self._pending)


def describe_error(error: Exception) -> str:
    """A short account of a failed API call, without the request or response body."""
    status = getattr(error, "status", None)
    reason = getattr(error, "reason", None)
    if status is not None:
        return f"{type(error).__name__} {status} {reason or ''}".strip()
    return f"{type(error).__name__}: {str(error)[:200]}"


def kubernetes_api_client() -> Any | None:
    """A client from the in-cluster service account, else from KUBECONFIG; None when neither exists."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:  # KUBECONFIG as it is now, not as it was when the kubernetes package was imported
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        except Exception as error:
            log.warning("no Kubernetes configuration, status and Events are not reported: %s", error)
            return None
    return client.ApiClient()


def kubernetes_status_patch(contract: TrainerContract, api_client: Any | None = None) -> Patch | None:
    """A status patch through the Kubernetes client: ``api_client``, else the pod's own client."""
    if not contract.report_progress:
        return None
    api_client = api_client or kubernetes_api_client()
    if api_client is None:
        return None
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    job = contract.job

    def patch(body: dict[str, Any]) -> None:
        api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            job.namespace,
            PLURAL,
            job.name,
            body,
            _content_type="application/merge-patch+json",
            _request_timeout=API_TIMEOUT_SECONDS,
        )

    return patch


# ---------------------------------------------------------------- events


def event_body(job: JobRef, reason: str, message: str, event_type: str = "Normal") -> dict[str, Any]:
    """A core/v1 Event about the ToolTuneJob, as `kubectl describe ttj` shows it."""
    now = now_iso()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{job.name}.", "namespace": job.namespace},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": job.name,
            "namespace": job.namespace,
            "uid": job.uid,
        },
        "reason": reason,
        "message": message,
        "type": event_type,
        "source": {"component": EVENT_COMPONENT},
        "reportingComponent": EVENT_COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def kubernetes_event_create(contract: TrainerContract) -> CreateEvent | None:
    if not contract.report_progress:
        return None
    api_client = kubernetes_api_client()
    if api_client is None:
        return None
    from kubernetes import client

    api = client.CoreV1Api(api_client)

    def create(body: dict[str, Any]) -> None:
        api.create_namespaced_event(contract.job.namespace, body, _request_timeout=API_TIMEOUT_SECONDS)

    return create


class EventRecorder:
    """Creates Events about the job, at most one per contract.progress_interval_seconds; the rest wait
    (the oldest dropped beyond EVENT_BACKLOG) until the next one is due or until flush()."""

    def __init__(
        self, contract: TrainerContract, create: CreateEvent | None = None, clock: Clock = time.monotonic
    ):
        self.job = contract.job
        self.interval = contract.progress_interval_seconds
        self._create = create if create is not None else kubernetes_event_create(contract)
        self._clock = clock
        self._backlog: deque[dict[str, Any]] = deque(maxlen=EVENT_BACKLOG)
        self._last_sent: float | None = None

    def record(self, reason: str, message: str, event_type: str = "Normal") -> None:
        self._backlog.append(event_body(self.job, reason, message, event_type))
        self.send_due()

    def send_due(self) -> None:
        """Send the oldest waiting Event if the rate limit allows (called on every training step)."""
        if self._backlog and (self._last_sent is None or self._clock() - self._last_sent >= self.interval):
            self._send(self._backlog.popleft())

    def flush(self) -> None:
        while self._backlog:
            self._send(self._backlog.popleft())

    def _send(self, body: dict[str, Any]) -> None:
        self._last_sent = self._clock()
        if self._create is None:
            return
        try:
            self._create(body)
        except Exception as error:  # an Event must never end a training run
            log.warning("creating Event %s failed: %s", body["reason"], describe_error(error))


# ---------------------------------------------------------------- metrics

LABELS = ("namespace", "name", "backend", "attempt")
# observe() keyword → (metric name, help). Every metric carries LABELS and nothing else.
GAUGES: dict[str, tuple[str, str]] = {
    "step": ("tooltune_train_step", "Optimizer steps done."),
    "total_steps": ("tooltune_train_total_steps", "Optimizer steps the run will take."),
    "epoch": ("tooltune_train_epoch", "Epochs done (fractional)."),
    "eta_seconds": (
        "tooltune_train_eta_seconds",
        "Estimated seconds until the last step, from the step rate.",
    ),
    "train_loss": ("tooltune_train_loss", "Latest logged training loss."),
    "eval_loss": ("tooltune_eval_loss", "Latest validation loss."),
    "learning_rate": ("tooltune_learning_rate", "Current learning rate."),
    "grad_norm": ("tooltune_train_grad_norm", "Gradient norm at the latest logged step."),
    "tokens_per_second": ("tooltune_train_tokens_per_second", "Training tokens processed per second."),
    "gpu_memory_bytes": ("tooltune_gpu_memory_bytes", "GPU memory allocated by the trainer."),
    "tool_name_accuracy": (
        "tooltune_eval_tool_name_accuracy",
        "Share of validation calls naming the right tool.",
    ),
    "arguments_exact_match": (
        "tooltune_eval_arguments_exact_match",
        "Share of calls with exactly the right arguments.",
    ),
    "valid_json_rate": ("tooltune_eval_valid_json_rate", "Share of calls whose arguments are valid JSON."),
    "no_call_rate": ("tooltune_eval_no_call_rate", "Share of prompts answered without a tool call."),
    "estimated_gpu_hours": (
        "tooltune_estimated_gpu_hours",
        "GPU-hours of the whole attempt: used so far plus the step rate's ETA, times the GPUs.",
    ),
    "estimated_cost_usd": (
        "tooltune_estimated_cost_dollars",
        "Estimated cost of the run in US dollars (GPU-hours or training tokens at their price).",
    ),
}
LAST_PROGRESS_METRIC = "tooltune_train_last_progress_timestamp_seconds"
DIAGNOSIS_METRIC = "tooltune_train_diagnosis"
TRAINER_METRIC_NAMES = frozenset(
    {name for name, _ in GAUGES.values()} | {LAST_PROGRESS_METRIC, DIAGNOSIS_METRIC}
)


class TrainingMetrics:
    """prometheus-client metrics of one run; labels namespace, name, backend, attempt (nothing unbounded)."""

    def __init__(self, contract: TrainerContract, registry: CollectorRegistry | None = None):
        self.port = contract.metrics_port
        self.registry = registry if registry is not None else CollectorRegistry()
        if registry is None:
            ProcessCollector(registry=self.registry)
        self.labels = {
            "namespace": contract.job.namespace,
            "name": contract.job.name,
            "backend": str(contract.spec.backend),
            "attempt": str(contract.job.attempt),
        }
        self._gauges = {
            key: Gauge(name, help_text, LABELS, registry=self.registry)
            for key, (name, help_text) in GAUGES.items()
        }
        progress_help = "Unix time of the latest step forward (for no-progress alerts)."
        self._last_progress = Gauge(LAST_PROGRESS_METRIC, progress_help, LABELS, registry=self.registry)
        diagnosis_help = "1 for the current loss diagnosis pattern, 0 for the others."
        self._diagnosis = Gauge(
            DIAGNOSIS_METRIC, diagnosis_help, (*LABELS, "pattern"), registry=self.registry
        )
        self._step: float | None = None
        self._server: Any = None

    def serve(self) -> None:
        """Serve /metrics on contract.metrics_port (0 disables it)."""
        if self.port:
            self._server, _ = start_http_server(self.port, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def observe(self, **values: float | None) -> None:
        """Set gauges by observe() keyword (see GAUGES); None leaves a gauge as it is."""
        unknown = sorted(set(values) - set(GAUGES))
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(GAUGES)}")
        for key, value in values.items():
            if value is not None:
                self._gauges[key].labels(**self.labels).set(value)
        step = values.get("step")
        if step is not None and (self._step is None or step > self._step):
            self._step = step
            self._last_progress.labels(**self.labels).set_to_current_time()

    def set_diagnosis(self, pattern: str) -> None:
        for known in PATTERNS:
            self._diagnosis.labels(**self.labels, pattern=known).set(1 if known == pattern else 0)


def gpu_memory_bytes() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return int(torch.cuda.memory_allocated()) if torch.cuda.is_available() else None


# ---------------------------------------------------------------- callbacks

# Trainer log keys → observe() keywords. The end-of-run "train_loss" is an average over the run, not
# the latest loss, so it is left out.
LOG_KEYS = {
    "loss": "train_loss",
    "eval_loss": "eval_loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "epoch": "epoch",
}


def gpu_cost(
    gpus: int, price: float | None, elapsed_seconds: float, eta: int | None
) -> dict[str, Any] | None:
    """status.cost of a GPU run: GPU-hours used so far (wall-clock hours × gpus) and, once the step rate gives
    an ETA, those of the whole attempt; priced when a cost per GPU-hour is known. None without GPUs."""
    if gpus <= 0:
        return None
    used = elapsed_seconds / 3600 * gpus
    cost: dict[str, Any] = {"gpus": gpus, "gpuHours": round(used, 4)}
    estimated = None if eta is None else used + eta / 3600 * gpus
    if estimated is not None:
        cost["estimatedGpuHours"] = round(estimated, 4)
    if price is not None:
        cost |= {"costPerGpuHour": price, "spentUsd": round(used * price, 4)}
        if estimated is not None:
            cost["estimatedUsd"] = round(estimated * price, 4)
    return cost


def eta_seconds(step: int, total_steps: int, start_step: int, elapsed: float) -> int | None:
    """Seconds to the last step at the rate seen since training (or resuming) began."""
    done = step - start_step
    if done <= 0 or elapsed <= 0 or total_steps <= 0:
        return None
    return round(max(total_steps - step, 0) * elapsed / done)


def percent(step: int, total_steps: int) -> float | None:
    return round(100.0 * step / total_steps, 1) if total_steps > 0 else None


class TelemetryCallback:
    """Progress and losses from the Trainer to metrics and status, and the loss diagnosis."""

    def __init__(
        self,
        reporter: StatusReporter,
        metrics: TrainingMetrics,
        events: EventRecorder,
        clock: Clock = time.monotonic,
        gpus: int = 0,
        gpu_hour_price: float | None = None,
    ):
        self.reporter = reporter
        self.metrics = metrics
        self.events = events
        self._clock = clock
        self.gpus = gpus
        self.gpu_hour_price = gpu_hour_price
        self.train_losses: list[tuple[int, float]] = []
        self.eval_losses: list[tuple[int, float]] = []
        self.diagnosis: Diagnosis | None = None
        self._start: tuple[float, int] | None = None
        self._tokens_seen: tuple[float, float] | None = None
        self._latest: dict[str, float] = {}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any):
        self._start = (self._clock(), state.global_step)
        self._report(state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any):
        self._report(state)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **_: Any
    ):
        logs = logs or {}
        values = {LOG_KEYS[key]: float(value) for key, value in logs.items() if key in LOG_KEYS}
        step = state.global_step
        if "train_loss" in values:
            self.train_losses = by_step([*self.train_losses, (step, values["train_loss"])])
        if "eval_loss" in values:
            self.eval_losses = by_step([*self.eval_losses, (step, values["eval_loss"])])
        tokens_per_second = self._tokens_per_second(logs, state)
        if tokens_per_second is not None:
            values["tokens_per_second"] = tokens_per_second
        self._latest.update(values)
        if "train_loss" in values or "eval_loss" in values:
            self._diagnose(state)
        self._report(state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any):
        self._report(state)
        self.reporter.flush()
        self.events.flush()

    def _tokens_per_second(self, logs: Mapping[str, Any], state: TrainerState) -> float | None:
        seen = logs.get("num_tokens") or getattr(state, "num_input_tokens_seen", 0)
        if not seen:
            return None
        now, previous = self._clock(), self._tokens_seen
        self._tokens_seen = (now, float(seen))
        if previous is None or now <= previous[0] or seen < previous[1]:  # first log, or a resumed counter
            return None
        return (float(seen) - previous[1]) / (now - previous[0])

    def _diagnose(self, state: TrainerState) -> None:
        found = diagnose(self.train_losses, self.eval_losses, total_steps=state.max_steps or None)
        if found is None or found == self.diagnosis:
            return
        changed = self.diagnosis is None or found.pattern != self.diagnosis.pattern
        self.diagnosis = found
        self.reporter.update(diagnosis=found.dump())
        if not changed:  # same pattern, later evidence: status only, no new Event
            return
        self.metrics.set_diagnosis(found.pattern)
        self.events.record(
            f"Loss{found.pattern}",
            f"step {found.step}: {found.advice}",
            "Normal" if found.pattern == CONVERGING else "Warning",
        )

    def _report(self, state: TrainerState) -> None:
        step, total = state.global_step, state.max_steps or 0
        eta = None
        if self._start is not None:
            start_time, start_step = self._start
            elapsed = self._clock() - start_time
            eta = eta_seconds(step, total, start_step, elapsed)
            cost = gpu_cost(self.gpus, self.gpu_hour_price, elapsed, eta)
            if cost is not None:
                self.reporter.update(cost=cost)
                self.metrics.observe(
                    estimated_gpu_hours=cost.get("estimatedGpuHours"),
                    estimated_cost_usd=cost.get("estimatedUsd"),
                )
        gpu_memory = gpu_memory_bytes()
        self.metrics.observe(
            step=step, total_steps=total or None, eta_seconds=eta, gpu_memory_bytes=gpu_memory, **self._latest
        )
        progress = Progress(
            step=step,
            total_steps=total or None,
            percent=percent(step, total),
            epoch=self._latest.get("epoch"),
            eta_seconds=eta,
            train_loss=self._latest.get("train_loss"),
            eval_loss=self._latest.get("eval_loss"),
            learning_rate=self._latest.get("learning_rate"),
            tokens_per_second=self._latest.get("tokens_per_second"),
        )
        self.reporter.update(progress=progress.dump())
        self.events.send_due()


class EarlyStopCallback:
    """Stops training when spec.evaluation.earlyStopping is set and the diagnosis is Overfitting or
    Diverging; the reason is kept in ``stop_reason`` and sent as an Event."""

    def __init__(self, telemetry: TelemetryCallback, enabled: bool):
        self.telemetry = telemetry
        self.enabled = enabled
        self.stop_reason: str | None = None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any):
        diagnosis = self.telemetry.diagnosis
        if not self.enabled or diagnosis is None or diagnosis.pattern not in EARLY_STOP_PATTERNS:
            return
        control.should_training_stop = True
        if self.stop_reason is None:
            self.stop_reason = (
                f"stopped early at step {state.global_step}: {diagnosis.pattern} since step "
                f"{diagnosis.step}. {diagnosis.advice}"
            )
            log.warning("%s", self.stop_reason)
            self.telemetry.events.record("EarlyStopped", self.stop_reason, "Warning")


@functools.cache
def trainer_callback(hooks: type) -> type:
    """hooks as a transformers TrainerCallback (whose no-op methods cover the events hooks ignore).

    Made here rather than at import so that importing this module does not import transformers and
    torch: the OpenAI submitter uses StatusReporter and TrainingMetrics alone (about 500 MB less)."""
    from transformers import TrainerCallback

    return type(hooks.__name__, (hooks, TrainerCallback), {"__doc__": hooks.__doc__})


def telemetry_callbacks(
    contract: TrainerContract,
    reporter: StatusReporter,
    metrics: TrainingMetrics,
    events: EventRecorder | None = None,
    clock: Clock = time.monotonic,
) -> list[Any]:
    """[TelemetryCallback, EarlyStopCallback] for the Trainer, in this order (early stop reads the
    diagnosis the first one made). Events go to the Kubernetes API unless ``events`` is given."""
    events = events if events is not None else EventRecorder(contract, clock=clock)
    resources = contract.spec.resources
    price = resources.cost_per_gpu_hour
    telemetry = trainer_callback(TelemetryCallback)(
        reporter,
        metrics,
        events,
        clock=clock,
        gpus=resources.gpus,
        gpu_hour_price=contract.prices.cost_per_gpu_hour if price is None else price,
    )
    early_stop = trainer_callback(EarlyStopCallback)(telemetry, contract.spec.evaluation.early_stopping)
    return [telemetry, early_stop]
