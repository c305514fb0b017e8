"""Turn validated examples into training rows with the model's own chat template.

Pure functions of (tokenizer, example): render the conversation with its tools, mark the assistant's
tokens (tool calls and end-of-turn included) as the only ones carrying loss, and check that each
rendered tool call parses back to the same call with `parse_tool_calls`, the parser evaluation uses
on generated text: what we train is what we serve.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100  # label of tokens that carry no loss (the transformers convention)
TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class FormattingError(ValueError):
    """An example or chat template that cannot be trained as asked; the message names which and why."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class ParsedAnswer:
    """What a model's answer contains: well-formed calls, and the raw text of call attempts that were not."""

    calls: list[ToolCall] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)

    @property
    def attempted(self) -> int:
        return len(self.calls) + len(self.malformed)


# ---------------------------------------------------------------- tool calls


def _call_from_json(text: str) -> ToolCall | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # some templates keep the OpenAI JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return ToolCall(data["name"], arguments) if isinstance(arguments, dict) else None


def parse_tool_calls(text: str) -> ParsedAnswer:
    """The tool calls in generated text: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks,
    or, for templates without tags, an answer that is one bare JSON object with a "name"."""
    answer = ParsedAnswer()
    blocks = TOOL_CALL_BLOCK.findall(text)
    if not blocks and text.strip().startswith('{"name"'):
        blocks = [text.strip()]
    for block in blocks:
        call = _call_from_json(block)
        if call is None:
            answer.malformed.append(block)
        else:
            answer.calls.append(call)
    return answer


def expected_calls(message: dict[str, Any]) -> list[ToolCall]:
    """The calls of an assistant message in OpenAI format (arguments as a JSON string)."""
    calls = []
    for call in message.get("tool_calls") or []:
        function = call["function"]
        arguments = function.get("arguments") or "{}"
        calls.append(
            ToolCall(function["name"], json.loads(arguments) if isinstance(arguments, str) else arguments)
        )
    return calls


# ---------------------------------------------------------------- examples


def normalize_example(example: dict[str, Any]) -> dict[str, Any]:
    """messages and tools only, with each call's arguments as compact JSON in the order written.

    Arguments stay JSON strings and tools stay as given: converting them to dicts inside an Arrow
    dataset would merge every tool's parameters into one schema and render the others as nulls.
    """
    messages = []
    for message in example["messages"]:
        message = dict(message)
        if message.get("tool_calls"):
            message["tool_calls"] = [
                {
                    **call,
                    "function": {"name": call["function"]["name"], "arguments": _compact(call["function"])},
                }
                for call in message["tool_calls"]
            ]
        messages.append(message)
    return {"messages": messages, "tools": example.get("tools") or []}


def _compact(function: dict[str, Any]) -> str:
    arguments = function.get("arguments") or "{}"
    value = json.loads(arguments) if isinstance(arguments, str) else arguments
    return json.dumps(value, ensure_ascii=False)


def render_chat(tokenizer: Any, example: dict[str, Any], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        example["messages"],
        tools=example.get("tools") or None,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def templated_length(tokenizer: Any, example: dict[str, Any]) -> int:
    """Tokens of the example once rendered with the chat template and its tools (what maxSeqLength bounds)."""
    ids = tokenizer.apply_chat_template(
        normalize_example(example)["messages"],
        tools=example.get("tools") or None,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    return len(ids)


def assistant_mask(tokenizer: Any, example: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Token ids of the rendered example and a 0/1 mask that is 1 exactly on assistant output."""
    encoded = tokenizer.apply_chat_template(
        example["messages"],
        tools=example.get("tools") or None,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    return list(encoded["input_ids"]), list(encoded["assistant_masks"])


def check_tool_calls_round_trip(tokenizer: Any, example: dict[str, Any], index: int) -> None:
    """Each assistant turn's rendered calls must parse back to the calls written in the example."""
    for position, message in enumerate(example["messages"]):
        if message.get("role") != "assistant" or not message.get("tool_calls"):
            continue
        before = render_chat(tokenizer, {**example, "messages": example["messages"][:position]}, True)
        upto = render_chat(tokenizer, {**example, "messages": example["messages"][: position + 1]})
        if not upto.startswith(before):
            raise FormattingError(
                f"example {index}: the chat template renders earlier turns differently once turn {position} "
                "is added; use a template whose renderings are prefixes of each other"
            )
        parsed = parse_tool_calls(upto[len(before) :])
        if parsed.calls != expected_calls(message) or parsed.malformed:
            raise FormattingError(
                f"example {index}: turn {position}'s tool calls render as {upto[len(before) :]!r}, which "
                "parse_tool_calls reads back differently; the template's tool-call format is not one "
                "tooltune can evaluate or serve"
            )


def tokenize_example(
    tokenizer: Any, example: dict[str, Any], index: int, max_length: int
) -> dict[str, list[int]]:
    """input_ids and labels (IGNORE_INDEX except on assistant output) of one normalized example."""
    input_ids, mask = assistant_mask(tokenizer, example)
    if len(input_ids) > max_length:
        raise FormattingError(
            f"example {index}: {len(input_ids)} tokens once templated, more than "
            f"hyperparameters.maxSeqLength={max_length}; raise it or shorten the example"
        )
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, mask, strict=True)]
    if all(label == IGNORE_INDEX for label in labels):
        raise FormattingError(
            f"example {index}: no token carries loss (no assistant output after templating); "
            "every example needs an assistant turn with content or tool calls"
        )
    return {"input_ids": input_ids, "labels": labels}


def training_rows(
    tokenizer: Any, examples: list[dict[str, Any]], max_length: int
) -> list[dict[str, list[int]]]:
    """Normalize, check and tokenize every example; the first bad one raises FormattingError."""
    require_generation_markers(tokenizer)
    rows = []
    for index, example in enumerate(examples):
        example = normalize_example(example)
        check_tool_calls_round_trip(tokenizer, example, index)
        rows.append(tokenize_example(tokenizer, example, index, max_length))
    return rows


def require_generation_markers(tokenizer: Any) -> None:
    """Give the tokenizer a template that marks assistant output, as TRL does for the templates it knows."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if not template:
        raise FormattingError("the base model's tokenizer has no chat template; use a chat (instruct) model")
    if has_generation_markers(template):
        return
    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError as error:
        patched, reason = None, str(error)
    else:
        reason = "no known training version"
    if not patched:
        raise FormattingError(
            "the base model's chat template has no {% generation %} markers and TRL has no training version "
            f"of it ({reason}); use a model whose template marks assistant output"
        )
    tokenizer.chat_template = patched


def trl_conversation(example: dict[str, Any]) -> dict[str, Any]:
    """The row a plain TRL SFTTrainer reads: messages, with tools as a JSON string column."""
    normalized = normalize_example(example)
    return {"messages": normalized["messages"], "tools": json.dumps(normalized["tools"])}
