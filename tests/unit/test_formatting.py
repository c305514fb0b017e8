"""Formatting: the loss mask is exactly the assistant output; calls round-trip; errors name the example."""

from __future__ import annotations

import copy
import json

import pytest
from tooltune_trainer.formatting import (
    IGNORE_INDEX,
    FormattingError,
    ToolCall,
    normalize_example,
    templated_length,
    tokenize_example,
    training_rows,
    trl_conversation,
)
from tooltune_trainer.tool_formats import FORMATS, HERMES, LLAMA3_JSON, prepare_tokenizer

from tests.fixtures.tiny import SYSTEM, TOOLS, call_message

MULTI_TURN = {
    "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Mark task_7 as complete"},
        call_message("complete_task", {"task_id": "task_7"}),
        {"role": "tool", "tool_call_id": "call_1", "content": '{"ok": true}'},
        {"role": "assistant", "content": "Done: task_7 is complete."},
    ],
    "tools": TOOLS,
}


# ---------------------------------------------------------------- the loss mask


def _spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for position, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = position
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, position))
            start = None
    return spans


def test_loss_mask_covers_exactly_the_assistant_turns_with_tool_calls_and_end_of_turn(tiny_tokenizer):
    row = tokenize_example(tiny_tokenizer, normalize_example(MULTI_TURN), 0, max_length=512)
    ids, labels = row["input_ids"], row["labels"]

    spans = _spans(labels)
    assert len(spans) == 2  # one per assistant turn, nothing else
    decoded = [tiny_tokenizer.decode(ids[start:end]) for start, end in spans]
    assert decoded == [
        '<tool_call>{"name": "complete_task", "arguments": {"task_id": "task_7"}}</tool_call><|end|>',
        "Done: task_7 is complete.<|end|>",
    ]
    assistant_header = tiny_tokenizer.convert_tokens_to_ids("<|assistant|>")
    for start, _ in spans:
        assert ids[start - 1] == assistant_header  # the header is prompt, not trained
    assert all(label in (token, IGNORE_INDEX) for token, label in zip(ids, labels, strict=True))
    masked_text = tiny_tokenizer.decode(
        [t for t, label in zip(ids, labels, strict=True) if label == IGNORE_INDEX]
    )
    assert (
        "Mark task_7 as complete" in masked_text and '{"ok": true}' in masked_text and SYSTEM in masked_text
    )


def test_an_example_without_trainable_tokens_is_an_error_not_a_zero_loss_batch(tiny_tokenizer):
    no_assistant = {"messages": MULTI_TURN["messages"][:2], "tools": TOOLS}
    with pytest.raises(FormattingError, match=r"example 3: no token carries loss"):
        tokenize_example(tiny_tokenizer, no_assistant, 3, max_length=512)


def test_too_long_example_names_the_setting(tiny_tokenizer):
    with pytest.raises(FormattingError, match=r"example 0: \d+ tokens .*hyperparameters.maxSeqLength=8"):
        tokenize_example(tiny_tokenizer, normalize_example(MULTI_TURN), 0, max_length=8)


def test_training_rows_mask_matches_what_trl_would_compute(tiny_tokenizer):
    """Our labels equal TRL's own assistant mask for the same conversation (same template, same tools)."""
    row = training_rows(tiny_tokenizer, [MULTI_TURN], 512)[0]
    conversation = trl_conversation(MULTI_TURN)
    trl = tiny_tokenizer.apply_chat_template(
        conversation["messages"], tools=json.loads(conversation["tools"]), tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True,
    )  # fmt: skip
    assert row["input_ids"] == list(trl["input_ids"])
    assert [label != IGNORE_INDEX for label in row["labels"]] == [bool(bit) for bit in trl["assistant_masks"]]


def test_templated_length_counts_the_tokens_that_are_trained(tiny_tokenizer):
    row = training_rows(tiny_tokenizer, [MULTI_TURN], 512)[0]
    assert templated_length(tiny_tokenizer, MULTI_TURN) == len(row["input_ids"])


# ---------------------------------------------------------------- tool calls: parse and round trip


def test_parse_tool_calls_reads_tagged_calls_in_order():
    text = (
        '<tool_call>{"name": "create_task", "arguments": {"title": "A"}}</tool_call>'
        '<tool_call>{"name": "list_tasks", "arguments": {}}</tool_call>'
    )
    parsed = FORMATS[HERMES].parse(text)
    assert parsed.calls == [ToolCall("create_task", {"title": "A"}), ToolCall("list_tasks", {})]
    assert parsed.malformed == [] and parsed.attempted == 2


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "create_task", "arguments": {"title": </tool_call>',  # broken JSON
        '<tool_call>{"name": "create_task", "arguments": {"title": "A"}',  # never closed (cut off)
        '<tool_call>{"arguments": {"title": "A"}}</tool_call>',  # no name
        '<tool_call>{"name": "create_task", "arguments": [1, 2]}</tool_call>',  # arguments not an object
    ],
)
def test_parse_tool_calls_counts_malformed_attempts(text):
    parsed = FORMATS[HERMES].parse(text)
    assert parsed.calls == [] and parsed.attempted == 1


def test_parse_tool_calls_plain_text_and_llama_json():
    assert FORMATS[HERMES].parse("Sure, I can help with that.").attempted == 0
    llama = FORMATS[LLAMA3_JSON]
    bare = llama.parse('{"name": "complete_task", "parameters": {"task_id": "t1"}}<|eot_id|>')
    assert bare.calls == [ToolCall("complete_task", {"task_id": "t1"})]
    assert llama.parse('{"name": "complete_task", "parameters": {"task_id": <|eot_id|>').malformed
    assert llama.parse("Sure.<|eot_id|>").attempted == 0
    as_string = FORMATS[HERMES].parse('<tool_call>{"name": "x", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert as_string.calls == [ToolCall("x", {"a": 1})]


def test_rendered_tool_calls_round_trip_through_the_parser(tiny_tokenizer, tool_calling_examples):
    rows = training_rows(
        tiny_tokenizer, tool_calling_examples, 512
    )  # raises on any call that reads back wrong
    assert len(rows) == len(tool_calling_examples)


def test_a_template_whose_calls_do_not_parse_back_is_refused(tiny_tokenizer):
    broken = copy.deepcopy(tiny_tokenizer)
    broken.chat_template = broken.chat_template.replace('"arguments": ', '"args": ')
    with pytest.raises(FormattingError, match=r"example 5: turn 2's tool calls render as .*hermes format"):
        tokenize_example(broken, normalize_example(MULTI_TURN), 5, 512)


def test_a_template_error_of_any_kind_is_a_formatting_error_naming_the_example(tiny_tokenizer):
    broken = copy.deepcopy(tiny_tokenizer)
    broken.chat_template = "{{ messages[0].content + messages[0].missing.field }}"
    with pytest.raises(
        FormattingError, match=r"example 4: the chat template cannot render it: UndefinedError"
    ):
        tokenize_example(broken, normalize_example(MULTI_TURN), 4, 512)


def test_a_template_writing_calls_in_an_unknown_format_is_refused_with_advice(tiny_tokenizer):
    odd = copy.deepcopy(tiny_tokenizer)
    odd.chat_template = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }}{% for c in m.tool_calls or [] %}"
        "CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
        "{% if m.role == 'tool' %}{{ m.content }}{% endif %}\n{% endfor %}"
    )
    with pytest.raises(FormattingError, match=r"cannot parse .*spec.toolCallFormat: tool_tags"):
        prepare_tokenizer(odd)


# ---------------------------------------------------------------- normalization


def test_normalize_keeps_argument_order_and_strings_and_drops_other_keys():
    example = {
        "messages": [
            {"role": "user", "content": "x"},
            call_message("create_task", {"title": "B", "due_date": "2024-01-02"}) | {"weight": 1},
        ],
        "tools": TOOLS,
        "parallel_tool_calls": False,
    }
    example["messages"][1]["tool_calls"][0]["function"]["arguments"] = (
        '{"title":"B",   "due_date":"2024-01-02"}'
    )
    normalized = normalize_example(example)
    assert set(normalized) == {"messages", "tools"}
    arguments = normalized["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert arguments == '{"title": "B", "due_date": "2024-01-02"}'
    assert example["messages"][1]["tool_calls"][0]["function"]["arguments"].startswith(
        '{"title":"B"'
    )  # unchanged


def test_trl_conversation_keeps_tools_as_a_json_string():
    row = trl_conversation(MULTI_TURN)
    assert isinstance(row["tools"], str) and json.loads(row["tools"]) == TOOLS
