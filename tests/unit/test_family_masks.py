"""Each model family's real chat template: its tool-call format, and exactly the assistant's output trains.

The templates are the ones TRL and Unsloth ship (tests/fixtures/families.py); the expected spans below are
written by hand from each family's documented format, so a mask that drifts by one token fails here.
"""

from __future__ import annotations

import copy

import pytest
from tooltune_trainer.formatting import (
    IGNORE_INDEX,
    FormattingError,
    chat_messages,
    normalize_example,
    tokenize_example,
)
from tooltune_trainer.tool_formats import FORMATS, prepare_tokenizer

from tests.fixtures.families import FAMILIES, family_tokenizer
from tests.fixtures.tiny import SYSTEM, TOOLS, call_message, tool_calling_dataset
from tests.unit.test_formatting import MULTI_TURN

TAGGED = '<tool_call>\n{"name": "complete_task", "arguments": {"task_id": "task_7"}}\n</tool_call>'
LLAMA_JSON = '{"name": "complete_task", "parameters": {"task_id": "task_7"}}'
TEXT = "Done: task_7 is complete."
QWEN3_THINK = "<think>\n\n</think>\n\n"  # Qwen 3 writes an empty reasoning block before each answer

EXPECTED_SPANS = {
    "llama3": [TAGGED + "<|eot_id|>", TEXT + "<|eot_id|>"],
    "llama3.1": [LLAMA_JSON + "<|eot_id|>", TEXT + "<|eot_id|>"],
    "llama3.2": [LLAMA_JSON + "<|eot_id|>", TEXT + "<|eot_id|>"],
    "qwen2.5": [TAGGED + "<|im_end|>", TEXT + "<|im_end|>"],
    "qwen3": [QWEN3_THINK + TAGGED + "<|im_end|>", QWEN3_THINK + TEXT + "<|im_end|>"],
    "mistral": [TAGGED + "</s>", TEXT + "</s>"],
    "gemma3": [TAGGED + "<end_of_turn>", TEXT + "<end_of_turn>"],
    "phi3": [TAGGED + "<|end|>", TEXT + "<|end|>\n<|endoftext|>"],  # Phi-3 closes the conversation with eos
}


@pytest.fixture(scope="module")
def family_tokenizers():
    examples = tool_calling_dataset(12)
    return {name: family_tokenizer(family, examples, 512) for name, family in FAMILIES.items()}


def _prepared(family_tokenizers, name):
    tokenizer = copy.deepcopy(family_tokenizers[name])
    return tokenizer, prepare_tokenizer(tokenizer)


def _trained_spans(tokenizer, row) -> list[str]:
    spans, start = [], None
    for position, label in enumerate([*row["labels"], IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = position
        elif label == IGNORE_INDEX and start is not None:
            spans.append(tokenizer.decode(row["input_ids"][start:position]))
            start = None
    return spans


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_gets_its_format_from_its_own_template(family_tokenizers, name):
    _, fmt = _prepared(family_tokenizers, name)
    assert fmt.name == FAMILIES[name].expected_format


@pytest.mark.parametrize("name", FAMILIES)
def test_exactly_the_assistant_output_and_its_end_of_turn_carry_loss(family_tokenizers, name):
    tokenizer, fmt = _prepared(family_tokenizers, name)
    row = tokenize_example(tokenizer, normalize_example(MULTI_TURN), 0, 4096, fmt)
    assert _trained_spans(tokenizer, row) == EXPECTED_SPANS[name]
    prompt_text = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"], strict=True)
                                    if label == IGNORE_INDEX])  # fmt: skip
    assert SYSTEM in prompt_text and "Mark task_7 as complete" in prompt_text and "create_task" in prompt_text


@pytest.mark.parametrize("name", ["llama3", "qwen2.5", "qwen3", "gemma3", "phi3"])
def test_where_trl_ships_a_training_template_our_mask_is_its_generation_mask(family_tokenizers, name):
    """TRL's `{% generation %}` markers are the reference: the same tokens, up to whitespace after the turn.
    (TRL has no training version of Llama 3.1 / 3.2's or Unsloth's Mistral template.)"""
    from trl.chat_template_utils import has_generation_markers

    tokenizer, fmt = _prepared(family_tokenizers, name)
    assert has_generation_markers(tokenizer.chat_template)
    example = normalize_example(MULTI_TURN)
    row = tokenize_example(tokenizer, example, 0, 4096, fmt)
    reference = tokenizer.apply_chat_template(
        chat_messages(example["messages"]), tools=example["tools"], tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True,
    )  # fmt: skip
    assert row["input_ids"] == list(reference["input_ids"])
    ours = [label != IGNORE_INDEX for label in row["labels"]]
    for token, mine, theirs in zip(row["input_ids"], ours, reference["assistant_masks"], strict=True):
        if mine != bool(theirs):
            assert tokenizer.decode([token]).strip() == "", f"{name}: {tokenizer.decode([token])!r} differs"


@pytest.mark.parametrize("name", ["llama3", "qwen2.5", "gemma3"])
def test_an_assistant_turn_with_weight_0_carries_no_loss(family_tokenizers, name):
    tokenizer, fmt = _prepared(family_tokenizers, name)
    example = normalize_example(copy.deepcopy(MULTI_TURN))
    example["messages"][2]["weight"] = 0  # the tool call is context, only the final answer is trained
    row = tokenize_example(tokenizer, example, 0, 4096, fmt)
    assert _trained_spans(tokenizer, row) == EXPECTED_SPANS[name][1:]
    example["messages"][4]["weight"] = 0
    with pytest.raises(FormattingError, match="no token carries loss"):
        tokenize_example(tokenizer, example, 3, 4096, fmt)


def test_llama_3_1_refuses_parallel_calls_with_the_templates_own_reason(family_tokenizers):
    tokenizer, fmt = _prepared(family_tokenizers, "llama3.1")
    two_calls = call_message("complete_task", {"task_id": "a"})
    two_calls["tool_calls"].append(call_message("complete_task", {"task_id": "b"}, "call_2")["tool_calls"][0])
    example = {"messages": [{"role": "user", "content": "Close a and b"}, two_calls], "tools": TOOLS}
    with pytest.raises(FormattingError, match=r"example 6: .*only supports single tool-calls"):
        tokenize_example(tokenizer, normalize_example(example), 6, 4096, fmt)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_formats_parser_reads_back_what_the_template_writes(family_tokenizers, name):
    """Rendering for training and parsing for evaluation agree on every family (the round trip)."""
    _, fmt = _prepared(family_tokenizers, name)
    output = EXPECTED_SPANS[name][0]
    parsed = FORMATS[fmt.name].parse(output)
    assert [(c.name, c.arguments) for c in parsed.calls] == [("complete_task", {"task_id": "task_7"})]
    assert FORMATS[fmt.name].parse(EXPECTED_SPANS[name][1]).attempted == 0


def test_a_forced_format_overrides_the_guess(family_tokenizers):
    tokenizer = copy.deepcopy(family_tokenizers["qwen2.5"])
    fmt = prepare_tokenizer(tokenizer, "tool_tags")
    row = tokenize_example(tokenizer, normalize_example(MULTI_TURN), 0, 4096, fmt)
    assert fmt.name == "tool_tags" and _trained_spans(tokenizer, row) == EXPECTED_SPANS["qwen2.5"]
    assert "You can call these tools" in tokenizer.decode(row["input_ids"])
    with pytest.raises(FormattingError, match=r"spec.toolCallFormat: 'xml' is not one of auto, hermes"):
        prepare_tokenizer(copy.deepcopy(family_tokenizers["qwen2.5"]), "xml")


# Native formats of the other templates TRL ships a response parser for (template file -> format).
TRL_NATIVE_TEMPLATES = {
    "qwen3_5_nothink": "qwen3_xml",
    "gemma4": "gemma4",
    "gptoss": "gptoss",
    "glm4moe": "glm4moe",
    "lfm2_2_5": "lfm2",
    "qwen3_instruct_2507": "hermes",
}


@pytest.mark.parametrize(("template", "expected"), TRL_NATIVE_TEMPLATES.items())
def test_templates_trl_parses_train_in_their_own_format_and_read_back(template, expected):
    """Each is TRL's copy of the hub template; the call in the trained span is read back with TRL's own
    response template, and the final answer's span is plain text."""
    from pathlib import Path

    import trl
    from tooltune_trainer.tiny import corpus, train_tokenizer

    text = (Path(trl.__file__).parent / "chat_templates" / f"{template}.jinja").read_text()
    tokenizer = train_tokenizer(corpus(tool_calling_dataset(4)), 400, ["<pad>", "<eos>"], text,
                                bos=None, eos="<eos>", pad="<pad>")  # fmt: skip
    fmt = prepare_tokenizer(tokenizer)
    row = tokenize_example(tokenizer, normalize_example(MULTI_TURN), 0, 8192, fmt)  # checks the round trip
    call, answer = _trained_spans(tokenizer, row)
    assert fmt.name == expected and fmt.native
    calls = [(c.name, c.arguments) for c in fmt.parse(call).calls]
    assert calls == [("complete_task", {"task_id": "task_7"})]
    assert TEXT in answer and fmt.parse(answer).attempted == 0


def test_the_spec_names_every_format_the_trainer_knows():
    from tooltune_api.models import ToolCallFormatName
    from tooltune_trainer.tool_formats import FORMAT_NAMES

    assert sorted(ToolCallFormatName) == sorted(FORMAT_NAMES)


def test_mistral_calls_are_read_as_mistral_writes_them():
    """`[TOOL_CALLS] [{"name": ..., "arguments": {...}}]</s>`, as Unsloth's Ollama template for Mistral v0.3
    renders an assistant's calls (unsloth/ollama_template_mappers.py)."""
    mistral = FORMATS["mistral"]
    text = (
        '[TOOL_CALLS] [{"name": "complete_task", "arguments": {"task_id": "t1"}}, '
        '{"name": "list_tasks", "arguments": {}}]</s>'
    )
    parsed = mistral.parse(text)
    assert [(c.name, c.arguments) for c in parsed.calls] == [
        ("complete_task", {"task_id": "t1"}),
        ("list_tasks", {}),
    ]
    assert mistral.parse('[TOOL_CALLS] [{"name": "complete_task", "arguments": {"task_id": </s>').malformed
    assert mistral.parse("All done.</s>").attempted == 0


END_OF_TURN = {"llama3": "<|eot_id|>", "llama3.1": "<|eot_id|>", "llama3.2": "<|eot_id|>",
               "qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>", "mistral": "</s>", "gemma3": "<end_of_turn>",
               "phi3": "<|end|>"}  # fmt: skip


@pytest.mark.parametrize("name", FAMILIES)
def test_generation_stops_at_the_templates_end_of_turn_token(family_tokenizers, name):
    """Gemma's eos is <eos> but its turns end with <end_of_turn>: generation must stop at the turn's end."""
    from tooltune_trainer.formatting import end_of_turn_id

    tokenizer, fmt = _prepared(family_tokenizers, name)
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer, fmt)) == END_OF_TURN[name]
