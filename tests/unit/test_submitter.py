"""The OpenAI submitter's pure parts: status mapping, metrics events, hyperparameters, error messages."""

from __future__ import annotations

from types import SimpleNamespace

import httpx2
import openai
import pytest
from tooltune_api import EXIT_INVALID
from tooltune_api.models import Phase, SecretKeyRef, TrainerContract
from tooltune_trainer import submitter
from tooltune_trainer.submitter import (
    EXIT_RETRYABLE,
    ProgressSample,
    create_params,
    explain_api_error,
    hyperparameters,
    latest_progress,
    progress_from_event,
    remote_failure,
    remote_phase,
    smoke_summary,
    smoke_tools,
    system_prompt,
)

from tests.fakes.task_api import openai_contract, task_api_examples
from tests.fixtures.tiny import SYSTEM, TOOLS

SECRET = SecretKeyRef(name="openai-api-key", key="OPENAI_API_KEY")


def contract(tmp_path, **openai_settings) -> TrainerContract:
    return TrainerContract.model_validate(
        openai_contract(tmp_path, "http://127.0.0.1:1/v1", **openai_settings)
    )


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ("validating_files", Phase.VALIDATING),
        ("queued", Phase.PENDING),
        ("running", Phase.RUNNING),
        ("succeeded", Phase.SUCCEEDED),
        ("failed", Phase.FAILED),
        ("cancelled", Phase.CANCELLED),
    ],
)
def test_every_remote_status_maps_to_a_phase(status, phase):
    assert remote_phase(status) == phase


def test_metrics_event_becomes_progress_preferring_full_validation_loss():
    sample = progress_from_event(
        "metrics",
        {
            "step": 40,
            "total_steps": 160,
            "train_loss": 0.45,
            "valid_loss": 0.61,
            "full_valid_loss": 0.52,
            "train_mean_token_accuracy": 0.88,
            "valid_mean_token_accuracy": 0.8,
        },
    )
    assert sample == ProgressSample(
        step=40,
        total_steps=160,
        train_loss=0.45,
        eval_loss=0.52,
        train_token_accuracy=0.88,
        eval_token_accuracy=0.8,
    )
    assert sample.status() == {
        "step": 40,
        "totalSteps": 160,
        "percent": 25.0,
        "trainLoss": 0.45,
        "evalLoss": 0.52,
    }
    assert sample.metrics() == {"step": 40.0, "total_steps": 160.0, "train_loss": 0.45, "eval_loss": 0.52}


def test_partial_metrics_event_reports_only_what_it_has():
    sample = progress_from_event("metrics", {"step": 7, "train_loss": 1.2})
    assert sample is not None
    assert sample.status() == {"step": 7, "trainLoss": 1.2}  # no totalSteps: the operator keeps Validating
    assert sample.metrics() == {"step": 7.0, "train_loss": 1.2}


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("message", {"step": 3}),
        (None, {"step": 3}),
        ("metrics", {}),
        ("metrics", {"step": "three"}),
        ("metrics", {"step": True}),
        ("metrics", None),
        ("metrics", ["step", 3]),
    ],
)
def test_events_without_a_numeric_step_are_not_progress(kind, data):
    assert progress_from_event(kind, data) is None


def test_latest_progress_is_the_highest_step_whatever_the_order():
    events = [
        SimpleNamespace(type="metrics", data={"step": 20, "train_loss": 0.5}),
        SimpleNamespace(type="message", data={}),
        SimpleNamespace(type="metrics", data={"step": 30, "train_loss": 0.4}),
        SimpleNamespace(type="metrics", data={"step": 10, "train_loss": 0.9}),
    ]
    latest = latest_progress(events)
    assert latest is not None and (latest.step, latest.train_loss) == (30, 0.4)
    assert latest_progress([SimpleNamespace(type="message", data={})]) is None


def test_learning_rate_multiplier_is_auto_unless_set(tmp_path):
    spec = contract(tmp_path).spec
    assert hyperparameters(spec) == {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": "auto"}
    spec = contract(tmp_path, learningRateMultiplier=2.0).spec
    assert hyperparameters(spec)["learning_rate_multiplier"] == 2.0


def test_epochs_and_batch_size_come_from_the_spec(tmp_path):
    raw = openai_contract(tmp_path, "http://127.0.0.1:1/v1")
    raw["spec"]["hyperparameters"] = {"epochs": 5, "batchSize": 8}
    spec = TrainerContract.model_validate(raw).spec
    assert hyperparameters(spec) == {"n_epochs": 5, "batch_size": 8, "learning_rate_multiplier": "auto"}


def test_create_params_tie_the_job_to_the_resource_attempt(tmp_path):
    params = create_params(contract(tmp_path), "file-train", "file-valid")
    assert params["model"] == "gpt-4o-mini-2024-07-18"
    assert (params["training_file"], params["validation_file"]) == ("file-train", "file-valid")
    assert params["suffix"] == "task-api-tools"
    assert params["seed"] == 42
    assert params["method"] == {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": "auto"}
        },
    }
    assert params["metadata"] == {
        "tooltune-namespace": "tuning",
        "tooltune-name": "task-api-tools",
        "tooltune-uid": "5f1c-uid",
        "tooltune-attempt": "1",
    }


def test_no_suffix_is_sent_when_unset(tmp_path):
    raw = openai_contract(tmp_path, "http://127.0.0.1:1/v1")
    del raw["spec"]["openai"]["suffix"]
    assert "suffix" not in create_params(TrainerContract.model_validate(raw), "f1", "f2")


def _status_error(kind: type[openai.APIStatusError], code: int, body: dict | None) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1:1/v1/fine_tuning/jobs")
    response = httpx2.Response(code, request=request)
    return kind("refused", response=response, body=body)


def test_rejected_key_names_the_secret_and_never_quotes_the_answer():
    error = _status_error(
        openai.AuthenticationError,
        401,
        {"message": "Incorrect API key provided: sk-abc***wxyz", "param": None},
    )
    outcome = explain_api_error(error, SECRET, "creating the fine-tuning job")
    assert outcome.exit_code == EXIT_INVALID
    assert "Secret openai-api-key (key OPENAI_API_KEY) was rejected (401)" in str(outcome)
    assert "sk-" not in str(outcome)


def test_bad_request_names_the_parameter_and_cause():
    error = _status_error(
        openai.BadRequestError,
        400,
        {"message": "Model gpt-9 is not available for fine-tuning", "param": "model"},
    )
    outcome = explain_api_error(error, SECRET, "creating the fine-tuning job")
    assert outcome.exit_code == EXIT_INVALID
    assert str(outcome) == (
        "the fine-tuning API refused creating the fine-tuning job (400) (parameter model): "
        "Model gpt-9 is not available for fine-tuning"
    )


@pytest.mark.parametrize(
    "error",
    [
        _status_error(openai.InternalServerError, 503, None),
        _status_error(openai.RateLimitError, 429, {"message": "slow down"}),
        openai.APIConnectionError(request=httpx2.Request("GET", "http://127.0.0.1:1/v1")),
    ],
)
def test_server_errors_and_lost_connections_are_retryable(error):
    assert explain_api_error(error, SECRET, "reading the fine-tuning job").exit_code == EXIT_RETRYABLE


def test_remote_failure_names_code_parameter_and_message():
    job = SimpleNamespace(
        id="ftjob-1",
        status="failed",
        error=SimpleNamespace(code="invalid_training_file", param="training_file", message="Line 3 is bad."),
    )
    assert remote_failure(job) == (
        "remote fine-tuning job ftjob-1 failed: invalid_training_file (parameter training_file): "
        "Line 3 is bad."
    )
    assert remote_failure(SimpleNamespace(id="ftjob-2", status="cancelled", error=None)) == (
        "remote fine-tuning job ftjob-2 was cancelled"
    )


def test_smoke_test_offers_every_tool_once_with_the_training_system_prompt():
    examples = task_api_examples(9)
    assert [tool["function"]["name"] for tool in smoke_tools(examples)] == [
        t["function"]["name"] for t in TOOLS
    ]
    assert system_prompt(examples) == SYSTEM
    assert system_prompt([{"messages": [{"role": "user", "content": "hi"}]}]) is None


def test_smoke_summary_counts_prompts_without_calls_and_invalid_arguments():
    answers = [
        {"prompt": "a", "toolCalls": [{"name": "create_task", "arguments": "{}", "validJson": True}]},
        {"prompt": "b", "toolCalls": [{"name": "list_tasks", "arguments": "{oops", "validJson": False}]},
        {"prompt": "c", "toolCalls": [], "content": "Sure!"},
        {"prompt": "d", "error": "APITimeoutError"},
    ]
    assert smoke_summary(answers) == {"examples": 4, "noCallRate": round(1 / 3, 4), "validJsonRate": 0.5}


def test_smoke_answer_flags_arguments_that_are_not_json():
    call = SimpleNamespace(function=SimpleNamespace(name="create_task", arguments='{"title": '))
    answer = submitter.smoke_answer("p", SimpleNamespace(tool_calls=[call], content=None))
    assert answer["toolCalls"] == [{"name": "create_task", "arguments": '{"title": ', "validJson": False}]
