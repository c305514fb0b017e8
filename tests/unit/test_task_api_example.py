"""The Task API example dataset: reproducible, valid, the lab's size, and learnable by copying."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from tooltune_trainer.data import read_jsonl, split_examples, validate_examples

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "task-api"
DATASET = EXAMPLE_DIR / "task_api_tool_calling.jsonl"
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("task_api_generate", EXAMPLE_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="module")
def examples() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATASET.read_text(encoding="utf-8").splitlines()]


def calls_with_context(examples: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(everything said before the call, tool name, arguments) for every tool call."""
    found = []
    for example in examples:
        messages = example["messages"]
        for index, message in enumerate(messages):
            for call in message.get("tool_calls") or []:
                context = " ".join(m.get("content") or "" for m in messages[:index])
                found.append((context, call["function"]["name"], json.loads(call["function"]["arguments"])))
    return found


def test_committed_file_is_what_the_generator_writes(generator: ModuleType) -> None:
    assert generator.render(generator.generate()) == DATASET.read_text(encoding="utf-8"), (
        "examples/task-api/task_api_tool_calling.jsonl is stale: run python examples/task-api/generate.py"
    )


def test_generation_is_deterministic_and_seeded(generator: ModuleType) -> None:
    assert generator.generate() == generator.generate()
    assert generator.generate(seed=1) != generator.generate()


def test_check_mode_detects_a_stale_file(generator: ModuleType, tmp_path: Path) -> None:
    stale = tmp_path / "stale.jsonl"
    stale.write_text("{}\n", encoding="utf-8")
    assert generator.main(["--check", "--out", str(stale)]) == 1
    assert generator.main(["--out", str(stale)]) == 0
    assert generator.main(["--check", "--out", str(stale)]) == 0


def test_lab_size_and_split(examples: list[dict[str, Any]]) -> None:
    assert len(examples) == 1183
    train, val = split_examples(examples, 0.1, seed=42)
    assert (len(train), len(val)) == (1064, 119)


def test_passes_validation() -> None:
    report = validate_examples(read_jsonl(DATASET))
    assert report.problems == []
    assert report.summary.examples == 1183
    assert report.summary.pii == []
    assert set(report.summary.tool_calls) == {"create_task", "list_tasks", "complete_task"}
    assert min(report.summary.tool_calls.values()) >= 100


def _asks_then_calls(example: dict[str, Any]) -> bool:
    """The first assistant turn is a question in text, the second a tool call."""
    replies = [m for m in example["messages"] if m["role"] == "assistant"]
    return len(replies) == 2 and not replies[0].get("tool_calls") and bool(replies[1].get("tool_calls"))


def test_has_plain_text_and_multi_turn_examples(examples: list[dict[str, Any]]) -> None:
    def roles(example: dict[str, Any]) -> list[str]:
        return [m["role"] for m in example["messages"]]

    plain = [e for e in examples if not any(m.get("tool_calls") for m in e["messages"])]
    with_results = [e for e in examples if "tool" in roles(e)]
    two_requests = [e for e in examples if roles(e).count("user") == 2]
    assert 0.05 <= len(plain) / len(examples) <= 0.2  # a minority: the lab warns about mixed outputs
    asked_first = [e for e in examples if _asks_then_calls(e)]  # a value is missing: ask, then call
    assert len(asked_first) >= 20
    assert len(with_results) >= 100
    assert len(two_requests) >= 30
    for example in with_results:  # call -> result -> the assistant's reply in text
        sequence = roles(example)
        at = sequence.index("tool")
        assert sequence[at - 1] == "assistant" and sequence[at + 1] == "assistant"
        assert example["messages"][at + 1]["content"]


def test_every_example_carries_the_short_system_prompt_and_compact_tools(
    generator: ModuleType, examples: list[dict[str, Any]]
) -> None:
    for example in examples:
        assert example["messages"][0] == {"role": "system", "content": generator.SYSTEM_PROMPT}
        assert example["tools"] == generator.TOOLS
    assert len(generator.SYSTEM_PROMPT) < 100
    assert len(json.dumps(generator.TOOLS)) < 1000


def test_user_turns_are_unique_and_the_smoke_prompts_are_held_out(
    generator: ModuleType, examples: list[dict[str, Any]]
) -> None:
    turns = [tuple(m["content"] for m in e["messages"] if m["role"] == "user") for e in examples]
    assert len(set(turns)) == len(turns)
    users = {text for turn in turns for text in turn}
    assert not users & generator.SMOKE_PROMPTS


def test_lab_smoke_prompt_styles_are_present(examples: list[dict[str, Any]]) -> None:
    calls = calls_with_context(examples)
    assert any(
        "Create a task to " in ctx and tool == "create_task" and set(args) == {"title"}
        for ctx, tool, args in calls
    )
    assert any(
        "What tasks do I have due this week?" not in ctx
        and "due this week" in ctx
        and args == {"due_before": "2024-01-21"}
        for ctx, tool, args in calls
    )
    assert any(
        re.search(r"Mark the \w+ task as complete", ctx) and tool == "complete_task" for ctx, tool, _ in calls
    )


def test_argument_values_can_be_copied_from_the_conversation(
    generator: ModuleType, examples: list[dict[str, Any]]
) -> None:
    relative_dates = {
        (generator.TODAY + generator.timedelta(days=days)).isoformat()
        for days in generator.RELATIVE_DAYS.values()
    }
    for context, tool, args in calls_with_context(examples):
        lowered = context.lower()
        for name, value in args.items():
            if name in {"title", "task_id"}:
                spoken = value.removesuffix("_task").replace("_", " ") if value.endswith("_task") else value
                assert value.lower() in lowered or spoken.lower() in lowered, (tool, value, context)
            elif ISO_DATE.match(value) and value not in context:
                assert value in relative_dates, (tool, value, context)


def test_values_come_from_large_pools(examples: list[dict[str, Any]]) -> None:
    values: dict[str, Counter[str]] = {}
    for _, _, args in calls_with_context(examples):
        for name, value in args.items():
            values.setdefault(name, Counter())[value] += 1
    assert len(values["title"]) >= 0.85 * sum(values["title"].values())
    assert len(values["task_id"]) >= 100
    assert len(values["due_date"]) >= 60
    assert values["title"].most_common(1)[0][1] <= 3  # no title is common enough to be memorised


def test_arguments_are_json_strings_in_schema_order(
    generator: ModuleType, examples: list[dict[str, Any]]
) -> None:
    order = {
        tool["function"]["name"]: list(tool["function"]["parameters"]["properties"])
        for tool in generator.TOOLS
    }
    for example in examples:
        for message in example["messages"]:
            for call in message.get("tool_calls") or []:
                arguments = call["function"]["arguments"]
                assert isinstance(arguments, str)
                keys = list(json.loads(arguments))
                assert keys == [k for k in order[call["function"]["name"]] if k in keys]


def test_larger_datasets_for_experiments_stay_valid(generator: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "big.jsonl"
    assert generator.main(["--count", "1500", "--seed", "3", "--out", str(out)]) == 0
    report = validate_examples(read_jsonl(out))
    assert report.problems == []
    assert report.summary.examples == 1500
    assert 0.05 < report.summary.share_without_tool_calls < 0.2
