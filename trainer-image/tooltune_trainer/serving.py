"""The hand-off to serving: a model card in `final/README.md` that says how to serve what was trained.

The chat template the model was trained with is saved beside it (`chat_template.jinja`, by the tokenizer);
the card names it, the vLLM tool-call parser of the model's tool-call format, and the Ollama / GGUF route
where one was exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tooltune_api.models import ToolTuneJobSpec

from tooltune_trainer.tool_formats import TOOL_TAGS, ToolCallFormat

MODEL_CARD = "README.md"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def model_card(spec: ToolTuneJobSpec, fmt: ToolCallFormat, saved: list[str], scores: dict[str, Any]) -> str:
    lora = not spec.hyperparameters.full_fine_tune
    weights = "merged/" if "merged" in saved else "." if not lora else None
    lines = [
        "# Tool-calling model trained by tooltune",
        "",
        f"- Base model: `{spec.base_model}`",
        f"- Weights: {'a LoRA adapter on the base model' if lora else 'all weights'}"
        + (" (merged weights in `merged/`)" if "merged" in saved else ""),
        f"- Tool-call format: `{fmt.name}` — {fmt.summary}",
        f"- Chat template: `{CHAT_TEMPLATE_FILE}` (exactly the one used in training and evaluation)",
        "- Scores on the validation split: "
        + ", ".join(f"{key} {value}" for key, value in scores.items() if isinstance(value, float)),
        "",
        "## Serve it with vLLM",
        "",
        "```sh",
    ]
    parser = fmt.vllm_parser or "<the parser vLLM documents for this model family>"
    template = f"--chat-template ./{CHAT_TEMPLATE_FILE} --enable-auto-tool-choice --tool-call-parser {parser}"
    if weights is None:
        lines.append(
            f"vllm serve {spec.base_model} --enable-lora --lora-modules tooltune=. --max-lora-rank "
            f"{spec.hyperparameters.lora.r} {template}"
        )
    else:
        lines.append(f"vllm serve ./{weights} {template}")
    lines.append("```")
    if fmt.name == TOOL_TAGS:
        lines += [
            "",
            "The base model's template has no tool support, so the tools are written into the system turn "
            "and each call as a `<tool_call>{json}</tool_call>` block in the answer: `chat_template.jinja` "
            "does this for any OpenAI-style request with `tools`, and vLLM's `hermes` parser reads the calls "
            "back. That parser looks for `<tool_call>` and `</tool_call>` as tokens of the vocabulary; where "
            "the base model has no such tokens, read the `<tool_call>` blocks from the text instead.",
        ]
    if "model.gguf" in saved:
        lines += [
            "",
            "## Ollama / llama.cpp",
            "",
            "`model.gguf` holds the merged weights: `llama-server -m model.gguf --jinja --chat-template-file "
            f"{CHAT_TEMPLATE_FILE}`, or an Ollama Modelfile with `FROM ./model.gguf`.",
        ]
    return "\n".join(lines) + "\n"


def write_model_card(
    final: Path, spec: ToolTuneJobSpec, fmt: ToolCallFormat, saved: list[str], scores: dict[str, Any]
) -> Path:
    path = final / MODEL_CARD
    path.write_text(model_card(spec, fmt, saved, scores))
    return path
