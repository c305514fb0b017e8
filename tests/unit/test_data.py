"""Dataset validation and splitting: one hand-written example per bad case, plus the valid shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tooltune_trainer.data import (
    InvalidDataset,
    Problem,
    find_pii,
    read_jsonl,
    split_examples,
    validate_examples,
    write_jsonl,
)

TOOLS = [
    {"type": "function", "function": {"name": "create_task", "parameters": {
        "type": "object", "properties": {"title": {"type": "string"}, "due_date": {"type": "string"}},
        "required": ["title"]}}},
    {"type": "function", "function": {"name": "list_tasks", "parameters": {
        "type": "object", "properties": {"due_before": {"type": "string"},
                                         "status": {"type": "string", "enum": ["open", "done"]}}}}},
    {"type": "function", "function": {"name": "complete_task", "parameters": {
        "type": "object", "properties": {"task_id": {"type": "string"}}, "required": ["task_id"]}}},
]  # fmt: skip


def user(text: str = "Create a task to pay the rent") -> dict[str, Any]:
    return {"role": "user", "content": text}


def call(name: str = "create_task", arguments: Any = None, call_id: str = "call_1") -> dict[str, Any]:
    arguments = {"title": "Pay the rent"} if arguments is None else arguments
    encoded = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": encoded}}


def assistant(*calls: dict[str, Any], content: str | None = None, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, **extra}
    if calls:
        message["tool_calls"] = list(calls)
    return message


def tool_result(call_id: str = "call_1", content: str = '{"status": "ok"}') -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def line(*messages: dict[str, Any], **extra: Any) -> str:
    return json.dumps({"messages": list(messages), "tools": TOOLS, **extra})


BROKEN_JSON = (
    "invalid JSON: Expecting property name enclosed in double quotes at column 2; "
    "each line must be one whole JSON object"
)


def reasons(report: Any) -> list[str]:
    return [problem.reason for problem in report.problems]


# ---------------------------------------------------------------- valid shapes

VALID = {
    "single tool call": line(user(), assistant(call())),
    "parallel tool calls": line(
        user("Complete task_4 and task_5"),
        assistant(
            call("complete_task", {"task_id": "task_4"}, "c1"),
            call("complete_task", {"task_id": "task_5"}, "c2"),
        ),
    ),
    "plain-text answer": line(user("Hi"), assistant(content="Hello! What task should I create?")),
    "tool_calls null on a plain answer": line(user("Hi"), assistant(content="Hello!", tool_calls=None)),
    "multi-turn with tool results": line(
        {"role": "system", "content": "You manage tasks."},
        user(),
        assistant(call()),
        tool_result(),
        assistant(content="Created task_12: Pay the rent."),
        user("Thanks"),
        assistant(content="You're welcome!"),
    ),
    "weight 0 on one turn": line(
        user("Hi"),
        assistant(content="Wrong answer", weight=0),
        user("Again"),
        assistant(content="Hello!", weight=1),
    ),
    "optional parameter left out": line(user("Show my tasks"), assistant(call("list_tasks", {}))),
    "content as text parts": line(
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]}, user(), assistant(call())
    ),
    "parallel_tool_calls false with one call": line(user(), assistant(call()), parallel_tool_calls=False),
}


@pytest.mark.parametrize("text", VALID.values(), ids=VALID.keys())
def test_valid_examples_pass(text: str) -> None:
    report = validate_examples([text])
    assert report.problems == []
    assert report.ok
    assert report.examples == [json.loads(text)]


def test_parallel_calls_are_counted_per_tool() -> None:
    report = validate_examples(
        [VALID["parallel tool calls"], VALID["single tool call"], VALID["plain-text answer"]]
    )
    summary = report.summary
    assert summary.tool_calls == {"complete_task": 2, "create_task": 1}
    assert (summary.with_tool_calls, summary.without_tool_calls) == (2, 1)
    assert summary.share_without_tool_calls == pytest.approx(1 / 3)


# ---------------------------------------------------------------- one bad case each

BAD = {
    "invalid JSON": ('{"messages": [', "invalid JSON: Expecting value at column 15"),
    "not an object": ("[1, 2]", 'is an array, not an object like {"messages": [...]}'),
    "no messages": ('{"prompt": "Hi"}', 'has no "messages" array'),
    "empty messages": ('{"messages": []}', "messages must be a non-empty array"),
    "unknown role": (line(user(), {"role": "bot", "content": "Hi"}), "messages[1].role is 'bot'; use one of"),
    "missing role": (line(user(), {"content": "Hi"}), "messages[1].role is missing"),
    "system after the conversation started": (
        line(user(), assistant(call()), {"role": "system", "content": "Be brief."}),
        "messages[2]: a system message must come before the conversation",
    ),
    "starts with the assistant": (
        line(assistant(content="Hello"), user()),
        "messages[0]: the conversation must start with a user message, not assistant",
    ),
    "tool message without a call before it": (
        line(user(), tool_result(), assistant(content="Done")),
        "messages[1]: tool message answers tool_call_id 'call_1', which matches no unanswered tool call",
    ),
    "unknown tool": (
        line(user(), assistant(call("delete_task", {"task_id": "t"}))),
        "messages[1].tool_calls[0] calls tool 'delete_task', which is not in tools "
        "(defined: complete_task, create_task, list_tasks)",
    ),
    "call but no tools at all": (
        json.dumps({"messages": [user(), assistant(call())]}),
        "calls tool 'create_task' but the example has no tools",
    ),
    "arguments as an object": (
        line(
            user(),
            assistant({"id": "c", "type": "function", "function": {"name": "create_task", "arguments": {}}}),
        ),
        "messages[1].tool_calls[0].function.arguments is an object; it must be a JSON string",
    ),
    "arguments missing": (
        line(user(), assistant({"id": "c", "type": "function", "function": {"name": "create_task"}})),
        "function.arguments must be a JSON string of an object, got null",
    ),
    "arguments not valid JSON": (
        line(user(), assistant(call(arguments="{title: rent}"))),
        "function.arguments is not valid JSON (Expecting property name enclosed in double quotes at column",
    ),
    "arguments not an object": (
        line(user(), assistant(call(arguments='["rent"]'))),
        "function.arguments must encode a JSON object, got an array",
    ),
    "missing required parameter": (
        line(user(), assistant(call(arguments={"due_date": "2024-03-05"}))),
        "messages[1].tool_calls[0]: arguments for create_task miss required parameter 'title'",
    ),
    "wrong type": (
        line(user(), assistant(call("complete_task", {"task_id": 17}))),
        "arguments for complete_task: parameter 'task_id' is 17, expected type string",
    ),
    "value outside the enum": (
        line(user(), assistant(call("list_tasks", {"status": "pending"}))),
        "arguments for list_tasks: parameter 'status': 'pending' is not one of ['open', 'done']",
    ),
    "undefined parameter": (
        line(user(), assistant(call(arguments={"title": "Rent", "priority": "high"}))),
        "arguments for create_task pass parameter 'priority' that the tool does not define",
    ),
    "tool message with a wrong tool_call_id": (
        line(user(), assistant(call()), tool_result("call_9"), assistant(content="Done")),
        "messages[2]: tool message answers tool_call_id 'call_9', which matches no unanswered tool call",
    ),
    "tool message without tool_call_id": (
        line(user(), assistant(call()), {"role": "tool", "content": "ok"}, assistant(content="Done")),
        "messages[2]: tool message has no tool_call_id",
    ),
    "call left unanswered before the next turn": (
        line(user(), assistant(call()), user("And?"), assistant(content="Done")),
        "messages[1] has tool calls without a tool message answering them (ids: call_1) before messages[2]",
    ),
    "second call unanswered at the end": (
        line(user(), assistant(call(call_id="a"), call(call_id="b")), tool_result("a")),
        "messages[1] has tool calls without a tool message answering them (ids: b)",
    ),
    "duplicate call ids": (
        line(user(), assistant(call(), call())),
        "messages[1]: tool call id 'call_1' is used twice",
    ),
    "no assistant turn": (
        line({"role": "system", "content": "You manage tasks."}, user()),
        "no assistant turn: every example needs at least one assistant message",
    ),
    "empty assistant turn": (line(user(), assistant(content="")), "messages[1]: empty assistant turn"),
    "empty tool_calls": (
        line(user(), assistant(content=None, tool_calls=[])),
        "tool_calls must be a non-empty array",
    ),
    "weight not 0 or 1": (
        line(user(), assistant(content="Hi", weight=0.5)),
        "messages[1].weight is 0.5; use 0 (do not train on this turn) or 1",
    ),
    "parallel calls when parallel_tool_calls is false": (
        line(user(), assistant(call(call_id="a"), call(call_id="b")), parallel_tool_calls=False),
        "messages[1] has 2 tool calls but parallel_tool_calls is false",
    ),
    "parallel_tool_calls not a boolean": (
        line(user(), assistant(call()), parallel_tool_calls="yes"),
        'parallel_tool_calls must be true or false, got "yes"',
    ),
    "content of the wrong shape": (
        line({"role": "user", "content": {"text": "hi"}}, assistant(content="Hi")),
        "messages[0].content must be a string or a list of",
    ),
    "tool with an invalid parameter schema": (
        json.dumps(
            {
                "messages": [user(), assistant(content="Hi")],
                "tools": [{"type": "function", "function": {"name": "t", "parameters": {"type": "objekt"}}}],
            }
        ),
        "tools[0].function.parameters is not a valid JSON schema",
    ),
    "tool defined twice": (
        json.dumps({"messages": [user(), assistant(content="Hi")], "tools": [TOOLS[0], TOOLS[0]]}),
        "tools[1]: tool 'create_task' is defined twice",
    ),
    "NUL bytes": ('{"messages": []}\x00\x00', "contains NUL bytes: this looks like a binary file"),
}


@pytest.mark.parametrize(("text", "reason"), BAD.values(), ids=BAD.keys())
def test_each_bad_case_is_reported_with_its_line_and_reason(text: str, reason: str) -> None:
    report = validate_examples([VALID["single tool call"], text, VALID["plain-text answer"]])
    assert not report.ok
    assert [p.line for p in report.problems] == [2] * len(report.problems), report.problems
    assert any(reason in found for found in reasons(report)), reasons(report)
    if "NUL" not in reason:  # a binary file stops there; otherwise the good lines still count
        assert report.examples == [
            json.loads(VALID["single tool call"]),
            json.loads(VALID["plain-text answer"]),
        ]
        assert report.summary.invalid_lines == 1


def test_an_unknown_role_is_not_also_reported_as_a_missing_assistant() -> None:
    report = validate_examples([line(user(), {"role": "bot", "content": "Hi"})])
    assert len(report.problems) == 1
    assert report.warnings == []


def test_every_problem_of_a_line_is_reported() -> None:
    text = line(user(), assistant(call("delete_task", {}), call("create_task", {"title": 5}, "c2")))
    found = reasons(validate_examples([text]))
    assert len(found) == 2
    assert "calls tool 'delete_task'" in found[0]
    assert "parameter 'title' is 5, expected type string" in found[1]


def test_line_numbers_count_blank_lines() -> None:
    report = validate_examples([VALID["single tool call"], "\n", "   \n", "{broken\n"])
    assert report.problems == [Problem(4, BROKEN_JSON)]
    assert [w for w in report.warnings if w.line is not None] == [
        Problem(2, "blank line is ignored"),
        Problem(3, "blank line is ignored"),
    ]


def test_binary_input_stops_at_the_first_nul_line() -> None:
    report = validate_examples(["\x1f\x8b\x00junk", "more junk", "and more"])
    assert [p.line for p in report.problems] == [1]
    assert report.summary.lines == 1


@pytest.mark.parametrize("lines", [[], ["\n", "  \n"]], ids=["no lines", "only blank lines"])
def test_empty_input_is_a_problem(lines: list[str]) -> None:
    report = validate_examples(lines)
    assert report.problems[-1] == Problem(None, "is empty: no examples; write one JSON example per line")


def test_warnings_do_not_fail_validation() -> None:
    report = validate_examples([
        line(user(), assistant(content="Hi", weight=0)),
        line(user(), assistant(content="Which rent?"), user("And then?")),
        json.dumps({"messages": [user(), assistant(content="Hi")], "metadata": {"source": "x"}}),
    ])  # fmt: skip
    assert report.ok
    warned = [w.reason for w in report.warnings]
    assert "every assistant turn has weight 0, so this example trains nothing" in warned
    assert any(w.startswith("ends with a user message that no assistant turn answers") for w in warned)
    assert any(w.startswith("unknown key 'metadata' is ignored") for w in warned)


# ---------------------------------------------------------------- mixed outputs and tokens


def test_mixed_outputs_warning_names_the_share() -> None:
    report = validate_examples([VALID["single tool call"]] * 3 + [VALID["plain-text answer"]])
    mixed = [w.reason for w in report.warnings if w.reason.startswith("mixed outputs")]
    assert mixed == [mixed[0]]
    assert "1 of 4 examples (25%) answer without a tool call" in mixed[0]


def test_no_mixed_outputs_warning_when_every_example_calls_a_tool() -> None:
    report = validate_examples([VALID["single tool call"]] * 3)
    assert not [w for w in report.warnings if w.reason.startswith("mixed outputs")]
    assert report.summary.share_with_tool_calls == 1.0


def count_chars(example: dict[str, Any]) -> int:
    return len(json.dumps(example))


def test_token_counts_are_summed_when_a_counter_is_given() -> None:
    lines = [VALID["single tool call"], VALID["plain-text answer"]]
    report = validate_examples(lines, count_tokens=count_chars)
    expected = [len(json.dumps(json.loads(text))) for text in lines]
    assert report.summary.tokens == expected
    mean = round(sum(expected) / 2, 1)
    assert report.summary.as_dict()["tokens"] == {
        "total": sum(expected), "min": min(expected), "max": max(expected), "mean": mean
    }  # fmt: skip


def test_examples_longer_than_max_seq_length_are_problems() -> None:
    short, long = VALID["plain-text answer"], VALID["multi-turn with tool results"]
    limit = count_chars(json.loads(short)) + 1
    report = validate_examples([short, long], max_seq_length=limit, count_tokens=count_chars)
    length = count_chars(json.loads(long))
    assert report.problems == [
        Problem(2, f"is {length} tokens once templated, longer than maxSeqLength {limit}; "
                   "shorten the example or raise hyperparameters.maxSeqLength")
    ]  # fmt: skip
    assert report.examples == [json.loads(short)]


def test_a_template_failure_is_a_problem_not_a_crash() -> None:
    def broken(example: dict[str, Any]) -> int:
        raise ValueError("template cannot render role 'developer'")

    report = validate_examples([VALID["single tool call"]], count_tokens=broken)
    assert reasons(report) == ["could not be templated: template cannot render role 'developer'"]


def test_token_counter_is_not_called_on_invalid_lines() -> None:
    seen: list[dict[str, Any]] = []

    def counter(example: dict[str, Any]) -> int:
        seen.append(example)
        return 1

    validate_examples([BAD["unknown tool"][0], VALID["single tool call"]], count_tokens=counter)
    assert seen == [json.loads(VALID["single tool call"])]


# ---------------------------------------------------------------- personal data


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("mail jane.doe@example.co.uk today", [("email", "j***@example.co.uk")]),
        ("call 555-123-4567", [("phone", "***4567")]),
        ("call (555) 123-4567", [("phone", "***4567")]),
        ("call +44 20 7946 0958", [("phone", "***0958")]),
        ("call +4915112345678", [("phone", "***5678")]),
        ("card 4111 1111 1111 1111", [("card", "****1111")]),
        ("card 5500-0000-0000-0004", [("card", "****0004")]),
        ("not a card 4111 1111 1111 1112", []),  # fails the Luhn check
        ("due 2024-03-05, before 2024-04-01", []),
        ("Mark task_17 and budget_task as done", []),
        ("order 12345678901234", []),
        ("version 1.2.3 at 10:30", []),
    ],
)
def test_find_pii(text: str, found: list[tuple[str, str]]) -> None:
    assert find_pii(text) == found


def test_pii_is_a_warning_with_line_and_place() -> None:
    risky = line(
        user("Email bob@example.com about it"), assistant(call(arguments={"title": "Call 555-123-4567"}))
    )
    report = validate_examples([VALID["single tool call"], risky])
    assert report.ok
    assert [(f.line, f.kind, f.where) for f in report.summary.pii] == [
        (2, "email", "messages[0].content"),
        (2, "phone", "messages[1].tool_calls[0].function.arguments"),
    ]
    assert Problem(2, "likely email in messages[0].content (b***@example.com): remove or anonymise personal "
                      "data before training") in report.warnings  # fmt: skip


# ---------------------------------------------------------------- the exception and files


def test_invalid_dataset_lists_the_first_problems() -> None:
    report = validate_examples(["{"] * 25)
    error = InvalidDataset(report, limit=3)
    assert str(error).splitlines() == [
        f"line 1: {BROKEN_JSON}",
        f"line 2: {BROKEN_JSON}",
        f"line 3: {BROKEN_JSON}",
        "… and 22 more problems",
    ]
    assert error.report is report


def test_read_jsonl_turns_undecodable_bytes_into_a_line_problem(tmp_path: Any) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(VALID["plain-text answer"].encode() + b"\n" + '{"x": "café"}'.encode("latin-1") + b"\n")
    report = validate_examples(read_jsonl(path))
    assert report.problems == [Problem(2, "is not UTF-8 text; save the file as UTF-8")]
    assert len(report.examples) == 1


def test_write_then_read_round_trips(tmp_path: Any) -> None:
    examples = [json.loads(text) for text in VALID.values()]
    path = tmp_path / "out.jsonl"
    assert write_jsonl(path, examples) == len(examples)
    assert validate_examples(read_jsonl(path)).examples == examples


# ---------------------------------------------------------------- split


def numbered(n: int) -> list[dict[str, Any]]:
    return [{"messages": [user(f"example {i}"), assistant(content="ok")]} for i in range(n)]


def test_split_matches_the_lab_sizes() -> None:
    train, val = split_examples(numbered(523), 0.1, seed=42)
    assert (len(train), len(val)) == (470, 53)


def test_split_is_reproducible_and_seeded() -> None:
    examples = numbered(100)
    first, again, other = (split_examples(examples, 0.2, seed) for seed in (7, 7, 8))
    assert first == again
    assert first != other
    train, val = first
    ids = [e["messages"][0]["content"] for e in train + val]
    assert sorted(ids) == sorted(e["messages"][0]["content"] for e in examples)  # a partition: nothing lost
    assert len(set(ids)) == 100


def test_split_does_not_mutate_its_input() -> None:
    examples = numbered(10)
    before = list(examples)
    split_examples(examples, 0.3, seed=1)
    assert examples == before


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_split_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ValueError, match="validationSplit must be between 0 and 1"):
        split_examples(numbered(10), fraction, seed=0)


def test_split_refuses_to_leave_a_side_empty() -> None:
    with pytest.raises(
        ValueError, match=r"2 examples with validationSplit 0\.6 leave 0 for training and 2 for "
    ):
        split_examples(numbered(2), 0.6, seed=0)


@given(n=st.integers(2, 300), fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**32))
def test_split_sizes_follow_the_lab_formula(n: int, fraction: float, seed: int) -> None:
    cut = int(n * (1 - fraction))
    if cut in (0, n):
        with pytest.raises(ValueError):
            split_examples(numbered(n), fraction, seed)
        return
    train, val = split_examples(numbered(n), fraction, seed)
    assert (len(train), len(val)) == (cut, n - cut)


def test_nested_parameters_are_named_by_their_path() -> None:
    tagged = {"type": "function", "function": {"name": "tag", "parameters": {
        "type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}},
                                         "owner": {"type": "object", "properties": {"id": {"type": "string"}},
                                                   "required": ["id"]}}}}}  # fmt: skip
    arguments = {"tags": ["ok", 1], "owner": {}}
    text = json.dumps({"messages": [user(), assistant(call("tag", arguments))], "tools": [tagged]})
    assert reasons(validate_examples([text])) == [
        "messages[1].tool_calls[0]: arguments for tag: parameter 'owner': 'id' is a required property",
        "messages[1].tool_calls[0]: arguments for tag: parameter 'tags.1' is 1, expected type string",
    ]


def test_a_malformed_call_beside_a_good_one_is_reported_not_a_crash() -> None:
    text = line(user(), assistant(content=None, tool_calls=["oops", call()]))
    assert reasons(validate_examples([text])) == [
        'messages[1].tool_calls[0] must look like {"id": ..., "type": "function", "function": {"name": ..., '
        '"arguments": "{...}"}}'
    ]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
KEYS = st.sampled_from(["role", "content", "tool_calls", "tool_call_id", "weight", "function", "name",
                        "arguments", "id", "type", "messages", "tools", "parameters"])  # fmt: skip
SHAPED = st.recursive(
    JSON | st.sampled_from(["user", "assistant", "tool", "system", "create_task", "call_1", '{"title": 1}']),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)


@given(value=SHAPED | JSON, noise=st.text(max_size=20))
def test_any_input_gives_findings_never_an_exception(value: Any, noise: str) -> None:
    tools = {"messages": value, "tools": TOOLS} if isinstance(value, list) else value
    report = validate_examples([json.dumps(tools), noise, json.dumps({"messages": value})])
    assert report.summary.lines in (1, 2, 3)
    assert all(problem.reason for problem in report.problems)


def test_read_jsonl_accepts_a_byte_order_mark_and_crlf(tmp_path: Any) -> None:
    path = tmp_path / "windows.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + VALID["plain-text answer"].encode() + b"\r\n" + VALID["single tool call"].encode()
    )
    report = validate_examples(read_jsonl(path))
    assert report.problems == []
    assert len(report.examples) == 2


def test_a_tool_call_id_that_is_not_a_string_is_reported() -> None:
    text = line(user(), assistant(call()), {"role": "tool", "tool_call_id": ["call_1"], "content": "ok"})
    assert reasons(validate_examples([text])) == [
        "messages[2].tool_call_id must be a string, the id of the call it answers"
    ]
