"""References scored against the local server that speaks OpenAI's chat completions wire format
(tests/fakes/openai_api.py): the same turns, the dataset's tools, tool calls read from
`message.tool_calls[].function.arguments`, and every error named per reference."""

from __future__ import annotations

import json

import pytest
from tooltune_api.models import Reference
from tooltune_trainer.evaluate import evaluation_turns
from tooltune_trainer.references import ReferenceFailed, api_key, evaluate_reference

from tests.fakes.openai_api import TEST_API_KEY
from tests.fixtures.tiny import SYSTEM, TOOLS, call_message

FT_MODEL = "ft:gpt-4o-mini-2024-07-18:acme:task-api:abc123"


def example(prompt: str, answer: dict) -> dict:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}, answer]
    return {"messages": messages, "tools": TOOLS}


EXAMPLES = [
    example("Create a task to pay the rent by 2026-12-01",
            call_message("create_task", {"title": "Pay the rent", "due_date": "2026-12-01"}) | {"weight": 1}),
    example("What is due before 2026-12-07?", call_message("list_tasks", {"due_before": "2026-12-07"})),
    example("Mark task_3 as complete", call_message("complete_task", {"task_id": "task_3"})),
    example("Hello, what can you do?", {"role": "assistant", "content": "I manage your tasks."}),
]  # fmt: skip
TURNS = evaluation_turns(EXAMPLES)
SCRIPT = {
    "Create a task to pay the rent by 2026-12-01": [
        ("create_task", {"title": "Pay the rent"})
    ],  # due_date missing
    "What is due before 2026-12-07?": [("list_tasks", {"due_before": "2026-12-07"})],  # right
    "Mark task_3 as complete": [("complete_task", '{"task_id": "task_3"')],  # arguments that do not parse
    "Hello, what can you do?": "I can create, list and complete tasks.",  # text, as expected
}


def reference(server, **fields) -> Reference:
    return Reference.model_validate(
        {"name": "gpt", "model": FT_MODEL, "baseUrl": server.base_url, "apiKeySecret": {"name": "openai"}}
        | fields
    )


@pytest.fixture
def server(openai_server):
    openai_server.chat_models.add(FT_MODEL)
    openai_server.chat_script.update(SCRIPT)
    return openai_server


def test_a_reference_is_scored_on_the_same_turns_with_the_datasets_tools(server):
    report, parsed, texts = evaluate_reference(reference(server), TEST_API_KEY, TURNS, EXAMPLES)
    assert report["metrics"] == {
        "examples": 4,
        "expectedCalls": 3,
        "toolNameAccuracy": 0.6667,  # create_task and list_tasks of 3 (complete_task's call does not parse)
        "argumentsExactMatch": 0.3333,  # list_tasks
        "validJsonRate": 0.6667,  # 2 of the 3 calls attempted
        "noCallRate": 0.0,
        "falseCallRate": 0.0,
    }
    assert report["breakdown"]["perArgument"]["create_task.due_date"]["missing"] == 1
    assert [len(answer.calls) for answer in parsed] == [1, 1, 0, 0]
    assert texts[0] == 'create_task({"title": "Pay the rent"})' and texts[3].startswith("I can create")
    first = server.chat_requests[0]
    assert first["model"] == FT_MODEL and first["temperature"] == 0 and first["tools"] == TOOLS
    assert [m["role"] for m in first["messages"]] == ["system", "user"]  # the turn before the answer


def test_conversation_turns_go_out_without_fine_tuning_only_keys(server):
    earlier = call_message("list_tasks", {}) | {"weight": 0}
    conversation = {"messages": [{"role": "user", "content": "Anything due?"}, earlier,
                                 {"role": "tool", "tool_call_id": "call_1", "content": "[]"},
                                 {"role": "user", "content": "Hello, what can you do?"},
                                 {"role": "assistant", "content": "Tasks."}], "tools": []}  # fmt: skip
    turns = evaluation_turns([conversation])
    turns[0].messages.extend([earlier, {"role": "user", "content": "Hello, what can you do?"}])
    evaluate_reference(reference(server), TEST_API_KEY, turns, [conversation])
    sent = server.chat_requests[-1]
    assert "tools" not in sent  # the API refuses an empty tools array
    assert all("weight" not in message for message in sent["messages"])
    assert json.loads(sent["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {}


@pytest.mark.parametrize(
    ("fields", "key", "words"),
    [
        ({}, "sk-wrong", "rejected the API key in Secret openai (key OPENAI_API_KEY) (401)"),
        ({}, None, "wants an API key (401) and Secret openai (key OPENAI_API_KEY) gave none"),
        ({"apiKeySecret": None}, None, "wants an API key (401): set apiKeySecret"),
        ({"model": "ft:gpt-4o-mini-2024-07-18:acme::gone"}, TEST_API_KEY,
         "answered 404: The model `ft:gpt-4o-mini-2024-07-18:acme::gone` does not exist or you do not have "
         "access to it.; check model and baseUrl"),
    ],
    ids=["wrong-key", "empty-secret", "no-secret", "unknown-model"],
)  # fmt: skip
def test_errors_name_the_reference_setting_to_fix(server, fields, key, words):
    with pytest.raises(ReferenceFailed) as failed:
        evaluate_reference(reference(server, **fields), key, TURNS, EXAMPLES)
    assert words in str(failed.value)
    assert "sk-wrong" not in str(failed.value)  # a 401 body may echo the key: never quoted
    assert server.requested("POST", "/v1/chat/completions") == 1  # the first error ends it, not one per turn


def test_a_reference_that_does_not_answer_in_time_is_named_with_its_timeout(server):
    server.chat_delay = 1.5
    with pytest.raises(ReferenceFailed, match=r"did not answer within 1 s \(3 tries\): raise timeoutSeconds"):
        evaluate_reference(reference(server, timeoutSeconds=1), TEST_API_KEY, TURNS[:1], EXAMPLES)


def test_an_unreachable_reference_is_named_by_its_url():
    unreachable = Reference(name="vllm", model="qwen", base_url="http://127.0.0.1:9/v1", timeout_seconds=2)
    with pytest.raises(ReferenceFailed, match=r"cannot connect to http://127\.0\.0\.1:9/v1"):
        evaluate_reference(unreachable, None, TURNS[:1], EXAMPLES)


def test_the_key_comes_from_the_pods_variable_or_locally_from_the_secrets_key_name():
    ref = Reference.model_validate(
        {"name": "gpt", "model": "m", "baseUrl": "https://api.openai.com/v1", "apiKeySecret": {"name": "s"}}
    )
    assert api_key(1, ref, {"TOOLTUNE_REFERENCE_1_API_KEY": "pod", "OPENAI_API_KEY": "local"}) == "pod"
    assert api_key(1, ref, {"OPENAI_API_KEY": "local"}) == "local"
    assert api_key(1, ref, {}) is None
    assert api_key(1, ref.model_copy(update={"api_key_secret": None}), {"OPENAI_API_KEY": "x"}) is None
