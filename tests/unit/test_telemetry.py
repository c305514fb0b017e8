"""Telemetry: status patch rate bound, trainer metric labels, Trainer logs → progress, Events, early stop;
and the operator's metrics (reconciles, jobs by phase, durations, retries)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
from itertools import pairwise
from pathlib import Path
from typing import Any

import kopf
import pytest
from prometheus_client import CollectorRegistry
from tooltune_api import API_VERSION, KIND, TINY_MODEL
from tooltune_api.diagnosis import ADVICE, DIVERGING, OVERFITTING, PLATEAU
from tooltune_api.models import (
    Diagnosis,
    JobRef,
    PriceTable,
    ToolTuneJobSpec,
    ToolTuneJobStatus,
    TrainerContract,
)
from tooltune_operator.metrics import OperatorMetrics, job_phases, reconciled
from tooltune_trainer.plots import render_loss_curves
from tooltune_trainer.telemetry import (
    EventRecorder,
    StatusReporter,
    TrainingMetrics,
    eta_seconds,
    gpu_cost,
    percent,
    telemetry_callbacks,
)
from transformers import TrainerControl, TrainerState, TrainingArguments

INTERVAL = 10.0
ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_contract(
    early_stopping: bool = False,
    metrics_port: int = 0,
    resources: dict[str, Any] | None = None,
    prices: PriceTable | None = None,
) -> TrainerContract:
    spec = ToolTuneJobSpec(
        base_model=TINY_MODEL,
        dataset={"train": "data/train.jsonl"},
        output={"uri": "/tmp/out"},
        evaluation={"earlyStopping": early_stopping},
        resources=resources or {},
    )
    return TrainerContract(
        job=JobRef(namespace="ml", name="task-api-tools", uid="uid-1", attempt=2),
        spec=spec,
        metrics_port=metrics_port,
        progress_interval_seconds=INTERVAL,
        prices=prices or PriceTable(),
    )


class Recorder:
    """Counts calls of a patch or create function, remembering each body and when it came."""

    def __init__(self, clock: FakeClock, fail: bool = False) -> None:
        self.clock = clock
        self.fail = fail
        self.calls: list[tuple[float, dict[str, Any]]] = []

    def __call__(self, body: dict[str, Any]) -> None:
        self.calls.append((self.clock.now, body))
        if self.fail:
            raise ConnectionError("apiserver unreachable")

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [body for _, body in self.calls]


def sample(metrics: TrainingMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {**metrics.labels, **labels})


# ---------------------------------------------------------------- StatusReporter


def test_status_patches_are_bounded_to_one_per_interval_plus_a_final_flush():
    clock = FakeClock()
    patches = Recorder(clock)
    reporter = StatusReporter(make_contract(), patch=patches, clock=clock)
    for step in range(1, 601):  # 600 steps, 0.5 s each: 300 s of training
        reporter.update(progress={"step": step})
        clock.advance(0.5)
    reporter.flush()

    times = [moment for moment, _ in patches.calls]
    assert len(times) == 300 / INTERVAL + 1  # one per 10 s, plus the final flush
    gaps = [later - earlier for earlier, later in pairwise(times[:-1])]
    assert min(gaps) >= INTERVAL
    assert patches.bodies[-1]["status"]["progress"]["step"] == 600


def test_pending_fields_merge_and_the_newest_value_wins():
    clock = FakeClock()
    patches = Recorder(clock)
    reporter = StatusReporter(make_contract(), patch=patches, clock=clock)
    reporter.update(progress={"step": 1})
    reporter.update(progress={"step": 2, "trainLoss": 0.9})
    reporter.update(diagnosis={"pattern": PLATEAU, "advice": ADVICE[PLATEAU], "step": 2})
    reporter.update(progress={"step": 3})
    reporter.flush()

    assert len(patches.calls) == 2
    status = patches.bodies[1]["status"]
    assert status["progress"]["step"] == 3
    assert status["progress"]["trainLoss"] == 0.9
    assert status["diagnosis"]["pattern"] == PLATEAU
    assert status["progress"]["updatedAt"].endswith("Z")
    ToolTuneJobStatus.model_validate(status)  # the patch is a valid status fragment


def test_a_failing_patch_never_raises_and_its_fields_are_sent_with_the_next_one(caplog):
    clock = FakeClock()
    patches = Recorder(clock, fail=True)
    reporter = StatusReporter(make_contract(), patch=patches, clock=clock)
    reporter.update(progress={"step": 1, "trainLoss": 0.9})
    patches.fail = False
    clock.advance(INTERVAL)
    reporter.update(progress={"step": 2})

    assert patches.bodies[-1]["status"]["progress"] | {"updatedAt": None} == {
        "step": 2,
        "trainLoss": 0.9,
        "updatedAt": None,
    }
    assert "status patch failed" in caplog.text
    assert "trainLoss" not in caplog.text  # the body is never logged


def test_operator_fields_are_refused_by_name():
    reporter = StatusReporter(make_contract(), patch=lambda body: None)
    with pytest.raises(ValueError, match="phase"):
        reporter.update(phase="Succeeded")


def test_without_progress_reporting_nothing_is_sent():
    contract = make_contract().model_copy(update={"report_progress": False})
    reporter = StatusReporter(contract)
    reporter.update(progress={"step": 1})
    reporter.flush()
    assert reporter.patches_sent == 0


# ---------------------------------------------------------------- TrainingMetrics


def test_metrics_carry_the_job_labels_and_nothing_else():
    metrics = TrainingMetrics(make_contract(), registry=CollectorRegistry())
    metrics.observe(step=5, total_steps=50, train_loss=0.7, learning_rate=2e-5, eval_loss=None)

    assert metrics.labels == {
        "namespace": "ml",
        "name": "task-api-tools",
        "backend": "unsloth",
        "attempt": "2",
    }
    assert sample(metrics, "tooltune_train_step") == 5
    assert sample(metrics, "tooltune_train_loss") == 0.7
    assert sample(metrics, "tooltune_learning_rate") == 2e-5
    assert sample(metrics, "tooltune_eval_loss") is None  # never observed, so not exported as 0
    assert sample(metrics, "tooltune_train_last_progress_timestamp_seconds") > 0
    for family in metrics.registry.collect():
        for metric_sample in family.samples:
            assert set(metric_sample.labels) - {"pattern"} == set(metrics.labels)


def test_unknown_metric_names_are_refused_by_name():
    metrics = TrainingMetrics(make_contract(), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="trian_loss"):
        metrics.observe(trian_loss=0.5)


def test_diagnosis_gauge_marks_only_the_current_pattern():
    metrics = TrainingMetrics(make_contract(), registry=CollectorRegistry())
    metrics.set_diagnosis(PLATEAU)
    metrics.set_diagnosis(DIVERGING)
    assert sample(metrics, "tooltune_train_diagnosis", pattern=DIVERGING) == 1
    assert sample(metrics, "tooltune_train_diagnosis", pattern=PLATEAU) == 0


def test_serve_exposes_metrics_over_http():
    from tests.fixtures.prometheus import free_port

    port = free_port()
    metrics = TrainingMetrics(make_contract(metrics_port=port))
    metrics.serve()
    try:
        metrics.observe(train_loss=1.25)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        metrics.close()
    assert (
        'tooltune_train_loss{attempt="2",backend="unsloth",name="task-api-tools",namespace="ml"} 1.25' in text
    )
    assert "process_resident_memory_bytes" in text


# ---------------------------------------------------------------- callbacks


def test_eta_and_percent():
    assert eta_seconds(step=30, total_steps=100, start_step=10, elapsed=40.0) == 140  # 2 s per step, 70 left
    assert eta_seconds(step=10, total_steps=100, start_step=10, elapsed=5.0) is None  # no step done yet
    assert percent(25, 200) == 12.5
    assert percent(3, 0) is None


class Run:
    """Drives the telemetry callbacks as the Trainer would, on a fake clock."""

    def __init__(self, early_stopping: bool = False, max_steps: int = 100, **contract_fields: Any) -> None:
        self.clock = FakeClock()
        self.patches = Recorder(self.clock)
        self.events = Recorder(self.clock)
        contract = make_contract(early_stopping=early_stopping, **contract_fields)
        self.reporter = StatusReporter(contract, patch=self.patches, clock=self.clock)
        self.metrics = TrainingMetrics(contract, registry=CollectorRegistry())
        recorder = EventRecorder(contract, create=self.events, clock=self.clock)
        self.callbacks = telemetry_callbacks(
            contract, self.reporter, self.metrics, events=recorder, clock=self.clock
        )
        self.telemetry, self.early_stop = self.callbacks
        self.args = TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to=[])
        self.state = TrainerState(max_steps=max_steps)
        self.control = TrainerControl()
        self.call("on_train_begin")

    def call(self, event: str, **kwargs: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self.args, self.state, self.control, **kwargs)

    def step(self, seconds: float = 2.0, **logs: float) -> None:
        self.clock.advance(seconds)
        self.state.global_step += 1
        self.call("on_step_end")
        if logs:
            self.call("on_log", logs=logs)

    def progress(self) -> dict[str, Any]:
        self.reporter.flush()
        return self.patches.bodies[-1]["status"]["progress"]


def test_callbacks_are_trainer_callbacks_yet_importing_telemetry_imports_no_torch():
    from transformers import TrainerCallback

    run = Run()
    assert all(isinstance(callback, TrainerCallback) for callback in run.callbacks)
    assert [type(callback).__name__ for callback in run.callbacks] == [
        "TelemetryCallback",
        "EarlyStopCallback",
    ]
    probe = (
        "import sys, tooltune_trainer.telemetry; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    paths = os.pathsep.join(str(ROOT / folder) for folder in ("api", "trainer-image"))
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": paths},
    )
    assert result.stdout.split() == ["False", "False"], result.stderr  # the OpenAI submitter stays small


def test_trainer_logs_become_progress_with_percent_and_eta():
    run = Run(max_steps=100)
    for _ in range(9):
        run.step()
    run.step(loss=0.8, learning_rate=2e-5, grad_norm=1.5, epoch=0.3, num_tokens=5000)
    run.step(eval_loss=0.9, epoch=0.33)
    run.step(loss=0.7, learning_rate=1.9e-5, epoch=0.36, num_tokens=6000)

    progress = run.progress()
    assert progress["step"] == 12
    assert progress["totalSteps"] == 100
    assert progress["percent"] == 12.0
    assert progress["etaSeconds"] == 88 * 2  # 2 s per step so far
    assert progress["trainLoss"] == 0.7
    assert progress["evalLoss"] == 0.9
    assert progress["learningRate"] == 1.9e-5
    assert progress["epoch"] == 0.36
    assert progress["tokensPerSecond"] == 1000 / 4  # 1000 tokens over the two steps between the logs
    assert sample(run.metrics, "tooltune_train_grad_norm") == 1.5
    assert sample(run.metrics, "tooltune_train_eta_seconds") == 176
    assert run.telemetry.train_losses == [(10, 0.8), (12, 0.7)]
    assert run.telemetry.eval_losses == [(11, 0.9)]


def test_gpu_cost_is_wall_clock_hours_times_gpus_priced_per_gpu_hour():
    # half an hour on 2 GPUs so far, 1.5 hours to go, at $2.50 per GPU-hour
    assert gpu_cost(2, 2.5, elapsed_seconds=1800, eta=5400) == {
        "gpus": 2,
        "gpuHours": 1.0,
        "estimatedGpuHours": 4.0,
        "costPerGpuHour": 2.5,
        "spentUsd": 2.5,
        "estimatedUsd": 10.0,
    }
    assert gpu_cost(1, None, elapsed_seconds=3600, eta=None) == {"gpus": 1, "gpuHours": 1.0}  # no rate yet
    assert gpu_cost(0, 2.5, elapsed_seconds=3600, eta=60) is None  # a CPU run has no GPU-hours


@pytest.mark.parametrize(
    ("resources", "prices", "rate"),
    [
        ({"gpus": 4, "costPerGpuHour": 3.0}, PriceTable(cost_per_gpu_hour=1.0), 3.0),  # the spec wins
        ({"gpus": 4}, PriceTable(cost_per_gpu_hour=1.0), 1.0),  # else the operator's Helm value
    ],
)
def test_the_gpu_cost_estimate_follows_the_measured_step_rate(resources, prices, rate):
    run = Run(max_steps=100, resources=resources, prices=prices)
    for _ in range(10):
        run.step(seconds=2.0)  # 20 s for 10 steps: 180 s to go

    run.reporter.flush()
    cost = [body["status"]["cost"] for body in run.patches.bodies if "cost" in body["status"]][-1]
    assert cost["gpus"] == 4
    assert cost["gpuHours"] == round(20 / 3600 * 4, 4)
    assert cost["estimatedGpuHours"] == round(200 / 3600 * 4, 4)
    assert cost["estimatedUsd"] == round(200 / 3600 * 4 * rate, 4)
    assert sample(run.metrics, "tooltune_estimated_cost_dollars") == cost["estimatedUsd"]
    assert sample(run.metrics, "tooltune_estimated_gpu_hours") == cost["estimatedGpuHours"]


def test_status_patches_during_a_run_respect_the_bound():
    run = Run(max_steps=400)
    for step in range(400):
        run.step(seconds=0.25, loss=2.0 * 0.99**step)
    run.call("on_train_end")
    times = [moment for moment, _ in run.patches.calls]
    assert len(times) <= 100 / INTERVAL + 2  # 100 s of training: first patch, one per 10 s, final flush
    assert all(later - earlier >= INTERVAL for earlier, later in pairwise(times[:-1]))
    assert run.patches.bodies[-1]["status"]["progress"]["step"] == 400


def test_diagnosis_change_goes_to_status_metrics_and_an_event():
    run = Run(max_steps=1000)
    for step, loss in [(100, 0.85), (200, 0.52), (300, 0.38), (400, 0.35), (500, 0.34), (600, 0.33)]:
        run.state.global_step = step - 1
        run.step(seconds=30, loss=loss, learning_rate=2e-5)
    run.call("on_train_end")

    assert run.telemetry.diagnosis.pattern == PLATEAU
    assert run.patches.bodies[-1]["status"]["diagnosis"] == {
        "pattern": PLATEAU,
        "advice": ADVICE[PLATEAU],
        "step": 400,
    }
    assert sample(run.metrics, "tooltune_train_diagnosis", pattern=PLATEAU) == 1
    reasons = [body["reason"] for body in run.events.bodies]
    assert reasons == ["LossConverging", "LossPlateau"]  # one Event per change, not per log
    event = run.events.bodies[-1]
    assert event["type"] == "Warning"
    assert event["involvedObject"] == {
        "apiVersion": "tooltune.dev/v1alpha1",
        "kind": "ToolTuneJob",
        "name": "task-api-tools",
        "namespace": "ml",
        "uid": "uid-1",
    }
    assert "raise the learning rate" in event["message"].lower()


def test_events_are_rate_limited_and_flushed_at_the_end():
    run = Run(max_steps=1000)
    for loss in [1.0, 0.8, 0.6, 0.5]:  # Converging after the 4th log
        run.step(seconds=1, loss=loss)
    run.step(seconds=1, loss=1.2)  # Spiking, 1 s after the first Event: waits
    assert [body["reason"] for body in run.events.bodies] == ["LossConverging"]
    run.call("on_train_end")
    assert [body["reason"] for body in run.events.bodies] == ["LossConverging", "LossSpiking"]


@pytest.mark.parametrize("enabled", [True, False])
def test_overfitting_stops_training_only_when_early_stopping_is_on(enabled):
    run = Run(early_stopping=enabled, max_steps=1000)
    train = [1.0, 0.8, 0.6, 0.5, 0.4, 0.32, 0.25, 0.2, 0.16, 0.13]
    evals = {2: 0.9, 4: 0.7, 6: 0.62, 8: 0.66, 10: 0.72}
    for index, loss in enumerate(train, start=1):
        run.step(loss=loss)
        if index in evals:
            run.call("on_log", logs={"eval_loss": evals[index]})

    assert run.telemetry.diagnosis.pattern == OVERFITTING
    assert run.control.should_training_stop is enabled
    if enabled:
        assert run.early_stop.stop_reason.startswith("stopped early at step 10: Overfitting since step 6")
        run.call("on_train_end")
        assert "EarlyStopped" in [body["reason"] for body in run.events.bodies]
    else:
        assert run.early_stop.stop_reason is None


def test_the_final_evaluation_at_the_last_eval_step_keeps_the_runs_diagnosis():
    """recipe.run calls trainer.evaluate() after training; when the last step was evaluated already, the
    Trainer logs that step's eval loss a second time. The curve and the diagnosis must not change."""
    run = Run(max_steps=10)
    train = [1.0, 0.8, 0.6, 0.5, 0.4, 0.32, 0.25, 0.2, 0.16, 0.13]
    evals = {2: 0.9, 4: 0.7, 6: 0.62, 8: 0.66, 10: 0.72}
    for index, loss in enumerate(train, start=1):
        run.step(loss=loss)
        if index in evals:
            run.call("on_log", logs={"eval_loss": evals[index]})
    run.call("on_train_end")
    assert run.telemetry.diagnosis.pattern == OVERFITTING

    run.call("on_log", logs={"eval_loss": 0.72})  # trainer.evaluate() at step 10 again
    assert run.telemetry.eval_losses == sorted(evals.items())  # one point per step on the loss curve
    assert run.telemetry.diagnosis.pattern == OVERFITTING


def test_diverging_stops_training_when_early_stopping_is_on():
    run = Run(early_stopping=True)
    for loss in [1.0, 0.8, 0.6, 0.5, 0.7, 0.9, 1.2]:
        run.step(loss=loss)
    assert run.telemetry.diagnosis.pattern == DIVERGING
    assert run.control.should_training_stop


# ---------------------------------------------------------------- the operator's metrics


def operator_metrics() -> OperatorMetrics:
    return OperatorMetrics(registry=CollectorRegistry())


def operator_sample(metrics: OperatorMetrics, metric: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


def test_reconciled_counts_times_and_classifies_errors_of_sync_handlers():
    metrics = operator_metrics()
    memo = kopf.Memo(metrics=metrics)

    @reconciled("create")
    def handler(body: dict[str, Any], **_: Any) -> str:
        if body.get("retry"):
            raise kopf.TemporaryError("children not ready", delay=5)
        if body.get("bad"):
            raise kopf.PermanentError("spec.baseModel is required")
        return body["name"]

    assert handler({"name": "a"}, logger=None, memo=memo) == "a"
    with pytest.raises(kopf.TemporaryError):
        handler({"retry": True}, memo=memo)
    with pytest.raises(kopf.PermanentError):
        handler({"bad": True}, memo=memo)
    with pytest.raises(KeyError):
        handler({}, memo=memo)

    assert handler.__name__ == "handler"  # kopf identifies handlers by name
    assert operator_sample(metrics, "tooltune_operator_reconciles_total", handler="create") == 4
    for kind in ("temporary", "permanent", "unexpected"):
        labels = {"handler": "create", "kind": kind}
        assert operator_sample(metrics, "tooltune_operator_reconcile_errors_total", **labels) == 1
    assert (
        operator_sample(metrics, "tooltune_operator_reconcile_duration_seconds_count", handler="create") == 4
    )


def test_reconciled_wraps_async_handlers_too():
    metrics = operator_metrics()

    @reconciled("delete")
    async def cleanup(**_: Any) -> str:
        await asyncio.sleep(0.01)
        return "done"

    assert asyncio.run(cleanup(memo=kopf.Memo(metrics=metrics))) == "done"
    assert (
        operator_sample(metrics, "tooltune_operator_reconcile_duration_seconds_sum", handler="delete") >= 0.01
    )


def test_each_operator_counts_in_its_own_registry_with_the_process_figures():
    """Two operators in one process (a test's restart, say) count apart: no metric lives at module level."""
    first, second = OperatorMetrics(), OperatorMetrics()

    @reconciled("status")
    def handler(**_: Any) -> None:
        pass

    handler(memo=kopf.Memo(metrics=first))
    handler(memo=kopf.Memo(metrics=first))
    handler(memo=kopf.Memo(metrics=second))

    assert operator_sample(first, "tooltune_operator_reconciles_total", handler="status") == 2
    assert operator_sample(second, "tooltune_operator_reconciles_total", handler="status") == 1
    assert operator_sample(first, "process_resident_memory_bytes") > 0


def test_jobs_collector_reads_the_current_phases_at_each_scrape():
    metrics = operator_metrics()
    bodies = [
        {"metadata": {"namespace": "ml", "name": "a"}, "status": {"phase": "Running"}},
        {"metadata": {"namespace": "ml", "name": "b"}, "status": {"phase": "Failed"}},
        {"metadata": {"namespace": "ml", "name": "c"}, "status": {}},
    ]
    metrics.watch_jobs(lambda: job_phases(bodies))

    assert operator_sample(metrics, "tooltune_jobs", phase="Running") == 1
    assert operator_sample(metrics, "tooltune_jobs", phase="Pending") == 1  # no phase yet
    assert operator_sample(metrics, "tooltune_jobs", phase="Succeeded") == 0  # zeros, not gaps
    assert operator_sample(metrics, "tooltune_job_phase", namespace="ml", name="b", phase="Failed") == 1
    bodies[0]["status"]["phase"] = "Succeeded"
    assert operator_sample(metrics, "tooltune_jobs", phase="Running") == 0
    assert operator_sample(metrics, "tooltune_jobs", phase="Succeeded") == 1


def test_job_durations_and_retries():
    metrics = operator_metrics()
    metrics.job_finished("unsloth", "Succeeded", 1200)
    metrics.job_retried("unsloth")
    metrics.job_retried("unsloth")
    labels = {"backend": "unsloth", "phase": "Succeeded", "le": "1800.0"}
    assert operator_sample(metrics, "tooltune_job_duration_seconds_bucket", **labels) == 1
    assert operator_sample(metrics, "tooltune_job_retries_total", backend="unsloth") == 2


# ---------------------------------------------------------------- the loss-curve picture

TAB_RED = (0.839, 0.153, 0.157)
TAB_ORANGE = (1.0, 0.498, 0.055)


def pixels_of(image: Any, color: tuple[float, float, float]) -> int:
    return int((abs(image[:, :, :3] - color).max(axis=2) < 0.05).sum())


def test_loss_curves_png_shows_train_eval_and_the_diagnosis(tmp_path):
    import matplotlib.image

    train = [(10 * i, 2.0 * 0.9**i) for i in range(1, 30)]
    evals = [(50, 1.2), (100, 0.8), (150, 0.7), (200, 0.75), (250, 0.8)]
    diagnosis = Diagnosis(pattern=OVERFITTING, advice=ADVICE[OVERFITTING], step=150)
    path = render_loss_curves(train, evals, diagnosis, tmp_path / "report" / "loss.png")

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (540, 960)
    assert pixels_of(image, TAB_ORANGE) > 100  # the eval curve
    assert pixels_of(image, TAB_RED) > 50  # the diagnosis marker
    plain = matplotlib.image.imread(render_loss_curves(train, [], None, tmp_path / "plain.png"))
    assert pixels_of(plain, TAB_ORANGE) == 0
    assert pixels_of(plain, TAB_RED) == 0


def test_loss_curves_need_some_loss(tmp_path):
    with pytest.raises(ValueError, match="no loss was recorded"):
        render_loss_curves([], [], None, tmp_path / "loss.png")


# ---------------------------------------------------------------- against the (emulated) API server


@pytest.mark.integration
def test_status_patches_and_events_reach_the_api_server(k8s):
    """Default wiring: the kubernetes client from KUBECONFIG, a merge patch on the status subresource
    (validated against the CRD's schema by the emulator) and a core/v1 Event about the job."""
    from tests.harness.emulator import EVENTS, TTJ

    job = make_contract()
    body = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": job.job.name},
        "spec": job.spec.dump(),
    }
    created = k8s.cluster.create(TTJ, body, namespace=job.job.namespace)
    job.job.uid = created["metadata"]["uid"]
    k8s.cluster.patch(TTJ, "ml", job.job.name, {"status": {"phase": "Running"}}, subresource="status")

    reporter = StatusReporter(job)
    reporter.update(progress={"step": 5, "totalSteps": 50, "percent": 10.0, "trainLoss": 0.8})
    reporter.update(diagnosis={"pattern": PLATEAU, "advice": ADVICE[PLATEAU], "step": 400})
    reporter.flush()
    EventRecorder(job).record("LossPlateau", f"step 400: {ADVICE[PLATEAU]}", "Warning")

    status = k8s.cluster.get(TTJ, "ml", job.job.name)["status"]
    assert reporter.patches_sent == 2
    assert status["phase"] == "Running"  # the operator's fields are left alone
    assert status["progress"]["step"] == 5
    assert status["progress"]["trainLoss"] == 0.8
    assert status["diagnosis"]["pattern"] == PLATEAU
    events = k8s.cluster.list(EVENTS, "ml")
    assert [(e["reason"], e["type"], e["involvedObject"]["uid"]) for e in events] == [
        ("LossPlateau", "Warning", job.job.uid)
    ]


def test_an_api_server_that_never_answers_delays_training_by_at_most_the_timeout(tmp_path, monkeypatch):
    """A status patch or an Event waits for a silent API server only as long as API_TIMEOUT_SECONDS."""
    import socket
    import time

    import yaml
    from tooltune_trainer import telemetry

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers
    server = f"http://127.0.0.1:{silent.getsockname()[1]}"
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "silent",
        "clusters": [{"name": "silent", "cluster": {"server": server}}],
        "users": [{"name": "silent", "user": {"token": "t"}}],
        "contexts": [{"name": "silent", "context": {"cluster": "silent", "user": "silent"}}],
    }  # fmt: skip
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setattr(telemetry, "API_TIMEOUT_SECONDS", (1, 1))
    job = make_contract()

    started = time.monotonic()
    reporter = StatusReporter(job)
    reporter.update(progress={"step": 5, "totalSteps": 50})
    EventRecorder(job).record("LossPlateau", "step 400", "Warning")
    elapsed = time.monotonic() - started
    silent.close()
    assert reporter.patches_sent == 0 and reporter._pending["progress"]["step"] == 5  # kept for the next one
    assert elapsed < 8, f"{elapsed:.1f} s: the client retried or waited past the timeout"
