"""Tool-call evaluation of a trained model: greedy answers on held-out turns, scored, plus the smoke prompts.

Each validation example contributes its first assistant turn: the model sees the conversation before it
(with the tools) and answers greedily. Scores, over turns that expect a call:
  tool_name_accuracy     the called tool names equal the expected ones, in order
  arguments_exact_match  names and parsed arguments equal the expected calls exactly
  no_call_rate           the answer attempts no call at all
and valid_json_rate over every call the model attempted (well-formed JSON / attempted), false_call_rate
over turns that expect plain text. Answers are read, as generated through their end-of-turn token, with the
parser of the model's tool-call format (`tool_formats`), the one the training data was checked with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tooltune_trainer.answer_errors import classify, count_kinds, training_values
from tooltune_trainer.formatting import chat_messages, expected_calls, normalize_example
from tooltune_trainer.tool_formats import FORMATS, HERMES, ParsedAnswer, ToolCall, ToolCallFormat

MAX_NEW_TOKENS = 128
GENERATION_BATCH = 16
SAMPLES_IN_REPORT = 100


@dataclass
class Turn:
    messages: list[dict[str, Any]]  # the conversation before the assistant answers
    tools: list[dict[str, Any]]
    expected: list[ToolCall]
    expected_text: str


def evaluation_turns(examples: list[dict[str, Any]]) -> list[Turn]:
    turns = []
    for example in examples:
        example = normalize_example(example)
        messages = example["messages"]
        position = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
        if position is None:
            continue
        answer = messages[position]
        turns.append(
            Turn(messages[:position], example["tools"], expected_calls(answer), answer.get("content") or "")
        )
    return turns


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[str]:
    """Greedy answers to (messages, tools) prompts, decoded through the first end-of-turn token."""
    import torch

    stop = _stop_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop))
    device = next(model.parameters()).device
    answers = []
    was_training = model.training
    model.eval()
    for start in range(0, len(prompts), GENERATION_BATCH):
        batch = [
            tokenizer.apply_chat_template(
                chat_messages(messages),
                tools=tools or None,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
            )["input_ids"]
            for messages, tools in prompts[start : start + GENERATION_BATCH]
        ]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in batch], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=sorted(stop),
                pad_token_id=pad,
            )
        for row in output[:, width:].tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in stop), len(row))
            answers.append(tokenizer.decode(row[:end], skip_special_tokens=False).strip())
    model.train(was_training)
    return answers


def score(turns: list[Turn], answers: list[str], fmt: ToolCallFormat = FORMATS[HERMES]) -> dict[str, Any]:
    parsed: list[ParsedAnswer] = [fmt.parse(answer) for answer in answers]
    with_call = [(t, p) for t, p in zip(turns, parsed, strict=True) if t.expected]
    without_call = [(t, p) for t, p in zip(turns, parsed, strict=True) if not t.expected]
    attempted = sum(p.attempted for p in parsed)
    return {
        "examples": len(turns),
        "expectedCalls": len(with_call),
        "toolNameAccuracy": _share(
            sum([c.name for c in p.calls] == [c.name for c in t.expected] for t, p in with_call),
            len(with_call),
        ),
        "argumentsExactMatch": _share(
            sum(p.calls == t.expected and not p.malformed for t, p in with_call),
            len(with_call),
        ),
        "validJsonRate": _share(sum(len(p.calls) for p in parsed), attempted),
        "noCallRate": _share(sum(p.attempted == 0 for _, p in with_call), len(with_call)),
        "falseCallRate": _share(sum(p.attempted > 0 for _, p in without_call), len(without_call)),
    }


def _share(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


def _calls_json(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"name": c.name, "arguments": c.arguments} for c in calls]


def smoke_prompts_context(
    examples: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system turn and tools the smoke prompts are asked with: the first example's that has tools."""
    for example in examples:
        if example.get("tools"):
            first = example["messages"][0]
            return ([first] if first.get("role") == "system" else []), example["tools"]
    return [], []


def evaluate(
    model: Any,
    tokenizer: Any,
    validation: list[dict[str, Any]],
    smoke_prompts: list[str],
    context_examples: list[dict[str, Any]],
    max_examples: int | None = None,
    fmt: ToolCallFormat = FORMATS[HERMES],
) -> dict[str, Any]:
    """The evaluation report: scores, per-example samples and the smoke prompts' answers."""
    turns = evaluation_turns(validation)[:max_examples]
    system, tools = smoke_prompts_context(context_examples or validation)
    smoke = [([*system, {"role": "user", "content": prompt}], tools) for prompt in smoke_prompts]
    answers = generate_answers(model, tokenizer, [(t.messages, t.tools) for t in turns] + smoke)
    turn_answers, smoke_answers = answers[: len(turns)], answers[len(turns) :]
    samples = [
        {
            "prompt": next((m.get("content") for m in reversed(t.messages) if m.get("role") == "user"), ""),
            "expected": _calls_json(t.expected) or t.expected_text,
            "answer": answer,
        }
        for t, answer in zip(turns, turn_answers, strict=True)
    ][:SAMPLES_IN_REPORT]
    wrong = wrong_answers(turns, turn_answers, context_examples, fmt)
    return {
        "toolCallFormat": fmt.name,
        "metrics": score(turns, turn_answers, fmt),
        "errors": count_kinds([answer["errors"] for answer in wrong]),
        "smokeTests": [
            {"prompt": prompt, "answer": answer, "toolCalls": _calls_json(fmt.parse(answer).calls)}
            for prompt, answer in zip(smoke_prompts, smoke_answers, strict=True)
        ],
        "samples": samples,
        "wrongAnswers": wrong,
    }


def wrong_answers(
    turns: list[Turn],
    answers: list[str],
    train: list[dict[str, Any]],
    fmt: ToolCallFormat = FORMATS[HERMES],
) -> list[dict[str, Any]]:
    """Every wrong answer with the kinds of error it has (answer_errors.classify)."""
    seen = training_values(train)
    wrong = []
    for turn, answer in zip(turns, answers, strict=True):
        errors = classify(turn.messages, turn.expected, fmt.parse(answer), seen)
        if errors:
            prompt = next((m.get("content") for m in reversed(turn.messages) if m.get("role") == "user"), "")
            expected = _calls_json(turn.expected) or turn.expected_text
            wrong.append({"prompt": prompt, "expected": expected, "answer": answer, "errors": errors})
    return wrong


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
