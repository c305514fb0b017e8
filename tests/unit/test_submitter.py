"""The OpenAI submitter's pure parts: status mapping, metrics events, hyperparameters, error messages."""

from __future__ import annotations

import json
from datetime import date
from types import SimpleNamespace

import httpx2
import openai
import pytest
from tooltune_api import EXIT_INVALID
from tooltune_api.models import Phase, PriceTable, SecretKeyRef, TrainerContract
from tooltune_api.pricing import OPENAI_TRAINING_PRICES, openai_training_price
from tooltune_trainer import submitter
from tooltune_trainer.submitter import (
    EXIT_RETRYABLE,
    ProgressSample,
    billed_cost,
    create_params,
    explain_api_error,
    explain_create_refusal,
    hyperparameters,
    latest_progress,
    openai_example_tokens,
    progress_from_event,
    remote_failure,
    remote_phase,
    replacement_base_model,
    shutdown_date,
    shutdown_notice,
    smoke_summary,
    smoke_tools,
    system_prompt,
    training_cost,
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


# ---------------------------------------------------------------- OpenAI's shutdown


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (date(2026, 10, 15), None),  # 91 days ahead: nothing to say yet
        (date(2026, 10, 16), (False, "in 90 days")),
        (date(2026, 12, 1), (False, "in 44 days")),
        (date(2027, 1, 13), (False, "in 1 days")),
        (date(2027, 1, 14), (True, "shut down on 2027-01-14")),
        (date(2027, 3, 1), (True, "shut down on 2027-01-14")),
    ],
)
def test_shutdown_notice_warns_within_90_days_and_refuses_from_the_day(today, expected):
    notice = shutdown_notice("gpt-4o-mini-2024-07-18", date(2027, 1, 14), today)
    if expected is None:
        assert notice is None
        return
    past, message = notice
    assert past is expected[0]
    assert expected[1] in message
    assert "backend: unsloth, baseModel: unsloth/Qwen2.5-7B-Instruct-bnb-4bit" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("2027-01-14", date(2027, 1, 14)), (None, None), ("", None), ("next spring", None)],
)
def test_shutdown_date_is_read_from_the_model_object(raw, expected):
    assert shutdown_date(SimpleNamespace(id="gpt-4o", shutdown_date=raw)) == expected


@pytest.mark.parametrize(
    ("model", "replacement"),
    [
        ("gpt-4o-mini-2024-07-18", "unsloth/Qwen2.5-7B-Instruct-bnb-4bit"),
        ("gpt-4.1-mini-2025-04-14", "unsloth/Qwen2.5-7B-Instruct-bnb-4bit"),
        ("gpt-4.1-nano-2025-04-14", "unsloth/Qwen2.5-7B-Instruct-bnb-4bit"),
        ("gpt-4o-2024-08-06", "unsloth/Qwen2.5-32B-Instruct-bnb-4bit"),
        ("gpt-4.1-2025-04-14", "unsloth/Qwen2.5-32B-Instruct-bnb-4bit"),
        ("ft:gpt-4o-2024-08-06:acme::abc123", "unsloth/Qwen2.5-32B-Instruct-bnb-4bit"),
        ("someone-elses-model", "unsloth/Qwen2.5-7B-Instruct-bnb-4bit"),
    ],
)
def test_each_openai_model_has_an_open_weight_replacement(model, replacement):
    assert replacement_base_model(model) == replacement


def test_a_403_on_create_is_the_wind_down_with_the_way_out():
    error = _status_error(openai.PermissionDeniedError, 403, {"message": "Not allowed.", "param": None})
    refusal = explain_create_refusal(error, "gpt-4o-2024-08-06")
    assert refusal is not None and refusal.exit_code == EXIT_INVALID
    assert str(refusal).startswith("the fine-tuning service refused to create a job (403): Not allowed.;")
    assert "no new jobs from 2027-01-06" in str(refusal)
    assert "baseModel: unsloth/Qwen2.5-32B-Instruct-bnb-4bit" in str(refusal)


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (_status_error(openai.NotFoundError, 404, {"message": "gone", "code": "model_not_found"}), True),
        (_status_error(openai.BadRequestError, 400, {"message": "no", "param": "model"}), True),
        (
            _status_error(openai.BadRequestError, 400, {"message": "bad file", "param": "training_file"}),
            False,
        ),
        (_status_error(openai.RateLimitError, 429, {"message": "slow down"}), False),
        (openai.APIConnectionError(request=httpx2.Request("POST", "http://127.0.0.1:1/v1")), False),
    ],
)
def test_only_refusals_about_the_model_or_access_get_the_way_out(error, refused):
    assert (explain_create_refusal(error, "gpt-4o-mini") is not None) is refused


# ---------------------------------------------------------------- cost before you pay

TOOL = {"type": "function", "function": {"name": "f"}}
EXAMPLE = {
    "messages": [
        {"role": "user", "content": "Create a task"},  # 4 + 13 characters
        {  # 9 + 11 + 13 characters
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c",
                    "type": "function",
                    "function": {"name": "create_task", "arguments": '{"title":"x"}'},
                }
            ],
        },
    ],
    "tools": [TOOL],
}


def test_openai_token_estimate_counts_characters_per_four_plus_each_message():
    assert len(json.dumps([TOOL], separators=(",", ":"))) == 45
    # (17 + 33 + 45) / 4 rounds up to 24 tokens of text, plus 4 for each of the 2 messages
    assert openai_example_tokens(EXAMPLE) == 24 + 8
    assert openai_example_tokens({"messages": [{"role": "user", "content": "abcde"}]}) == 3 + 4  # ceil(9 / 4)


def test_training_cost_prices_the_epochs_from_the_contract_table():
    cost = training_cost([EXAMPLE] * 10, 3, "gpt-4o-mini-2024-07-18", PriceTable())
    assert cost == {
        "trainingTokens": 960,
        "tokenCount": submitter.OPENAI_TOKEN_COUNT,
        "pricePerMillionTokens": 3.0,
        "priceSource": PriceTable().source,
        "estimatedUsd": 0.0029,
    }
    ours = PriceTable(
        openai_training_per_million_tokens={"gpt-4o-mini": 1000.0}, source="our contract, 2026-11"
    )
    cost = training_cost([EXAMPLE] * 10, 3, "gpt-4o-mini-2024-07-18", ours)
    assert (cost["estimatedUsd"], cost["priceSource"]) == (0.96, "our contract, 2026-11")
    assert "estimatedUsd" not in training_cost([EXAMPLE], 1, "llama-3.1-8b", PriceTable())


def test_billed_cost_prices_the_trained_tokens():
    assert billed_cost(48_210, "gpt-4.1-mini-2025-04-14", PriceTable()) == {
        "billedTokens": 48_210,
        "billedUsd": 0.241,
    }
    assert billed_cost(None, "gpt-4.1-mini-2025-04-14", PriceTable()) == {}


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("gpt-4o-mini-2024-07-18", 3.0),
        ("gpt-4o-2024-08-06", 25.0),
        ("gpt-4.1-nano-2025-04-14", 1.5),
        ("gpt-4.1-mini-2025-04-14", 5.0),
        ("gpt-4.1-2025-04-14", 25.0),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc", 3.0),
        ("llama-3.1-8b", None),
    ],
)
def test_the_longest_model_name_in_the_table_sets_the_price(model, price):
    assert openai_training_price(model, OPENAI_TRAINING_PRICES) == price
