"""A real Prometheus scrapes a trainer while it trains, and the operator's metrics endpoint.

The trainer side is a real transformers Trainer on a tiny random Llama learning to count (next token =
this token + 1), with tooltune's telemetry callbacks: Prometheus must hold the job's train-loss series
and see it fall. The operator side is the operator's metrics server with its jobs collector over a
fixed state, and tooltune's alert rules loaded into the same Prometheus.
"""

from __future__ import annotations

import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import kopf
import pytest
from prometheus_client import CollectorRegistry
from tooltune_api import TINY_MODEL
from tooltune_api.models import JobRef, ToolTuneJobSpec, TrainerContract
from tooltune_operator.metrics import OperatorMetrics, job_phases, reconciled, start_metrics_server
from tooltune_trainer.telemetry import StatusReporter, TrainingMetrics, telemetry_callbacks
from transformers import TrainerCallback

from tests.fixtures.prometheus import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALERT_RULES = ROOT / "charts/tooltune/files/tooltune-alerts.yaml"
JOB = {"namespace": "ml", "name": "count-tools"}
SELECTOR = '{namespace="ml", name="count-tools"}'
VOCAB, SEQUENCE = 64, 32
MAX_STEPS = 30
# One status patch per second at most, so a run of a few seconds shows the bound holding.
PROGRESS_INTERVAL_SECONDS = 1.0
# Prometheus scrapes every second: on a fast machine the run is paced so it spans several scrapes.
STEP_PACE_SECONDS = 0.2


def counting_dataset(examples: int, seed: int):
    import torch

    starts = torch.randint(0, VOCAB, (examples,), generator=torch.Generator().manual_seed(seed))

    class Counting(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return examples

        def __getitem__(self, index: int) -> dict:
            ids = (starts[index] + torch.arange(SEQUENCE)) % VOCAB
            return {"input_ids": ids, "labels": ids.clone()}

    return Counting()


def tiny_trainer(workdir: Path, callbacks: list):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=SEQUENCE,
    )
    args = TrainingArguments(
        output_dir=str(workdir),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        eval_strategy="steps",
        eval_steps=10,
        logging_steps=2,
        max_steps=MAX_STEPS,
        learning_rate=4e-3,
        per_device_train_batch_size=8,
        disable_tqdm=True,
    )
    return Trainer(
        model=LlamaForCausalLM(config),
        args=args,
        train_dataset=counting_dataset(512, seed=1),
        eval_dataset=counting_dataset(16, seed=2),
        callbacks=callbacks,
    )


class Pace(TrainerCallback):
    """Makes each training step take at least `seconds`, so that a fast run spans several scrapes."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = time.monotonic()

    def on_step_begin(self, *_: object, **__: object) -> None:
        self.started = time.monotonic()

    def on_step_end(self, *_: object, **__: object) -> None:
        time.sleep(max(0.0, self.seconds - (time.monotonic() - self.started)))


def contract(metrics_port: int) -> TrainerContract:
    return TrainerContract(
        job=JobRef(**JOB, uid="uid-1", attempt=1),
        spec=ToolTuneJobSpec(base_model=TINY_MODEL, dataset={"train": "t.jsonl"}, output={"uri": "/tmp/o"}),
        metrics_port=metrics_port,
        progress_interval_seconds=PROGRESS_INTERVAL_SECONDS,
        report_progress=False,  # status goes to the test's counting patch, Events nowhere
    )


def values(series: dict) -> list[float]:
    return [float(value) for _, value in series["values"]]


def test_prometheus_scrapes_a_training_run_and_its_loss_falls(prometheus, tmp_path):
    trainer_port = free_port()
    run = contract(trainer_port)
    patch_times: list[float] = []
    reporter = StatusReporter(run, patch=lambda body: patch_times.append(time.monotonic()))
    metrics = TrainingMetrics(run)
    metrics.serve()
    try:
        metrics.observe(step=0, total_steps=MAX_STEPS)
        server = prometheus({"trainer": [f"127.0.0.1:{trainer_port}"]})
        server.wait_for('up{job="trainer"} == 1')
        started = time.time()
        callbacks = [*telemetry_callbacks(run, reporter, metrics), Pace(STEP_PACE_SECONDS)]
        tiny_trainer(tmp_path / "run", callbacks).train()
        duration = time.time() - started
        server.wait_for(f"tooltune_train_step{SELECTOR} == {MAX_STEPS}", timeout=10)
        # Range points fall every 0.5 s from the start: end past now so the last scrape is covered.
        series = server.query_range(f"tooltune_train_loss{SELECTOR}", started, time.time() + 1, step=0.5)
    finally:
        metrics.close()

    assert len(series) == 1
    assert series[0]["metric"] | {} == {
        "__name__": "tooltune_train_loss",
        **JOB,
        "backend": "unsloth",
        "attempt": "1",
        "job": "trainer",
        "instance": f"127.0.0.1:{trainer_port}",
    }
    losses = values(series[0])
    assert len(set(losses)) >= 3, f"too few scraped loss values over a {duration:.1f}s run: {losses}"
    assert losses[-1] < 0.75 * losses[0], losses
    half = len(losses) // 2
    assert max(losses[half:]) < max(losses[:half]), losses  # falls over the run, not just at its end
    eval_loss = server.query(f"tooltune_eval_loss{SELECTOR}")
    assert eval_loss and float(eval_loss[0]["value"][1]) < losses[0]

    # The status bound: at most one patch per interval during the run, plus the final flush.
    assert len(patch_times) <= duration / PROGRESS_INTERVAL_SECONDS + 2
    assert all(later - earlier >= PROGRESS_INTERVAL_SECONDS for earlier, later in pairwise(patch_times[:-1]))


def test_prometheus_scrapes_the_operator_and_evaluates_the_alerts(prometheus):
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry=registry)
    bodies = [
        {"metadata": {"namespace": "ml", "name": "running"}, "status": {"phase": "Running"}},
        {"metadata": {"namespace": "ml", "name": "broken"}, "status": {"phase": "Failed"}},
    ]
    metrics.watch_jobs(lambda: job_phases(bodies))

    @reconciled("create")
    def handler(fail: bool, **_: Any) -> None:
        if fail:
            raise kopf.TemporaryError("not yet")

    memo = kopf.Memo(metrics=metrics)
    handler(False, memo=memo)
    with pytest.raises(kopf.TemporaryError):
        handler(True, memo=memo)

    port = free_port()
    http = start_metrics_server(port, registry=registry, addr="127.0.0.1")
    try:
        server = prometheus({"operator": [f"127.0.0.1:{port}"]}, rule_files=[str(ALERT_RULES)])
        running = server.wait_for('tooltune_jobs{phase="Running"} == 1')
        assert running[0]["metric"]["job"] == "operator"
        reconciles = server.wait_for('tooltune_operator_reconciles_total{handler="create"}')
        assert float(reconciles[0]["value"][1]) == 2
        errors = server.query('tooltune_operator_reconcile_errors_total{handler="create"}')
        assert [(e["metric"]["kind"], e["value"][1]) for e in errors] == [("temporary", "1")]
        firing = server.wait_for('ALERTS{alertname="ToolTuneJobFailed", alertstate="firing"}')
        assert [(a["metric"]["namespace"], a["metric"]["name"]) for a in firing] == [("ml", "broken")]
        bodies[1]["status"]["phase"] = "Running"  # the state is read at scrape time
        server.wait_for('tooltune_jobs{phase="Running"} == 2')
        rules = server.api("rules")["groups"]
        unhealthy = [rule["name"] for group in rules for rule in group["rules"] if rule["health"] != "ok"]
        assert unhealthy == []
        assert sum(len(group["rules"]) for group in rules) == 5
    finally:
        http.shutdown()
        http.server_close()


def test_a_real_trainer_stops_when_the_early_stop_callback_says_so(tmp_path):
    """The Trainer honours should_training_stop set from on_log (transformers' contract, checked here)."""
    from tooltune_api.diagnosis import ADVICE, OVERFITTING
    from tooltune_api.models import Diagnosis

    run = contract(metrics_port=0)
    run.spec.evaluation.early_stopping = True
    callbacks = telemetry_callbacks(
        run, StatusReporter(run), TrainingMetrics(run, registry=CollectorRegistry())
    )
    telemetry, early_stop = callbacks
    # As if earlier evaluations had shown overfitting: the first log of this run must stop it.
    telemetry.diagnosis = Diagnosis(pattern=OVERFITTING, advice=ADVICE[OVERFITTING], step=0)
    trainer = tiny_trainer(tmp_path / "run", callbacks)
    trainer.train()

    assert trainer.state.global_step == trainer.args.logging_steps < MAX_STEPS
    assert early_stop.stop_reason.startswith("stopped early at step 2: Overfitting")


def test_prometheus_scrapes_the_running_operator_as_it_reconciles_jobs(
    prometheus, k8s, kopf_operator, tmp_path
):
    """The real operator, its metrics server and jobs collector, handling real ToolTuneJobs end to end."""
    import sys

    from tooltune_operator.settings import Settings

    from tests.fixtures.cluster import operator_kube
    from tests.harness.kubelet import Kubelet
    from tests.harness.waiting import wait_for

    fake_trainer = [sys.executable, str(ROOT / "tests/integration/fake_trainer.py")]
    kubelet = Kubelet(k8s.cluster, tmp_path / "kubelet", executables={"tooltune": fake_trainer}).start()
    port = free_port()
    memo = kopf.Memo(
        kube=operator_kube(k8s.api), settings=Settings(metrics_port=port, progress_interval_seconds=0)
    )
    try:
        kopf_operator("tooltune_operator.handlers", memo=memo)
        server = prometheus({"operator": [f"127.0.0.1:{port}"]}, rule_files=[str(ALERT_RULES)])
        for name, behaviour in [("good", "succeed"), ("bad", "invalid-data")]:
            k8s.custom.create_namespaced_custom_object(
                "tooltune.dev", "v1alpha1", "default", "tooltunejobs",
                {"apiVersion": "tooltune.dev/v1alpha1", "kind": "ToolTuneJob", "metadata": {"name": name},
                 "spec": {"baseModel": f"script/{behaviour}", "dataset": {"train": "d.jsonl"},
                          "output": {"uri": "runs/x"}, "resources": {"gpus": 0}}},
            )  # fmt: skip
        wait_for(
            lambda: server.query('tooltune_jobs{phase="Succeeded"} == 1') and server.query(
                'tooltune_job_phase{namespace="default", name="bad", phase="Failed"} == 1'),
            timeout=60, what="the operator's job phases in Prometheus", interval=0.5,
        )  # fmt: skip
        reconciles = server.query('sum(tooltune_operator_reconciles_total{handler="reconcile"})')
        assert float(reconciles[0]["value"][1]) >= 2
        durations = server.query('tooltune_job_duration_seconds_count{phase="Succeeded"}')
        assert durations and float(durations[0]["value"][1]) >= 1  # the registry is the process's
        firing = server.wait_for('ALERTS{alertname="ToolTuneJobFailed", alertstate="firing"}', timeout=60)
        assert [(a["metric"]["namespace"], a["metric"]["name"]) for a in firing] == [("default", "bad")]
    finally:
        kubelet.stop()
        if memo.get("metrics_server") is not None:
            memo.metrics_server.shutdown()
            memo.metrics_server.server_close()
