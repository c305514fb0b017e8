"""The OpenAI backend against a local server speaking the fine-tuning API (tests/fakes/openai_api.py).

The submitter runs as the pod runs it: ``tooltune submit`` in a subprocess (killed and restarted mid-run),
or its ``main`` in-process for the failure paths, reporting status through the Kubernetes client to a
recording API server. The operator side (key from the Secret, cancel) runs against the same server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes.config import kube_config
from openai import OpenAI
from prometheus_client import CollectorRegistry
from tooltune_api import EXIT_INVALID, EXIT_OK
from tooltune_api.models import JobRef, SecretKeyRef, TrainerContract
from tooltune_trainer import remote_cancel, submitter
from tooltune_trainer.remote_cancel import REMOTE_GONE, CancelError, cancel_remote_job
from tooltune_trainer.submitter import EXIT_RETRYABLE, SubmitError, Submitter
from tooltune_trainer.telemetry import StatusReporter, TrainingMetrics

from tests.fakes.kube_status import StatusRecorder
from tests.fakes.openai_api import REFUSAL_MESSAGE, FakeOpenAI, Lifecycle, today
from tests.fakes.task_api import openai_contract, task_api_examples, write_dataset

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE, NAME = "tuning", "task-api-tools"
SECRET = SecretKeyRef(name="openai-api-key", key="OPENAI_API_KEY")
MODEL = "gpt-4o-mini-2024-07-18"  # the model of tests.fakes.task_api.openai_contract
QUICK = Lifecycle(validating_polls=1, queued_polls=1, running_polls=4, steps_per_poll=25)
SUBPROCESS_TIMEOUT = 180


@pytest.fixture
def status_api():
    with StatusRecorder() as recorder:
        yield recorder


def write_contract(tmp_path: Path, server: FakeOpenAI, **openai_settings: Any) -> Path:
    path = tmp_path / "contract.json"
    path.write_text(json.dumps(openai_contract(tmp_path, server.base_url, **openai_settings)))
    return path


def pod_env(tmp_path: Path, api_key: str, status_api: StatusRecorder) -> dict[str, str]:
    """What the operator gives the pod: the key from the Secret, the contract path, a termination log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "OPENAI_"))}
    env.update(
        OPENAI_API_KEY=api_key,
        TOOLTUNE_TERMINATION_LOG=str(tmp_path / "termination-log"),
        TOOLTUNE_WORKDIR=str(tmp_path / "work"),
        KUBECONFIG=str(status_api.write_kubeconfig(tmp_path / "kubeconfig")),
        PYTHONPATH=os.pathsep.join(str(ROOT / p) for p in ("api", "operator", "trainer-image", ".")),
    )
    return env


def start_submit(contract: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-c",
        "from tooltune_trainer.cli import app; app()",
        "submit",
        "--config",
        str(contract),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def run_main(monkeypatch, tmp_path: Path, contract: Path, api_key: str, status_api: StatusRecorder) -> int:
    for key, value in pod_env(tmp_path, api_key, status_api).items():
        if key != "PYTHONPATH":
            monkeypatch.setenv(key, value)
    # the kubernetes client reads KUBECONFIG once, at import
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", os.environ["KUBECONFIG"])
    return submitter.main(contract)


class RecordingReporter(StatusReporter):
    """The real reporter (merging, rate limit of 0 s) with a patch that records every body."""

    def __init__(self, contract: TrainerContract):
        self.bodies: list[dict[str, Any]] = []
        super().__init__(contract, patch=self.bodies.append)

    def final(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for body in self.bodies:
            for key, value in body["status"].items():
                merged[key] = {**merged.get(key, {}), **value}
        return merged


class RecordingEvents:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str]] = []  # (reason, message, type)

    def record(self, reason: str, message: str, event_type: str = "Normal") -> None:
        self.recorded.append((reason, message, event_type))

    def flush(self) -> None:
        pass


def in_process(
    tmp_path: Path,
    server: FakeOpenAI,
    max_retries: int = submitter.MAX_RETRIES,
    events: RecordingEvents | None = None,
    **openai_settings,
):
    contract = TrainerContract.model_validate(openai_contract(tmp_path, server.base_url, **openai_settings))
    reporter = RecordingReporter(contract)
    metrics = TrainingMetrics(contract, registry=CollectorRegistry())
    client = OpenAI(api_key=server.api_key, base_url=server.base_url, max_retries=max_retries)
    sleeps: list[float] = []
    run = Submitter(
        contract, client, reporter, metrics, tmp_path / "work", sleep=sleeps.append, events=events
    )
    return run, reporter, metrics, sleeps


# ---------------------------------------------------------------- the pod, end to end


def test_submitter_killed_mid_run_resumes_the_same_remote_job(openai_server, status_api, tmp_path):
    """Kill -9 while the remote job runs; the restarted pod finds it: exactly one paid job, one upload."""
    openai_server.lifecycle = Lifecycle(
        validating_polls=1, queued_polls=1, running_polls=8, steps_per_poll=10
    )
    contract = write_contract(tmp_path, openai_server)
    env = pod_env(tmp_path, openai_server.api_key, status_api)
    log = tmp_path / "pod.log"

    first = start_submit(contract, env, log)
    try:
        wait_for(
            lambda: openai_server.jobs and openai_server.job()["status"] == "running", 120, "a running job"
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert openai_server.job()["status"] == "running"

    second = start_submit(contract, env, log)
    assert second.wait(timeout=SUBPROCESS_TIMEOUT) == EXIT_OK, log.read_text()[-3000:]

    assert openai_server.jobs_created == 1
    assert openai_server.files_uploaded == 2  # train + validation, uploaded once
    job = openai_server.job()
    assert job["status"] == "succeeded"
    assert job["metadata"] == {
        "tooltune-namespace": NAMESPACE,
        "tooltune-name": NAME,
        "tooltune-uid": "5f1c-uid",
        "tooltune-attempt": "1",
    }
    status = status_api.status(NAMESPACE, NAME)
    assert status["openai"] == {
        "jobId": job["id"],
        "status": "succeeded",
        "fineTunedModel": job["fine_tuned_model"],
        "trainedTokens": QUICK.trained_tokens,
        "shutdownDate": openai_server.models[MODEL]["shutdown_date"],
    }
    # the estimate was in status before the job was created; the bill replaces nothing, it sits beside it
    assert status["cost"]["estimatedUsd"] == round(status["cost"]["trainingTokens"] * 3.00 / 1e6, 4)
    assert status["cost"]["billedTokens"] == QUICK.trained_tokens
    assert status["cost"]["billedUsd"] == round(QUICK.trained_tokens * 3.00 / 1e6, 4)
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 80
    assert status["progress"]["trainLoss"] == pytest.approx(2.0 * 0.93 ** (80 / 5) + 0.05, abs=1e-4)
    assert status["evaluation"]["examples"] == 3
    smoke = json.loads((tmp_path / "models" / NAME / "final" / "smoke.json").read_text())
    assert smoke["fineTunedModel"] == job["fine_tuned_model"]
    assert smoke["finalMetrics"]["step"] == 80 and smoke["finalMetrics"]["evalTokenAccuracy"] == 0.98
    assert [a["toolCalls"][0]["name"] for a in smoke["answers"]] == [
        "create_task",
        "list_tasks",
        "complete_task",
    ]
    assert openai_server.api_key not in log.read_text()
    ended = (tmp_path / "termination-log").read_text()
    assert ended == f"succeeded: fine-tuned model {job['fine_tuned_model']}"


# ---------------------------------------------------------------- main(): failures a user can cause


def test_bad_key_fails_permanently_naming_the_secret_not_the_key(
    openai_server, status_api, tmp_path, monkeypatch, capsys, caplog
):
    contract = write_contract(tmp_path, openai_server)
    wrong_key = "sk-wrong-0123456789abcdef"

    assert run_main(monkeypatch, tmp_path, contract, wrong_key, status_api) == EXIT_INVALID

    reason = (tmp_path / "termination-log").read_text()
    assert "the API key in Secret openai-api-key (key OPENAI_API_KEY) was rejected (401)" in reason
    assert openai_server.files_uploaded == openai_server.jobs_created == 0
    seen = (
        reason
        + capsys.readouterr().out
        + capsys.readouterr().err
        + caplog.text
        + json.dumps(status_api.patches)
    )
    assert wrong_key not in seen


def test_invalid_data_fails_before_any_request(openai_server, status_api, tmp_path, monkeypatch):
    train = write_dataset(tmp_path / "bad.jsonl", task_api_examples(12), extra_lines=['{"messages": "oops"}'])
    contract = write_contract(tmp_path, openai_server)
    raw = json.loads(contract.read_text())
    raw["spec"]["dataset"]["train"] = str(train)
    contract.write_text(json.dumps(raw))

    assert run_main(monkeypatch, tmp_path, contract, openai_server.api_key, status_api) == EXIT_INVALID

    reason = (tmp_path / "termination-log").read_text()
    assert reason.startswith(f"invalid: invalid data in spec.dataset.train {train}: line 13: ")
    assert "nothing was uploaded" in reason
    assert openai_server.requests == []  # not even a lookup: the key is never used on bad data


def test_missing_key_names_the_secret(openai_server, status_api, tmp_path, monkeypatch):
    contract = write_contract(tmp_path, openai_server)
    assert run_main(monkeypatch, tmp_path, contract, "", status_api) == EXIT_INVALID
    assert "Secret openai-api-key (key OPENAI_API_KEY)" in (tmp_path / "termination-log").read_text()
    assert openai_server.requests == []


def test_a_dataset_that_is_not_there_fails_at_once_without_any_request(
    openai_server, status_api, tmp_path, monkeypatch
):
    contract = write_contract(tmp_path, openai_server)
    raw = json.loads(contract.read_text())
    raw["spec"]["dataset"]["train"] = str(tmp_path / "missing.jsonl")
    contract.write_text(json.dumps(raw))

    assert run_main(monkeypatch, tmp_path, contract, openai_server.api_key, status_api) == EXIT_INVALID
    assert (
        (tmp_path / "termination-log")
        .read_text()
        .startswith(f"invalid: spec.dataset.train {tmp_path}/missing.jsonl")
    )
    assert openai_server.requests == []


def test_remote_failure_exits_permanently_with_the_remote_error(
    openai_server, status_api, tmp_path, monkeypatch
):
    openai_server.lifecycle = Lifecycle(outcome="failed", validating_polls=1, queued_polls=0, running_polls=1)
    contract = write_contract(tmp_path, openai_server)

    assert run_main(monkeypatch, tmp_path, contract, openai_server.api_key, status_api) == EXIT_INVALID

    job = openai_server.job()
    assert (tmp_path / "termination-log").read_text() == (
        f"invalid: remote fine-tuning job {job['id']} failed: invalid_training_file "
        "(parameter training_file): The job failed due to an invalid training file. "
        "Line 3: missing 'messages'."
    )
    assert status_api.status(NAMESPACE, NAME)["openai"] == {
        "jobId": job["id"],
        "status": "failed",
        "shutdownDate": openai_server.models[MODEL]["shutdown_date"],
    }


# ---------------------------------------------------------------- OpenAI's shutdown


def test_a_near_shutdown_warns_with_an_event_and_the_run_goes_on(
    openai_server, status_api, tmp_path, monkeypatch
):
    openai_server.lifecycle = QUICK
    shutdown = today() + timedelta(days=30)
    openai_server.set_shutdown(MODEL, shutdown)
    contract = write_contract(tmp_path, openai_server)

    assert run_main(monkeypatch, tmp_path, contract, openai_server.api_key, status_api) == EXIT_OK

    [event] = status_api.events
    assert (event["reason"], event["type"]) == ("ModelShutdownNear", "Warning")
    assert event["involvedObject"]["name"] == NAME
    assert event["message"] == (
        f"spec.openai.model {MODEL} shuts down on {shutdown.isoformat()}, in 30 days: the model this run "
        "makes stops answering then; to keep it, train the same data on your own GPUs instead: the same "
        "ToolTuneJob with backend: unsloth, baseModel: unsloth/Qwen2.5-7B-Instruct-bnb-4bit and no openai "
        "block (see docs/migrating-from-openai.md)"
    )
    assert status_api.status(NAMESPACE, NAME)["openai"]["shutdownDate"] == shutdown.isoformat()
    assert openai_server.jobs_created == 1


@pytest.mark.parametrize("shutdown", [None, today() + timedelta(days=submitter.SHUTDOWN_WARNING_DAYS + 1)])
def test_no_announced_or_a_distant_shutdown_raises_no_event(openai_server, tmp_path, shutdown):
    openai_server.lifecycle = QUICK
    openai_server.set_shutdown(MODEL, shutdown)
    events = RecordingEvents()
    run, reporter, _, _ = in_process(tmp_path, openai_server, events=events)

    run.run()

    assert events.recorded == []
    assert reporter.final()["openai"].get("shutdownDate") == (shutdown.isoformat() if shutdown else None)


@pytest.mark.parametrize("days_ago", [0, 1])
def test_a_model_past_its_shutdown_stops_the_run_before_any_upload(openai_server, tmp_path, days_ago):
    openai_server.set_shutdown(MODEL, today() - timedelta(days=days_ago))
    run, _, _, _ = in_process(tmp_path, openai_server)

    with pytest.raises(SubmitError) as failure:
        run.run()

    assert failure.value.exit_code == EXIT_INVALID
    assert str(failure.value).startswith(
        f"spec.openai.model {MODEL} shut down on {(today() - timedelta(days=days_ago)).isoformat()}"
    )
    assert "backend: unsloth, baseModel: unsloth/Qwen2.5-7B-Instruct-bnb-4bit" in str(failure.value)
    assert openai_server.files_uploaded == openai_server.jobs_created == 0


def test_a_service_refusing_new_jobs_ends_the_pod_with_exit_2_and_the_way_out(
    openai_server, status_api, tmp_path, monkeypatch
):
    openai_server.refuse_jobs = True
    contract = write_contract(tmp_path, openai_server, model="gpt-4.1-2025-04-14")

    assert run_main(monkeypatch, tmp_path, contract, openai_server.api_key, status_api) == EXIT_INVALID

    reason = (tmp_path / "termination-log").read_text()
    assert reason == (
        "invalid: the fine-tuning service refused to create a job (403): "
        f"{REFUSAL_MESSAGE}; OpenAI is winding down self-serve fine-tuning and takes no new jobs from "
        "2027-01-06 (earlier for organisations without "
        "recent fine-tuned-model use); train the same data on your own GPUs instead: the same ToolTuneJob "
        "with backend: unsloth, baseModel: unsloth/Qwen2.5-32B-Instruct-bnb-4bit and no openai block "
        "(see docs/migrating-from-openai.md)"
    )
    assert openai_server.answered(403) == 1  # refused once: no retry can change it
    assert openai_server.jobs_created == 0


def test_a_model_the_service_does_not_fine_tune_is_named_with_the_way_out(openai_server, tmp_path):
    run, _, _, _ = in_process(tmp_path, openai_server, model="gpt-5-nano")

    with pytest.raises(SubmitError) as failure:
        run.run()

    assert failure.value.exit_code == EXIT_INVALID
    assert str(failure.value) == (
        "spec.openai.model gpt-5-nano cannot be fine-tuned there (400): Model gpt-5-nano is not available "
        "for fine-tuning or does not exist.; pick a model the service fine-tunes, or train the same data "
        "on your own GPUs instead: the same ToolTuneJob with backend: unsloth, baseModel: "
        "unsloth/Qwen2.5-7B-Instruct-bnb-4bit and no openai block (see docs/migrating-from-openai.md)"
    )
    assert openai_server.answered(404) == 1  # the models endpoint did not know it either


def test_a_compatible_service_without_a_models_endpoint_still_trains(openai_server, tmp_path):
    """spec.openai.baseUrl may name any service that speaks the fine-tuning API, models endpoint or not."""
    openai_server.lifecycle = QUICK
    openai_server.serves_models = False
    events = RecordingEvents()
    run, reporter, _, _ = in_process(tmp_path, openai_server, events=events, model="llama-3.1-8b-instruct")

    model = run.run()

    assert model.startswith("ft:llama-3.1-8b-instruct:")
    assert openai_server.requested("GET", "/v1/models/llama-3.1-8b-instruct") == 1
    assert events.recorded == []
    cost = reporter.final()["cost"]
    assert "estimatedUsd" not in cost and "billedUsd" not in cost  # no price for it in the table
    assert cost["billedTokens"] == QUICK.trained_tokens


# ---------------------------------------------------------------- the run in-process (no sleeping)


def test_success_reports_progress_checkpoints_and_smoke_answers(openai_server, tmp_path):
    openai_server.lifecycle = QUICK
    run, reporter, metrics, sleeps = in_process(tmp_path, openai_server, learningRateMultiplier=1.5)

    model = run.run()

    job = openai_server.job()
    assert (
        model
        == job["fine_tuned_model"]
        == "ft:gpt-4o-mini-2024-07-18:tooltune-test:task-api-tools:" + job["id"][-6:]
    )
    assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 1.5}
    assert job["seed"] == 42
    train = openai_server.file_contents[job["training_file"]].decode().splitlines()
    validation = openai_server.file_contents[job["validation_file"]].decode().splitlines()
    assert (len(train), len(validation)) == (27, 3)  # the lab's 90/10 split of 30 examples

    status = reporter.final()
    assert status["openai"]["status"] == "succeeded" and status["openai"]["trainedTokens"] == 48_210
    assert status["progress"] == {
        "step": 100,
        "totalSteps": 100,
        "percent": 100.0,
        "trainLoss": pytest.approx(2.0 * 0.93**20 + 0.05, abs=1e-4),
        "evalLoss": pytest.approx(2.0 * 0.93**20 + 0.08, abs=1e-4),
        "updatedAt": status["progress"]["updatedAt"],
    }
    assert status["checkpoints"] == {"latestStep": 100, "latestUri": f"{model}:ckpt-step-100", "count": 4}
    assert status["diagnosis"]["pattern"] == "Converging"
    assert status["evaluation"] == {
        "examples": 3,
        "noCallRate": 0.0,
        "validJsonRate": 1.0,
        "reportUri": str(tmp_path / "models" / NAME / "final" / "smoke.json"),
    }
    progress_updates = [b["status"]["progress"]["step"] for b in reporter.bodies if "progress" in b["status"]]
    assert progress_updates[:4] == [25, 50, 75, 100]  # one per poll while running

    labels = {"namespace": NAMESPACE, "name": NAME, "backend": "openai", "attempt": "1"}
    assert metrics.registry.get_sample_value("tooltune_train_step", labels) == 100
    assert metrics.registry.get_sample_value("tooltune_eval_loss", labels) == pytest.approx(
        status["progress"]["evalLoss"]
    )

    assert sleeps and set(sleeps) == {1.0}  # spec.openai.pollSeconds between polls, no backoff needed
    assert len(openai_server.chat_requests) == 3
    for request in openai_server.chat_requests:
        assert request["model"] == model
        assert (request["tool_choice"], request["temperature"]) == ("auto", 0)
        assert [t["function"]["name"] for t in request["tools"]] == [
            "create_task",
            "list_tasks",
            "complete_task",
        ]
        assert request["messages"][0]["role"] == "system"


def test_rate_limit_and_server_error_bursts_are_ridden_out(openai_server, tmp_path):
    openai_server.lifecycle = QUICK
    openai_server.fail_next(3, status=429, retry_after=0.05)  # the lookup, then the first upload
    run, reporter, _, _ = in_process(tmp_path, openai_server)

    run.run()

    assert openai_server.answered(429) == 3
    assert openai_server.jobs_created == 1 and openai_server.files_uploaded == 2
    assert reporter.final()["openai"]["status"] == "succeeded"


def test_polls_back_off_while_the_api_is_down_then_continue(openai_server, tmp_path):
    openai_server.lifecycle = QUICK
    run, reporter, _, sleeps = in_process(tmp_path, openai_server, max_retries=0)
    job = run.create_job(*run.prepare_data())
    openai_server.fail_next(3, status=503)

    run.wait(job)

    assert sleeps[:3] == [2.0, 4.0, 8.0]  # pollSeconds doubled per failed poll
    assert reporter.final()["openai"]["status"] == "succeeded"


def test_a_persistently_failing_api_ends_the_pod_retryably(openai_server, tmp_path):
    openai_server.lifecycle = QUICK
    run, _, _, sleeps = in_process(tmp_path, openai_server, max_retries=0)
    job = run.create_job(*run.prepare_data())
    openai_server.fail_next(100, status=500)

    with pytest.raises(SubmitError) as failure:
        run.wait(job)

    assert failure.value.exit_code == EXIT_RETRYABLE
    assert "polls in a row failed" in str(failure.value)
    assert len(sleeps) == submitter.MAX_POLL_FAILURES - 1


def test_remote_cancel_ends_the_run_with_status_cancelled(openai_server, tmp_path):
    openai_server.lifecycle = Lifecycle(
        outcome="cancelled", validating_polls=1, queued_polls=1, running_polls=1
    )
    run, reporter, _, _ = in_process(tmp_path, openai_server)

    with pytest.raises(SubmitError, match=r"remote fine-tuning job ftjob-\d+ was cancelled") as failure:
        run.run()

    assert failure.value.exit_code == EXIT_INVALID
    assert reporter.final()["openai"]["status"] == "cancelled"  # the operator shows phase Cancelled


def test_a_cancelled_job_of_this_attempt_is_not_resumed(openai_server, tmp_path):
    """After a suspend cancelled the remote job, resuming starts a new one instead of reporting it."""
    openai_server.lifecycle = Lifecycle(outcome="running")
    first, _, _, _ = in_process(tmp_path, openai_server)
    cancelled = first.create_job(*first.prepare_data())
    assert cancel_remote_job(openai_server.api_key, openai_server.base_url, cancelled.id) == "cancelled"
    openai_server.lifecycle = QUICK
    second, _, _, _ = in_process(tmp_path, openai_server)

    second.run()

    assert openai_server.jobs_created == 2
    assert openai_server.job(cancelled.id)["status"] == "cancelled"


def test_a_service_ignoring_the_metadata_filter_does_not_confuse_the_lookup(openai_server, tmp_path):
    """Jobs of other resources come back unfiltered; only this attempt's job counts as already created."""
    openai_server.filters_metadata = False
    first, _, _, _ = in_process(tmp_path, openai_server)
    ours = first.create_job(*first.prepare_data())
    foreign = running_job(openai_server)  # newer: listed first
    second, _, _, _ = in_process(tmp_path, openai_server)

    assert second.find_job().id == ours.id != foreign
    assert openai_server.jobs_created == 2


# ---------------------------------------------------------------- the remote cancel pod


def running_job(server: FakeOpenAI) -> str:
    server.lifecycle = Lifecycle(outcome="running")
    client = OpenAI(api_key=server.api_key, base_url=server.base_url)
    training = client.files.create(file=("train.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    return client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=training.id).id


def test_cancel_stops_a_running_job_once(openai_server):
    job_id = running_job(openai_server)

    assert cancel_remote_job(openai_server.api_key, openai_server.base_url, job_id) == "cancelled"
    assert cancel_remote_job(openai_server.api_key, openai_server.base_url, job_id) == "cancelled"

    assert openai_server.job(job_id)["status"] == "cancelled"
    assert openai_server.cancel_requests == 1  # the second call saw a terminal job and did nothing


def test_cancel_of_a_job_the_provider_forgot_is_done(openai_server):
    assert cancel_remote_job(openai_server.api_key, openai_server.base_url, "ftjob-gone") == REMOTE_GONE


def test_cancel_rides_out_a_rate_limit_burst(openai_server):
    job_id = running_job(openai_server)
    openai_server.fail_next(2, status=429)
    assert cancel_remote_job(openai_server.api_key, openai_server.base_url, job_id) == "cancelled"


def test_cancel_with_a_rejected_key_fails_for_good_naming_the_secret(openai_server):
    job_id = running_job(openai_server)
    with pytest.raises(CancelError) as failure:
        cancel_remote_job("sk-revoked-key", openai_server.base_url, job_id, secret_ref=SECRET)
    assert not failure.value.retryable
    assert "Secret openai-api-key (key OPENAI_API_KEY) was rejected (401)" in str(failure.value)
    assert job_id in str(failure.value) and "sk-revoked-key" not in str(failure.value)


def test_cancel_while_the_api_is_down_is_retried_later(openai_server):
    job_id = running_job(openai_server)
    openai_server.fail_next(10, status=502)
    with pytest.raises(CancelError) as failure:
        cancel_remote_job(openai_server.api_key, openai_server.base_url, job_id)
    assert failure.value.retryable
    assert openai_server.cancel_requests == 0
    assert openai_server.job(job_id)["status"] != "cancelled"


def test_the_cancel_pod_posts_its_outcome_and_exits_as_the_job_reads_it(openai_server, monkeypatch, tmp_path):
    job_id = running_job(openai_server)
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("TOOLTUNE_TERMINATION_LOG", str(termination))
    job = JobRef(namespace=NAMESPACE, name=NAME, uid="u-1")
    events: list[tuple[str, str, str]] = []

    def cancel() -> int:
        post = lambda *event: events.append(event)  # noqa: E731
        return remote_cancel.main(job_id, job, "deleted", openai_server.base_url, SECRET, post=post)

    monkeypatch.setenv("OPENAI_API_KEY", "sk-revoked-key")
    code = remote_cancel.main(
        job_id, job, "deleted", openai_server.base_url, SECRET, post=lambda *e: events.append(e)
    )
    assert code == EXIT_INVALID and events[-1][:2] == ("Warning", "RemoteCancelFailed")
    assert "sk-revoked-key" not in events[-1][2] + termination.read_text()

    monkeypatch.setenv("OPENAI_API_KEY", openai_server.api_key)
    code = remote_cancel.main(
        job_id, job, "deleted", openai_server.base_url, SECRET, post=lambda *e: events.append(e)
    )
    assert code == EXIT_OK
    assert events[-1] == ("Normal", "RemoteJobCancelled", f"OpenAI job {job_id} cancelled (deleted)")
    assert termination.read_text() == f"succeeded: OpenAI job {job_id} cancelled (deleted)"
