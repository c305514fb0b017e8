"""Turn validated examples into training rows with the model's own chat template and tool-call format.

Pure functions of (tokenizer, example). The tokenizer has been through `tool_formats.prepare_tokenizer`, which
picked the family's tool-call format and the template to train with. Each assistant turn's output is what the
template adds after the generation prompt up to where the conversation goes on (its end-of-turn token
included); exactly those tokens carry loss, except turns the data gives `weight: 0`. Each rendered tool call
must parse back to the call written in the example with the format's parser, the one evaluation reads
generated answers with: what we train is what we evaluate and serve.
"""

from __future__ import annotations

import json
from typing import Any

from tooltune_trainer.tool_formats import (
    FORMATS,
    HERMES,
    FormattingError,
    ParsedAnswer,
    ToolCall,
    ToolCallFormat,
)

IGNORE_INDEX = -100  # label of tokens that carry no loss (the transformers convention)

__all__ = ["FormattingError", "ParsedAnswer", "ToolCall", "ToolCallFormat"]


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


def chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: each call's arguments as an object (Qwen's and Llama's
    templates `tojson` them, which would quote a JSON string a second time), in the order written."""
    rendered = []
    for message in messages:
        if message.get("tool_calls"):
            message = {
                **message,
                "tool_calls": [
                    {**call, "function": {**call["function"], "arguments": _arguments(call["function"])}}
                    for call in message["tool_calls"]
                ],
            }
        rendered.append(message)
    return rendered


def _arguments(function: dict[str, Any]) -> Any:
    arguments = function.get("arguments") or "{}"
    return json.loads(arguments) if isinstance(arguments, str) else arguments


def render_chat(tokenizer: Any, example: dict[str, Any], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(
            chat_messages(example["messages"]),
            tools=example.get("tools") or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as error:  # jinja's TemplateError, UndefinedError, TypeError of a template's filters
        raise FormattingError(
            f"the chat template cannot render it: {type(error).__name__}: {error}"
        ) from None


def templated_length(tokenizer: Any, example: dict[str, Any]) -> int:
    """Tokens of the example once rendered with the chat template and its tools (what maxSeqLength bounds)."""
    return len(_encode(tokenizer, render_chat(tokenizer, normalize_example(example)))["input_ids"])


def _encode(tokenizer: Any, text: str) -> Any:
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def assistant_spans(
    tokenizer: Any, example: dict[str, Any], index: int, fmt: ToolCallFormat
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered example and the character spans of the assistant output that carries loss.

    A turn's output starts where rendering the conversation before it with a generation prompt ends, and runs
    up to the last token that rendering the conversation through it shares with the whole (so a template that
    closes the last turn differently, like Phi-3's final eos, still marks every turn's end-of-turn token),
    less trailing whitespace. Each turn's calls are checked to parse back with the format's parser.
    """
    messages = example["messages"]
    full = _render(tokenizer, example, messages, index, len(messages), False)
    encoded = _encode(tokenizer, full)
    spans = []
    for position, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = _render(tokenizer, example, messages, index, position, True)
        if not full.startswith(prompt):
            raise FormattingError(
                f"example {index}: the chat template renders the conversation before turn {position} "
                "differently once later turns are added, so the assistant's tokens cannot be told apart"
            )
        upto = _encode(tokenizer, _render(tokenizer, example, messages, index, position + 1, False))
        shared = _common_prefix(upto["input_ids"], encoded["input_ids"])
        end = encoded["offset_mapping"][shared - 1][1] if shared else 0
        output = full[len(prompt) : max(end, len(prompt))]
        _check_round_trip(output, message, index, position, fmt)
        end = len(prompt) + len(output.rstrip())
        if message.get("weight", 1) != 0 and end > len(prompt):
            spans.append((len(prompt), end))
    return full, spans


def _render(
    tokenizer: Any, example: dict[str, Any], messages: list[Any], index: int, upto: int, prompt: bool
) -> str:
    try:
        return render_chat(tokenizer, {**example, "messages": messages[:upto]}, prompt)
    except FormattingError as error:
        raise FormattingError(f"example {index}: {error}") from None


def _check_round_trip(
    output: str, message: dict[str, Any], index: int, position: int, fmt: ToolCallFormat
) -> None:
    expected = expected_calls(message)
    parsed = fmt.parse(output)
    if parsed.calls != expected or parsed.malformed:
        what = "tool calls" if expected else "text"
        raise FormattingError(
            f"example {index}: turn {position}'s {what} render as {output!r}, which the {fmt.name} format's "
            f"parser reads back as {[vars(call) for call in parsed.calls]}; the template cannot train this "
            "example in that format (set spec.toolCallFormat, or check the example's tool_calls)"
        )


def assistant_mask(
    tokenizer: Any, example: dict[str, Any], index: int = 0, fmt: ToolCallFormat = FORMATS[HERMES]
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered example and a 0/1 mask that is 1 exactly on assistant output."""
    full, spans = assistant_spans(tokenizer, example, index, fmt)
    encoded = _encode(tokenizer, full)
    mask = [
        int(any(start <= begin < end for start, end in spans) and begin < finish)
        for begin, finish in encoded["offset_mapping"]
    ]
    return list(encoded["input_ids"]), mask


def end_of_turn_id(tokenizer: Any, fmt: ToolCallFormat) -> int | None:
    """The special token that ends an assistant turn in this template (`<|eot_id|>`, `<end_of_turn>`, ...):
    the last trained special token of an answer the conversation goes on after (Phi-3 also closes the last
    turn of a conversation with its eos)."""
    turns = [("user", "hi"), ("assistant", "ok"), ("user", "bye")]
    probe = {"messages": [{"role": role, "content": text} for role, text in turns], "tools": []}
    ids, mask = assistant_mask(tokenizer, probe, 0, fmt)
    trained = [token for token, keep in zip(ids, mask, strict=True) if keep]
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return next((token for token in reversed(trained) if token in special), None)


def tokenize_example(
    tokenizer: Any,
    example: dict[str, Any],
    index: int,
    max_length: int,
    fmt: ToolCallFormat = FORMATS[HERMES],
) -> dict[str, list[int]]:
    """input_ids and labels (IGNORE_INDEX except on assistant output) of one normalized example."""
    input_ids, mask = assistant_mask(tokenizer, example, index, fmt)
    if len(input_ids) > max_length:
        raise FormattingError(
            f"example {index}: {len(input_ids)} tokens once templated, more than "
            f"hyperparameters.maxSeqLength={max_length}; raise it or shorten the example"
        )
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, mask, strict=True)]
    if all(label == IGNORE_INDEX for label in labels):
        raise FormattingError(
            f"example {index}: no token carries loss (no assistant output with weight 1 after templating); "
            "every example needs an assistant turn with content or tool calls"
        )
    return {"input_ids": input_ids, "labels": labels}


def training_rows(
    tokenizer: Any, examples: list[dict[str, Any]], max_length: int, fmt: ToolCallFormat = FORMATS[HERMES]
) -> list[dict[str, list[int]]]:
    """Normalize, check and tokenize every example; the first bad one raises FormattingError."""
    return [
        tokenize_example(tokenizer, normalize_example(example), index, max_length, fmt)
        for index, example in enumerate(examples)
    ]


def trl_conversation(example: dict[str, Any]) -> dict[str, Any]:
    """The row a plain TRL SFTTrainer reads: messages, with tools as a JSON string column."""
    normalized = normalize_example(example)
    return {"messages": normalized["messages"], "tools": json.dumps(normalized["tools"])}
