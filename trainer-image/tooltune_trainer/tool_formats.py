"""Tool-call formats: how a model family is shown its tools and writes its calls, picked from its tokenizer.

- `hermes`: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>` blocks. Qwen 2.5 / 3, Hermes and
  `tooltune/tiny-llama`; vLLM `--tool-call-parser hermes`.
- `llama3_json`: one bare `{"name": …, "parameters": {…}}` per turn. Llama 3.1 / 3.2 / 3.3; vLLM
  `llama3_json`.
- `mistral`: `[TOOL_CALLS] [{"name": …, "arguments": {…}}]`. Mistral templates that render tools; vLLM
  `mistral`.
- `tool_tags`, the lab's format for templates without tool support (Llama 3.0, Gemma 2 / 3, Phi-3 / 4,
  Unsloth's Mistral): the tools in the system turn, each call as a `<tool_call>` block in the assistant's
  text, each tool result as a user turn; vLLM `hermes`.

A template renders tools natively when TRL's `supports_tool_calling` says so; which native format it writes is
read off a probe rendering. Every other template gets `tool_tags` from a Jinja prologue (`tool_tags.jinja`)
that rewrites the messages and hands them to the family's own template. The prologue is part of the chat
template the model is trained, evaluated and served with, so all three see the same text.

Answers are parsed with transformers' response parsing (`transformers.utils.chat_parsing.parse_response`) and
the response templates TRL ships for the `<tool_call>` and Llama 3.1 formats; Mistral's JSON list is read
directly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUTO = "auto"
HERMES, LLAMA3_JSON, MISTRAL, TOOL_TAGS = "hermes", "llama3_json", "mistral", "tool_tags"


class FormattingError(ValueError):
    """An example or chat template that cannot be trained as asked; the message names which and why."""


@dataclass(frozen=True, eq=False)
class ToolCall:
    """One call. Two calls are equal as JSON compares them: Python's == takes True for 1 and False for 0, a
    tool's schema does not; numbers still compare by value (1 and 1.0 are the same number)."""

    name: str
    arguments: dict[str, Any]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ToolCall) and (self.name, _as_json(self.arguments)) == (
            other.name,
            _as_json(other.arguments),
        )

    __hash__ = None  # type: ignore[assignment]  # arguments are a dict


def _as_json(value: Any) -> Any:
    if isinstance(value, bool):
        return bool, value
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_json(item) for item in value]
    return value


@dataclass
class ParsedAnswer:
    """What a model's answer contains: well-formed calls, and the raw text of call attempts that were not."""

    calls: list[ToolCall] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)

    @property
    def attempted(self) -> int:
        return len(self.calls) + len(self.malformed)


@dataclass(frozen=True)
class ToolCallFormat:
    name: str
    native: bool  # the family's template renders tools and calls itself
    call_marker: str | None  # what starts a call in the output; None: count the calls read
    response_template: str | None  # TRL's response template (trl.chat_template_utils) that reads it
    vllm_parser: str  # vLLM's --tool-call-parser; "" where vLLM documents none we know of
    summary: str

    def parse(self, text: str) -> ParsedAnswer:
        """The calls in an assistant's output, as generated (its end-of-turn token may follow)."""
        try:
            calls = self._read(text)
        except (ValueError, KeyError, TypeError):
            blocks = self._blocks(text)
            if len(blocks) < 2:
                return ParsedAnswer(malformed=[text.strip()] * max(1, self._attempts(text, [])))
            # one broken call among several: read each on its own, so the well-formed ones still count
            each = [self.parse(block) for block in blocks]
            return ParsedAnswer([c for p in each for c in p.calls], [m for p in each for m in p.malformed])
        return ParsedAnswer(
            calls=calls, malformed=[text.strip()] * (self._attempts(text, calls) - len(calls))
        )

    def _blocks(self, text: str) -> list[str]:
        if self.call_marker in (None, "{"):
            return [text]
        marker = str(self.call_marker)
        return [marker + part for part in text.split(marker)[1:]]

    def _attempts(self, text: str, calls: list[ToolCall]) -> int:
        if self.call_marker is None:
            return len(calls)
        if self.call_marker == "{":  # the whole answer is the call
            return max(len(calls), int(text.lstrip().startswith("{")))
        return max(len(calls), text.count(self.call_marker))

    def _read(self, text: str) -> list[ToolCall]:
        if self.response_template is None:  # Mistral's JSON list after [TOOL_CALLS]
            if "[TOOL_CALLS]" not in text:
                return []
            payload = re.sub(r"</s>\s*$", "", text.split("[TOOL_CALLS]", 1)[1]).strip()
            calls = json.loads(payload)
            return [_tool_call(call) for call in (calls if isinstance(calls, list) else [calls])]
        import trl.chat_template_utils
        from transformers.utils.chat_parsing import parse_response

        template = getattr(trl.chat_template_utils, self.response_template)
        message = parse_response(text.strip(), template, prefix="")
        return [_tool_call(call.get("function", call)) for call in message.get("tool_calls") or []]


# Formats of templates TRL ships a response parser for, named after the template family.
TRL_NATIVE = {
    "qwen3_5_template": ToolCallFormat(
        "qwen3_xml", True, "<function=", "qwen3_5_template", "qwen3_coder", "<tool_call> XML (Qwen 3.5+)"
    ),
    "nemotron_3_template": ToolCallFormat(
        "nemotron_3", True, "<function=", "nemotron_3_template", "qwen3_coder", "<tool_call> XML (Nemotron 3)"
    ),
    "gemma4_template": ToolCallFormat(
        "gemma4", True, "<|tool_call>", "gemma4_template", "", "<|tool_call>call:name{...} (Gemma 4)"
    ),
    "gptoss_template": ToolCallFormat(
        "gptoss", True, None, "gptoss_template", "openai", "harmony channels (gpt-oss)"
    ),
    "glm4moe_template": ToolCallFormat(
        "glm4moe", True, "<tool_call>", "glm4moe_template", "glm45", "<tool_call> with <arg_key> (GLM-4.5)"
    ),
    "lfm2_2_5_template": ToolCallFormat(
        "lfm2", True, "<|tool_call_start|>", "lfm2_2_5_template", "", "pythonic calls (LFM2)"
    ),
}
FORMATS = {
    fmt.name: fmt
    for fmt in (
        ToolCallFormat(
            HERMES, True, "<tool_call>", "qwen3_template", "hermes", "<tool_call> JSON (Hermes, Qwen)"
        ),
        ToolCallFormat(LLAMA3_JSON, True, "{", "llama3_template", "llama3_json", "bare JSON (Llama 3.1+)"),
        ToolCallFormat(MISTRAL, True, "[TOOL_CALLS]", None, "mistral", "[TOOL_CALLS] JSON list (Mistral)"),
        ToolCallFormat(
            TOOL_TAGS,
            False,
            "<tool_call>",
            "qwen3_template",
            "hermes",
            "tools in the system turn, <tool_call>",
        ),
        *TRL_NATIVE.values(),
    )
}
FORMAT_NAMES = [AUTO, *FORMATS]


def _tool_call(function: dict[str, Any]) -> ToolCall:
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):  # a template that kept the OpenAI JSON string
        arguments = json.loads(arguments)
    if not isinstance(function["name"], str) or not isinstance(arguments, dict):
        raise TypeError("a call needs a string name and an object of arguments")
    return ToolCall(function["name"], arguments)


# ---------------------------------------------------------------- picking the format

PROBE_NAME, PROBE_KEY, PROBE_VALUE = "probe_tool_7c1e", "probe_key_5d2a", "probe_value_9b3f"


def detect_format(tokenizer: Any) -> ToolCallFormat:
    """The format the tokenizer's chat template writes tool calls in (see the table above)."""
    from trl.chat_template_utils import supports_tool_calling

    if not tokenizer.chat_template:
        raise FormattingError("the base model's tokenizer has no chat template; use a chat (instruct) model")
    if not supports_tool_calling(tokenizer):
        return FORMATS[TOOL_TAGS]
    known = _trl_response_template(tokenizer)
    if known is not None:
        return {"qwen3_template": FORMATS[HERMES], "llama3_template": FORMATS[LLAMA3_JSON]}.get(
            known, TRL_NATIVE.get(known)
        ) or _unsupported(known)
    call = {"type": "function", "function": {"name": PROBE_NAME, "arguments": {PROBE_KEY: PROBE_VALUE}}}
    rendered = _render_probe(tokenizer, [{"role": "user", "content": "hi"}, _assistant_with(call)])
    if "<tool_call>" in rendered:
        return FORMATS[HERMES]
    if "[TOOL_CALLS]" in rendered:
        return FORMATS[MISTRAL]
    if re.search(r'\{"name": "' + PROBE_NAME + '", "parameters": ', rendered):
        return FORMATS[LLAMA3_JSON]
    raise FormattingError(
        "the base model's chat template writes tool calls in a format tooltune cannot parse "
        f"({_excerpt(rendered, PROBE_NAME)!r}); set spec.toolCallFormat: tool_tags to train the lab's format"
    )


def _trl_response_template(tokenizer: Any) -> str | None:
    """The name of TRL's response template for this chat template (TRL recognises templates it ships)."""
    import copy

    import trl.chat_template_utils as trl_templates

    probe = copy.copy(tokenizer)
    try:
        trl_templates.add_response_schema(probe)
    except ValueError:
        return None
    found = getattr(probe, "response_template", None)
    return next((name for name in dir(trl_templates) if getattr(trl_templates, name) is found), None)


def _unsupported(name: str) -> ToolCallFormat:
    raise FormattingError(
        f"the base model's chat template is one TRL parses with {name}, which tooltune does not train yet; "
        "set spec.toolCallFormat: tool_tags to train the lab's format"
    )


def _assistant_with(call: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def _render_probe(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    tool = {"type": "function", "function": {"name": PROBE_NAME, "parameters": {"type": "object"}}}
    try:
        return tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False)
    except Exception as error:  # jinja's errors, or a filter's TypeError
        raise FormattingError(
            f"the base model's chat template fails on a tool call: {type(error).__name__}: {error}; "
            "set spec.toolCallFormat: tool_tags to train the lab's format"
        ) from None


def _excerpt(text: str, around: str) -> str:
    at = max(0, text.find(around) - 40)
    return text[at : at + 120]


def prepare_tokenizer(tokenizer: Any, requested: str = AUTO) -> ToolCallFormat:
    """Pick the format and give the tokenizer the chat template training, evaluation and serving all use.

    TRL's training version of the template replaces the original where TRL has one (its `{% generation %}`
    markers are what the loss mask is tested against); `tool_tags` then wraps it in the lab's prologue.
    """
    from trl.chat_template_utils import get_training_chat_template

    if requested not in FORMAT_NAMES:
        raise FormattingError(f"spec.toolCallFormat: {requested!r} is not one of {', '.join(FORMAT_NAMES)}")
    if not tokenizer.chat_template:
        raise FormattingError("the base model's tokenizer has no chat template; use a chat (instruct) model")
    fmt = detect_format(tokenizer) if requested == AUTO else FORMATS[requested]
    if TOOL_TAGS_MARK in tokenizer.chat_template:  # already prepared (a tooltune model trained again)
        return FORMATS[TOOL_TAGS]
    try:
        training = get_training_chat_template(tokenizer)
    except ValueError:
        training = None
    if training:
        tokenizer.chat_template = training
    if fmt.name == TOOL_TAGS:
        tokenizer.chat_template = tool_tags_template(tokenizer.chat_template, _renders_system(tokenizer))
    return fmt


def _renders_system(tokenizer: Any) -> bool:
    marker = "system_probe_3f8a"
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "system", "content": marker}, {"role": "user", "content": "hi"}], tokenize=False
        )
    except Exception:  # jinja raise_exception("System role not supported") and the like
        return False
    return marker in rendered


# ---------------------------------------------------------------- the lab's format, as a template prologue

TOOL_TAGS_MARK = "tooltune tool_tags"  # the prologue's first comment: a template that already has it
TOOL_TAGS_PROLOGUE = Path(__file__).with_name("tool_tags.jinja")


def tool_tags_template(template: str, system_role: bool) -> str:
    """The family's template behind the lab's prologue; system_role False folds the system turn into the first
    user turn, for templates that refuse or drop a system message (Gemma 2)."""
    prologue = TOOL_TAGS_PROLOGUE.read_text().replace("SYSTEM_ROLE", "true" if system_role else "false")
    return prologue + template
