"""What kind of error each wrong answer of the tool-call evaluation is, so debugging starts from facts.

Kinds, per answer (an answer can have several, one per argument):
  no_call             a call was expected and the answer attempts none
  invalid_json        a call attempt that does not parse
  false_call          plain text was expected and the answer calls a tool
  wrong_tool          the tools called differ from the expected ones (arguments are then not compared)
  missing_argument    an expected argument is absent
  extra_argument      an argument that was not expected
  wrong_value_copied  a wrong value that occurs in the conversation the model saw (the wrong span copied)
  invented_value      a wrong value that occurs nowhere in it; `seenInTraining` says whether it is a value
                      of the training data (memorised) or new
Values are compared as the JSON parser returns them; "occurs" ignores case and reads `_` as a space, so
`budget_task` occurs in "Mark the budget task as complete".
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from tooltune_trainer.formatting import expected_calls, normalize_example
from tooltune_trainer.tool_formats import ParsedAnswer, ToolCall

KINDS = (
    "no_call",
    "invalid_json",
    "false_call",
    "wrong_tool",
    "missing_argument",
    "extra_argument",
    "wrong_value_copied",
    "invented_value",
)


def _folded(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return " ".join(text.casefold().replace("_", " ").split())


def training_values(examples: list[dict[str, Any]]) -> set[str]:
    """Every argument value of the examples' tool calls, folded as `classify` compares them."""
    values: set[str] = set()
    for example in examples:
        for message in normalize_example(example)["messages"]:
            for call in expected_calls(message) if message.get("role") == "assistant" else []:
                values.update(_folded(value) for value in call.arguments.values())
    return values


def classify(
    conversation: list[dict[str, Any]],
    expected: list[ToolCall],
    answer: ParsedAnswer,
    seen_in_training: set[str],
) -> list[dict[str, Any]]:
    """The errors of one answer to the conversation (empty when it is right)."""
    if not expected:
        return [{"kind": "false_call"}] if answer.attempted else []
    if not answer.attempted:
        return [{"kind": "no_call"}]
    errors: list[dict[str, Any]] = [{"kind": "invalid_json", "text": text} for text in answer.malformed]
    if [call.name for call in answer.calls] != [call.name for call in expected]:
        names = [call.name for call in answer.calls]
        return [*errors, {"kind": "wrong_tool", "expected": [c.name for c in expected], "got": names}]
    prompt = _folded(" ".join(str(m.get("content") or "") for m in conversation))
    for want, got in zip(expected, answer.calls, strict=True):
        for name in want.arguments:
            if name not in got.arguments:
                errors.append({"kind": "missing_argument", "tool": want.name, "argument": name})
                continue
            value = got.arguments[name]
            if value == want.arguments[name]:
                continue
            error = {"tool": want.name, "argument": name, "expected": want.arguments[name], "got": value}
            if _folded(value) and _folded(value) in prompt:
                errors.append({"kind": "wrong_value_copied", **error})
            else:
                seen = _folded(value) in seen_in_training
                errors.append({"kind": "invented_value", **error, "seenInTraining": seen})
        for name in got.arguments:
            if name not in want.arguments:
                errors.append({"kind": "extra_argument", "tool": want.name, "argument": name})
    return errors


def count_kinds(errors_per_answer: list[list[dict[str, Any]]]) -> dict[str, int]:
    """How many answers have each kind of error (an answer counts once per kind)."""
    counts = Counter(kind for errors in errors_per_answer for kind in {e["kind"] for e in errors})
    return {kind: counts[kind] for kind in KINDS}
