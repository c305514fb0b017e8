"""Each wrong answer of the evaluation is classified: the kinds the lab's debugging starts from."""

from __future__ import annotations

from tooltune_trainer.answer_errors import classify, count_kinds, training_values
from tooltune_trainer.tool_formats import FORMATS, ToolCall

from tests.fixtures.tiny import call_message

SYSTEM = {"role": "system", "content": "You manage the user's tasks. Today is 2024-01-15."}


def _errors(user: str, expected: list[ToolCall], answer: str, seen: frozenset[str] = frozenset()) -> list:
    return classify(
        [SYSTEM, {"role": "user", "content": user}], expected, FORMATS["hermes"].parse(answer), set(seen)
    )


def _call(name: str, arguments: str) -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


CREATE = [ToolCall("create_task", {"title": "Review the quarterly report", "due_date": "2024-02-01"})]
PROMPT = "Create a task to review the quarterly report by 2024-02-01"


def test_a_right_answer_has_no_errors():
    answer = _call("create_task", '{"title": "Review the quarterly report", "due_date": "2024-02-01"}')
    assert _errors(PROMPT, CREATE, answer) == []
    assert _errors("Hi", [], "Hello!") == []


def test_no_call_false_call_and_invalid_json():
    assert _errors(PROMPT, CREATE, "Sure, done.") == [{"kind": "no_call"}]
    assert _errors("Hi", [], _call("list_tasks", "{}")) == [{"kind": "false_call"}]
    assert [
        e["kind"] for e in _errors(PROMPT, CREATE, '<tool_call>{"name": "create_task", </tool_call>')
    ] == [
        "invalid_json",
        "wrong_tool",  # the one call attempted did not parse, so no create_task was called
    ]


def test_wrong_tool_is_not_compared_argument_by_argument():
    errors = _errors(PROMPT, CREATE, _call("list_tasks", '{"due_before": "2024-02-01"}'))
    assert errors == [{"kind": "wrong_tool", "expected": ["create_task"], "got": ["list_tasks"]}]


def test_missing_and_extra_arguments():
    answer = _call("create_task", '{"title": "Review the quarterly report", "status": "open"}')
    kinds = [(e["kind"], e["argument"]) for e in _errors(PROMPT, CREATE, answer)]
    assert kinds == [("missing_argument", "due_date"), ("extra_argument", "status")]


def test_a_wrong_value_from_the_conversation_is_copied_one_from_elsewhere_invented():
    answer = _call("create_task", '{"title": "Draft the annual agenda", "due_date": "2024-01-15"}')
    errors = _errors(PROMPT, CREATE, answer, frozenset({"draft the annual agenda"}))
    assert errors == [
        {"kind": "invented_value", "tool": "create_task", "argument": "title",
         "expected": "Review the quarterly report", "got": "Draft the annual agenda", "seenInTraining": True},
        {"kind": "wrong_value_copied", "tool": "create_task", "argument": "due_date",
         "expected": "2024-02-01", "got": "2024-01-15"},  # today's date, from the system prompt
    ]  # fmt: skip


def test_ids_are_copied_when_their_words_are_in_the_prompt():
    expected = [ToolCall("complete_task", {"task_id": "budget_task"})]
    prompt = "Mark the budget task as complete, not the vet task"
    assert _errors(prompt, expected, _call("complete_task", '{"task_id": "vet_task"}'))[0]["kind"] == (
        "wrong_value_copied"
    )
    invented = _errors(
        "Mark the budget task as complete", expected, _call("complete_task", '{"task_id": "x"}')
    )
    assert invented[0]["kind"] == "invented_value" and invented[0]["seenInTraining"] is False


def test_training_values_and_counts():
    example = {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "x"},
            call_message("complete_task", {"task_id": "Rent_Task"}),
        ]
    }
    assert training_values([example]) == {"rent task"}
    counts = count_kinds(
        [[{"kind": "no_call"}], [{"kind": "invented_value"}, {"kind": "invented_value"}], []]
    )
    assert counts["no_call"] == 1 and counts["invented_value"] == 1 and counts["wrong_tool"] == 0
