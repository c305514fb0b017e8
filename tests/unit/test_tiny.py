"""The built-in tiny model: deterministic tokenizer, tool-aware template TRL accepts, cached build."""

from __future__ import annotations

import json

from tooltune_api import TINY_MODEL
from tooltune_trainer.tiny import (
    EOT,
    TinyConfig,
    corpus,
    ensure_tiny_model,
    is_tiny,
    load_tokenizer,
    train_tokenizer,
)

from tests.fixtures.tiny import TOOLS, tool_calling_dataset

SMALL = TinyConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


def test_tokenizer_training_is_deterministic(tool_calling_examples):
    first = train_tokenizer(corpus(tool_calling_examples), 512)
    second = train_tokenizer(corpus(tool_calling_examples), 512)
    assert first.get_vocab() == second.get_vocab()
    text = "Create a task to pay the rent by 2024-03-05"
    assert first.encode(text) == second.encode(text)


def test_digits_are_single_tokens_so_dates_and_ids_can_be_copied(tiny_tokenizer):
    tokens = tiny_tokenizer.tokenize("due 2024-03-05 task_17")
    digits = [token for token in tokens if any(ch.isdigit() for ch in token)]
    assert digits == ["2", "0", "2", "4", "0", "3", "0", "5", "1", "7"]


def test_template_renders_tools_in_the_system_turn_and_calls_in_tags(tiny_tokenizer, tool_calling_examples):
    text = tiny_tokenizer.apply_chat_template(
        tool_calling_examples[0]["messages"], tools=TOOLS, tokenize=False
    )
    system, rest = text.split("<|end|>", 1)
    assert system.startswith("<|begin|><|system|>")
    assert "\ncreate_task(title, due_date?)\nlist_tasks(due_before?)\ncomplete_task(task_id)" in system
    call = tool_calling_examples[0]["messages"][2]["tool_calls"][0]["function"]
    expected = f'<tool_call>{{"name": "create_task", "arguments": {call["arguments"]}}}</tool_call>{EOT}'
    assert rest.endswith(f"<|assistant|>{expected}")
    prompt = tiny_tokenizer.apply_chat_template(
        tool_calling_examples[0]["messages"][:2], tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|assistant|>") and text.startswith(prompt)


def test_template_passes_trls_assistant_only_loss_checks(tiny_tokenizer):
    from trl.chat_template_utils import (
        has_generation_markers,
        is_chat_template_prefix_preserving,
        is_chat_template_stop_token_trained,
    )

    assert has_generation_markers(tiny_tokenizer.chat_template)
    assert is_chat_template_prefix_preserving(tiny_tokenizer)
    assert is_chat_template_stop_token_trained(tiny_tokenizer)
    assert tiny_tokenizer.eos_token == EOT and tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id


def test_dict_arguments_render_as_json(tiny_tokenizer):
    message = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}
    text = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "x"}, message], tokenize=False)
    assert '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>' in text


def test_build_is_cached_per_dataset_and_loadable(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    examples = tool_calling_dataset(8)
    built = ensure_tiny_model(examples, tmp_path, SMALL)
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(examples, tmp_path, SMALL) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    other = ensure_tiny_model(tool_calling_dataset(8, seed=1), tmp_path, SMALL)
    assert other != built
    assert not list(tmp_path.glob("models/*.partial"))

    model = AutoModelForCausalLM.from_pretrained(built)
    tokenizer = AutoTokenizer.from_pretrained(built)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    assert model.config.hidden_size == SMALL.hidden_size
    assert tokenizer.chat_template and json.loads((built / "config.json").read_text())["tie_word_embeddings"]


def test_same_examples_give_the_same_weights(tmp_path):
    import torch
    from safetensors.torch import load_file

    examples = tool_calling_dataset(8)
    first = ensure_tiny_model(examples, tmp_path / "a", SMALL)
    second = ensure_tiny_model(examples, tmp_path / "b", SMALL)
    left, right = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_load_tokenizer_for_the_reserved_name(tool_calling_examples):
    assert is_tiny(TINY_MODEL) and not is_tiny("unsloth/llama-3-8b-Instruct-bnb-4bit")
    tokenizer = load_tokenizer(TINY_MODEL, tool_calling_examples)
    assert "<tool_call>" in tokenizer.get_vocab() and tokenizer.chat_template
