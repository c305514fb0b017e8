"""Where the misses are: per-tool and per-argument breakdowns, tool confusions and the agreement between two
models' answers, with known answers counted by hand in the comments."""

from __future__ import annotations

from typing import Any

from tooltune_trainer.evaluate import Turn, agreement, breakdown, same_calls, score_parsed
from tooltune_trainer.tool_formats import ParsedAnswer, ToolCall

from tests.fixtures.tiny import TOOLS


def call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(name, arguments)


def turn(*expected: ToolCall) -> Turn:
    return Turn([{"role": "user", "content": "…"}], TOOLS, list(expected), "" if expected else "Hi!")


def answer(*calls: ToolCall, malformed: int = 0) -> ParsedAnswer:
    return ParsedAnswer(list(calls), ["{oops"] * malformed)


RENT = call("create_task", title="Pay the rent", due_date="2026-12-01")
LIST = call("list_tasks", due_before="2026-12-07")
DONE = call("complete_task", task_id="task_3")

TURNS = [turn(RENT), turn(RENT), turn(RENT), turn(LIST), turn(LIST), turn(DONE), turn(DONE), turn()]
ANSWERS = [
    answer(RENT),  # right
    answer(call("create_task", title="Pay the rent", due_date="2026-12-02")),  # due_date wrong
    answer(call("create_task", title="Pay the rent", priority="high")),  # due_date missing, priority extra
    answer(call("complete_task", task_id="task_3")),  # asked for list_tasks, called complete_task
    answer(),  # list_tasks: no call
    answer(DONE),  # right
    answer(malformed=1),  # complete_task: an attempt that does not parse
    answer(LIST),  # text expected, list_tasks called
]


def test_breakdown_per_tool_per_argument_and_confusions_match_the_hand_count():
    assert breakdown(TURNS, ANSWERS) == {
        "perTool": {
            "complete_task": {"calls": 2, "rightTool": 1, "exactMatch": 1},  # turns 6 ✓, 7 malformed
            "create_task": {"calls": 3, "rightTool": 3, "exactMatch": 1},  # turns 1-3 name ✓, only 1 exact
            "list_tasks": {"calls": 2, "rightTool": 0, "exactMatch": 0},  # turns 4, 5
        },
        "perArgument": {  # over calls with the right tool only
            "complete_task.task_id": {"expected": 1, "right": 1, "missing": 0, "wrong": 0, "extra": 0},
            "create_task.due_date": {"expected": 3, "right": 1, "missing": 1, "wrong": 1, "extra": 0},
            "create_task.priority": {"expected": 0, "right": 0, "missing": 0, "wrong": 0, "extra": 1},
            "create_task.title": {"expected": 3, "right": 3, "missing": 0, "wrong": 0, "extra": 0},
        },
        "confusions": [  # by count, then names
            {"expected": "(none)", "called": "list_tasks", "count": 1},  # turn 8
            {"expected": "complete_task", "called": "(invalid)", "count": 1},  # turn 7
            {"expected": "list_tasks", "called": "(none)", "count": 1},  # turn 5
            {"expected": "list_tasks", "called": "complete_task", "count": 1},  # turn 4
        ],
    }
    assert score_parsed(TURNS, ANSWERS)["argumentsExactMatch"] == 0.2857  # turns 1, 6 of 7


def test_a_second_call_is_paired_with_the_second_expected_one():
    two = turn(call("create_task", title="a"), LIST)
    result = breakdown([two], [answer(call("create_task", title="a"), DONE)])
    assert result["perTool"]["list_tasks"] == {"calls": 1, "rightTool": 0, "exactMatch": 0}
    assert result["confusions"] == [{"expected": "list_tasks", "called": "complete_task", "count": 1}]


def test_argument_values_compare_as_json():
    flag = turn(call("create_task", title="a", urgent=True))
    result = breakdown(
        [flag, flag], [answer(call("create_task", title="a", urgent=1)), answer(flag.expected[0])]
    )
    assert result["perArgument"]["create_task.urgent"] == {
        "expected": 2, "right": 1, "missing": 0, "wrong": 1, "extra": 0,  # 1 is not true in JSON
    }  # fmt: skip


def test_agreement_counts_the_same_calls_and_no_call_on_both_sides():
    tuned = [answer(RENT), answer(), answer(LIST), answer(malformed=1), answer(DONE)]
    reference = [
        answer(call("create_task", due_date="2026-12-01", title="Pay the rent")),  # same call, keys reordered
        answer(),  # neither calls: agree
        answer(call("list_tasks", due_before="2026-12-08")),  # another value: differ
        answer(malformed=1),  # both malformed: not the same call
        answer(DONE, LIST),  # an extra call: differ
    ]
    assert [same_calls(a, b) for a, b in zip(tuned, reference, strict=True)] == [
        True,
        True,
        False,
        False,
        False,
    ]
    assert agreement(tuned, reference) == 0.4
    assert agreement([], []) is None
