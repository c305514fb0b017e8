"""Tool-call evaluation scores with known answers: hand-written turns and model answers, each score
counted by hand in the comments."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tooltune_trainer.evaluate import Turn, evaluation_turns, score
from tooltune_trainer.tool_formats import FORMATS, LLAMA3_JSON, ToolCall

from tests.fixtures.tiny import SYSTEM, TOOLS, call_message


def turn(*expected: ToolCall, text: str = "") -> Turn:
    return Turn([{"role": "user", "content": "…"}], TOOLS, list(expected), text)


def call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(name, arguments)


def block(name: str, arguments: Any) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


RENT = call("create_task", title="pay the rent")
RENT_DUE = call("create_task", title="pay the rent", due_date="2026-12-01")
LIST = call("list_tasks")
DONE = call("complete_task", task_id="task_3")
A = call("create_task", title="a")

# (turn, the model's answer), and what each contributes: name = tool names right, args = names and
# arguments exactly right, a/v = calls attempted/well-formed
CASES = [
    (turn(RENT), block("create_task", {"title": "pay the rent"})),  # name ✓ args ✓ 1/1
    (turn(RENT_DUE), block("create_task", {"title": "pay the rent"})),  # name ✓ args ✗ (due_date missing) 1/1
    (turn(LIST), block("complete_task", {"task_id": "3"})),  # name ✗ args ✗ 1/1
    (turn(DONE), "Sure, I marked it as done."),  # name ✗ args ✗, no call 0/0
    (
        turn(DONE),
        '<tool_call>{"name": "complete_task", "arguments": {"task_id": "task_3"</tool_call>',
    ),  # ✗ ✗ 1/0
    (turn(A, LIST), block("create_task", {"title": "a"}) + block("list_tasks", {})),  # name ✓ args ✓ 2/2
    (turn(A, LIST), block("list_tasks", {}) + block("create_task", {"title": "a"})),  # order differs: ✗ ✗ 2/2
    (turn(A), block("create_task", {"title": "a"}) + block("list_tasks", {})),  # an extra call: ✗ ✗ 2/2
    (turn(text="You have no tasks."), "You have no tasks."),  # expects text, answers text 0/0
    (turn(text="You have no tasks."), block("list_tasks", {})),  # expects text, calls: false call 1/1
    (turn(text="Hello!"), "<tool_call>not json</tool_call>"),  # expects text, tries a call: false call 1/0
]


def test_scores_of_a_mixed_set_of_turns_match_the_hand_count():
    turns, answers = zip(*CASES, strict=True)
    assert score(list(turns), list(answers)) == {
        "examples": 11,
        "expectedCalls": 8,  # the first eight turns expect calls
        "toolNameAccuracy": 0.375,  # turns 1, 2, 6 of 8
        "argumentsExactMatch": 0.25,  # turns 1, 6 of 8
        "validJsonRate": 0.8333,  # 10 well-formed of 12 attempted, over every answer
        "noCallRate": 0.125,  # turn 4 of 8
        "falseCallRate": 0.6667,  # turns 10, 11 of the 3 that expect text
    }


def test_arguments_match_as_json_values_not_as_text():
    expected = turn(call("create_task", title="call the bank", due_date="2026-12-01"))
    reordered = block("create_task", {"due_date": "2026-12-01", "title": "call the bank"})
    as_string = block("create_task", json.dumps({"title": "call the bank", "due_date": "2026-12-01"}))
    spaced = (
        '<tool_call>{ "name" : "create_task", '
        '"arguments" : {"title":"call the bank","due_date":"2026-12-01"} }</tool_call>'
    )
    scores = score([expected] * 3, [reordered, as_string, spaced])
    assert scores["argumentsExactMatch"] == 1.0 and scores["validJsonRate"] == 1.0


@pytest.mark.parametrize(
    ("expected", "answered"),
    [
        ({"done": True}, {"done": 1}),  # a tool's schema refuses 1 for a boolean
        ({"done": False}, {"done": 0}),
        ({"count": 1}, {"count": True}),
        ({"ids": [1, 2]}, {"ids": [True, 2]}),
        ({"filter": {"open": True}}, {"filter": {"open": 1}}),
    ],
)
def test_a_number_is_not_a_boolean_in_an_exact_match(expected, answered):
    scores = score([turn(call("list_tasks", **expected))], [block("list_tasks", answered)])
    assert scores["toolNameAccuracy"] == 1.0
    assert scores["argumentsExactMatch"] == 0.0


def test_numbers_compare_by_value():
    scores = score(
        [turn(call("list_tasks", count=1, ratio=0.5))], [block("list_tasks", {"count": 1.0, "ratio": 0.5})]
    )
    assert scores["argumentsExactMatch"] == 1.0


def test_a_call_whose_closing_tag_was_cut_off_counts_and_one_cut_inside_its_json_is_malformed():
    answers = [
        '<tool_call>{"name": "list_tasks", "arguments": {}}',  # max_new_tokens ran out before </tool_call>
        '<tool_call>{"name": "list_tasks", "argum',  # ran out inside the JSON
        '{"name": "list_tasks", "arguments": {}}',  # bare JSON is not how the hermes format calls: no call
    ]
    scores = score([turn(LIST)] * 3, answers)
    assert scores["toolNameAccuracy"] == 0.3333 and scores["argumentsExactMatch"] == 0.3333
    assert scores["validJsonRate"] == 0.5 and scores["noCallRate"] == 0.3333


def test_scores_read_answers_in_the_runs_format():
    """Llama 3.1's calls are bare JSON with "parameters", ended by <|eot_id|> (kept by generate_answers)."""
    llama = FORMATS[LLAMA3_JSON]
    answers = [
        '{"name": "list_tasks", "parameters": {}}<|eot_id|>',
        '{"name": "complete_task", "parameters": {"task_id": "task_3"}}<|eot_id|>',
        '{"name": "complete_task", "parameters": {"task_id": "task_3"',  # cut off
        "You have no tasks.<|eot_id|>",
    ]
    scores = score([turn(LIST), turn(DONE), turn(DONE), turn(text="You have no tasks.")], answers, llama)
    assert scores == {
        "examples": 4,
        "expectedCalls": 3,
        "toolNameAccuracy": 0.6667,
        "argumentsExactMatch": 0.6667,
        "validJsonRate": 0.6667,  # 2 of 3 attempted
        "noCallRate": 0.0,
        "falseCallRate": 0.0,
    }


@pytest.mark.parametrize(
    "attempt",
    [
        '<tool_call>{"arguments": {"task_id": "task_3"}}</tool_call>',  # JSON, but no tool name
        '<tool_call>{"name": "complete_task", "arguments": ["task_3"]}</tool_call>',  # not an object
        '<tool_call>{"name": "complete_task", "arguments": "task_3"}</tool_call>',  # not JSON
        "<tool_call>complete_task(task_id='task_3')</tool_call>",
    ],
)
def test_an_attempt_that_is_not_a_well_formed_call_counts_against_valid_json_not_as_no_call(attempt):
    scores = score([turn(DONE)], [attempt])
    assert scores == {
        "examples": 1,
        "expectedCalls": 1,
        "toolNameAccuracy": 0.0,
        "argumentsExactMatch": 0.0,
        "validJsonRate": 0.0,
        "noCallRate": 0.0,
        "falseCallRate": None,
    }


ONE_RIGHT_ONE_MALFORMED = (
    block("create_task", {"title": "a"}) + '<tool_call>{"name": "list_tasks", </tool_call>'
)


def test_one_malformed_call_beside_a_right_one_spoils_the_turn():
    scores = score([turn(A, LIST)], [ONE_RIGHT_ONE_MALFORMED])
    assert scores["toolNameAccuracy"] == 0.0 and scores["argumentsExactMatch"] == 0.0


def test_a_malformed_call_does_not_spoil_the_valid_json_of_the_one_beside_it():
    assert score([turn(A, LIST)], [ONE_RIGHT_ONE_MALFORMED])["validJsonRate"] == 0.5


def test_rates_without_a_denominator_are_none_not_zero():
    only_text = score([turn(text="Hi."), turn(text="Bye.")], ["Hi.", "Bye."])
    assert only_text == {
        "examples": 2,
        "expectedCalls": 0,
        "toolNameAccuracy": None,
        "argumentsExactMatch": None,
        "validJsonRate": None,  # nothing was attempted
        "noCallRate": None,
        "falseCallRate": 0.0,
    }
    assert score([], [])["examples"] == 0


def test_every_turn_needs_its_answer():
    with pytest.raises(ValueError):
        score([turn(LIST), turn(DONE)], [block("list_tasks", {})])


def test_evaluation_turns_take_each_examples_first_assistant_turn():
    examples = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Add a task to pay the rent"},
                call_message("create_task", {"title": "pay the rent"}),
                {"role": "tool", "tool_call_id": "call_1", "content": '{"id": "task_9"}'},
                {"role": "assistant", "content": "Created task_9."},
            ],
            "tools": TOOLS,
        },
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "user", "content": "no answer"}]},  # no assistant turn: not evaluated
    ]
    first, second = evaluation_turns(examples)
    assert [m["role"] for m in first.messages] == ["system", "user"]
    assert first.expected == [RENT] and first.expected_text == ""
    assert second.messages == [{"role": "user", "content": "Hi"}]
    assert second.expected == [] and second.expected_text == "Hello!" and second.tools == []
