"""The built-in tiny base model `tooltune/tiny-llama`: a small Llama and a BPE tokenizer built on the spot.

It stands in for a hub model where there is no GPU or network: the tokenizer is trained on the job's
own examples (message text, tool calls and tool schemas), the weights are random, and the chat
template renders tools into the system turn and tool calls as `<tool_call>{...}</tool_call>`, with
`{% generation %}` blocks so the loss covers the assistant's output only. Digits are single tokens so
dates and ids are spelled out and can be copied from the prompt instead of memorised as whole words.
The build is deterministic and cached under the workdir, keyed by a hash of its inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tooltune_api import TINY_MODEL

BOS, EOT, PAD = "<|begin|>", "<|end|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
SPECIAL_TOKENS = [PAD, BOS, EOT, *ROLE_TOKENS, "<tool_call>", "</tool_call>"]
BUILD_VERSION = 1  # bump when the template or architecture changes, so cached builds are rebuilt

# Tools are rendered compactly (name and parameters, `?` marking optional ones): a tiny model gains
# nothing from descriptions, and every token of the schema is repeated in every example.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(system=none) -%}"
    "{%- if messages and messages[0].role == 'system' -%}"
    "{%- set ns.system = messages[0].content -%}{%- endif -%}"
    "{%- if ns.system is not none or tools -%}"
    "<|system|>{{ ns.system if ns.system is not none else '' }}"
    "{%- if tools -%}{{ '\\ntools:' }}"
    "{%- for tool in tools -%}{%- set fn = tool.function if tool.function is defined else tool -%}"
    "{{ '\\n' ~ fn.name ~ '(' }}"
    "{%- set params = fn.parameters if fn.parameters is defined and fn.parameters else {} -%}"
    "{%- set required = params.required if params.required is defined else [] -%}"
    "{%- for name in (params.properties if params.properties is defined else {}) -%}"
    "{{ name }}{{ '' if name in required else '?' }}{{ ', ' if not loop.last else '' }}"
    "{%- endfor -%})"
    "{%- endfor -%}{%- endif -%}"
    "<|end|>"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}<|user|>{{ message.content }}<|end|>"
    "{%- elif message.role == 'tool' -%}<|tool|>{{ message.content }}<|end|>"
    "{%- elif message.role == 'assistant' -%}<|assistant|>"
    "{%- generation -%}"
    "{{ message.content if message.content else '' }}"
    "{%- for call in (message.tool_calls if message.tool_calls else []) -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    '<tool_call>{"name": "{{ fn.name }}", "arguments": '
    "{{ fn.arguments if fn.arguments is string else fn.arguments | tojson }}}</tool_call>"
    "{%- endfor -%}"
    "<|end|>"
    "{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


@dataclass(frozen=True)
class TinyConfig:
    """Shape of the tiny model. Defaults train the Task API example on two CPU cores in minutes."""

    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 1024
    seed: int = 0


def is_tiny(base_model: str) -> bool:
    return base_model == TINY_MODEL


def corpus(examples: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Every piece of text the template can emit for these examples, in a stable order."""
    for example in examples:
        for tool in example.get("tools") or []:
            function = tool.get("function", tool)
            yield str(function.get("name", ""))
            yield " ".join(str(name) for name in (function.get("parameters") or {}).get("properties", {}))
        for message in example.get("messages", []):
            if isinstance(message.get("content"), str):
                yield message["content"]
            for call in message.get("tool_calls") or []:
                function = call.get("function", {})
                arguments = function.get("arguments", "")
                yield f'{{"name": "{function.get("name", "")}", "arguments": {arguments}}}'


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: list[str] = SPECIAL_TOKENS,
    chat_template: str = CHAT_TEMPLATE,
    bos: str | None = BOS,
    eos: str = EOT,
    pad: str = PAD,
) -> Any:
    """A byte-level BPE tokenizer with single-digit tokens and the template's special tokens (by default the
    tiny model's; the tests give it a model family's own tokens and template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, pad_token=pad, model_max_length=1024
    )
    wrapped.chat_template = chat_template
    return wrapped


def build_key(examples: list[dict[str, Any]], config: TinyConfig) -> str:
    digest = hashlib.sha256(json.dumps([BUILD_VERSION, asdict(config), CHAT_TEMPLATE]).encode())
    for text in corpus(examples):
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def llama_config(
    tokenizer: Any, hidden_size: int, intermediate_size: int, layers: int, heads: int, max_positions: int
) -> Any:
    """A tiny Llama's configuration for this tokenizer: tied embeddings, no grouped-query attention, and
    the tokenizer's BOS, end-of-turn and pad ids (the tiny model's and the pre-trained tiny base's)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model(examples: list[dict[str, Any]], dest: Path, config: TinyConfig | None = None) -> Path:
    """Train the tokenizer on the examples, initialise a random Llama and save both into dest."""
    import torch
    from transformers import LlamaForCausalLM

    config = config or TinyConfig()
    tokenizer = train_tokenizer(corpus(examples), config.vocab_size)
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(
        llama_config(
            tokenizer, config.hidden_size, config.intermediate_size, config.num_hidden_layers,
            config.num_attention_heads, config.max_position_embeddings,
        )
    )  # fmt: skip
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = dest.with_name(dest.name + ".partial")
    # Not model.save_pretrained: in a process group it writes on global rank 0 only, and each node of a
    # multi-node job builds its own copy (its local rank 0 does, on the node's own disk).
    from safetensors.torch import save_model

    tmp.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})  # tied weights stored once
    tokenizer.save_pretrained(tmp)
    tmp.rename(dest)  # a half-written build is never mistaken for a cached one
    return dest


def ensure_tiny_model(
    examples: list[dict[str, Any]], workdir: Path, config: TinyConfig | None = None
) -> Path:
    """The cached build for these examples under workdir, built first if absent."""
    config = config or TinyConfig()
    dest = workdir / "models" / f"tiny-llama-{build_key(examples, config)}"
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    return build_tiny_model(examples, dest, config)


def load_tokenizer(base_model: str, examples: list[dict[str, Any]] | None = None) -> Any:
    """The tokenizer of base_model; for the tiny model, one trained on the examples (no files written)."""
    if is_tiny(base_model):
        return train_tokenizer(corpus(examples or []), TinyConfig().vocab_size)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)
