"""Tool-call evaluation of a trained model: greedy answers on held-out turns, scored, plus the smoke prompts.

Each validation example contributes its first assistant turn: the model sees the conversation before it
(with the tools) and answers greedily. Scores, over turns that expect a call:
  tool_name_accuracy     the called tool names equal the expected ones, in order
  arguments_exact_match  names and parsed arguments equal the expected calls exactly
  no_call_rate           the answer attempts no call at all
and valid_json_rate over every call the model attempted (well-formed JSON / attempted), false_call_rate
over turns that expect plain text. Answers are read, as generated through their end-of-turn token, with the
parser of the model's tool-call format (`tool_formats`), the one the training data was checked with.

The breakdown says where the misses are. Expected calls are paired with the answer's calls by position:
  perTool      per expected tool: calls expected, answered with that tool, answered exactly
  perArgument  per `tool.argument`, over calls answered with the right tool: expected, right, missing,
               wrong value, and extra (given although not expected)
  confusions   (expected, called) pairs that differ, with counts: `(none)` where no call was expected or
               made, `(invalid)` for an attempt that does not parse
The same turns, decoding and scoring serve the base model (before training), the tuned model and each
reference (`references.py`); `agreement` compares two models' answers turn by turn.
"""

from __future__ import annotations

import json
import time
from collections import Counter
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
    return score_parsed(turns, [fmt.parse(answer) for answer in answers])


def score_parsed(turns: list[Turn], parsed: list[ParsedAnswer]) -> dict[str, Any]:
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


NONE, INVALID = "(none)", "(invalid)"


def breakdown(turns: list[Turn], parsed: list[ParsedAnswer]) -> dict[str, Any]:
    """Per tool, per argument field and tool confusions (see the module docstring)."""
    tools: dict[str, Counter[str]] = {}
    fields: dict[str, Counter[str]] = {}
    confusions: Counter[tuple[str, str]] = Counter()
    for turn, answer in zip(turns, parsed, strict=True):
        called = [call.name for call in answer.calls] + [INVALID] * len(answer.malformed)
        expected = [call.name for call in turn.expected]
        for position in range(max(len(expected), len(called))):
            want = expected[position] if position < len(expected) else NONE
            got = called[position] if position < len(called) else NONE
            if want != got:
                confusions[want, got] += 1
        for position, want_call in enumerate(turn.expected):
            got_call = answer.calls[position] if position < len(answer.calls) else None
            counts = tools.setdefault(want_call.name, Counter())
            counts["calls"] += 1
            if got_call is None or got_call.name != want_call.name:
                continue
            counts["rightTool"] += 1
            counts["exactMatch"] += got_call == want_call
            for name, value in want_call.arguments.items():
                field = fields.setdefault(f"{want_call.name}.{name}", Counter())
                field["expected"] += 1
                if name not in got_call.arguments:
                    field["missing"] += 1
                elif _same_value(got_call.arguments[name], value):
                    field["right"] += 1
                else:
                    field["wrong"] += 1
            for name in set(got_call.arguments) - set(want_call.arguments):
                fields.setdefault(f"{want_call.name}.{name}", Counter())["extra"] += 1
    field_keys = ("expected", "right", "missing", "wrong", "extra")
    return {
        "perTool": {
            name: {key: counts[key] for key in ("calls", "rightTool", "exactMatch")}
            for name, counts in sorted(tools.items())
        },
        "perArgument": {
            name: {key: counts[key] for key in field_keys} for name, counts in sorted(fields.items())
        },
        "confusions": [
            {"expected": want, "called": got, "count": count}
            for (want, got), count in sorted(confusions.items(), key=lambda item: (-item[1], item[0]))
        ],
    }


def _same_value(one: Any, other: Any) -> bool:
    """Equal as JSON values, as ToolCall compares arguments (True is not 1)."""
    return ToolCall("", {"value": one}) == ToolCall("", {"value": other})


def same_calls(one: ParsedAnswer, other: ParsedAnswer) -> bool:
    """Whether two answers call the same tools with the same arguments, or both call none."""
    if not one.attempted and not other.attempted:
        return True
    return not one.malformed and not other.malformed and one.calls == other.calls


def agreement(ones: list[ParsedAnswer], others: list[ParsedAnswer]) -> float | None:
    """Share of turns on which two models' answers make the same calls (same_calls)."""
    return _share(sum(same_calls(a, b) for a, b in zip(ones, others, strict=True)), len(ones))


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


@dataclass
class ModelEvaluation:
    """One model's answers to the evaluation turns, parsed, and its part of the report."""

    report: dict[str, Any]
    parsed: list[ParsedAnswer]
    answers: list[str]  # as generated


def evaluate(
    model: Any,
    tokenizer: Any,
    turns: list[Turn],
    smoke_prompts: list[str],
    context_examples: list[dict[str, Any]],
    fmt: ToolCallFormat = FORMATS[HERMES],
) -> ModelEvaluation:
    """Greedy answers to the turns and the smoke prompts, scored: metrics, breakdown, error kinds,
    per-example samples, wrong answers, the smoke prompts' answers and the seconds it took."""
    started = time.monotonic()
    system, tools = smoke_prompts_context(context_examples)
    smoke = [([*system, {"role": "user", "content": prompt}], tools) for prompt in smoke_prompts]
    answers = generate_answers(model, tokenizer, [(t.messages, t.tools) for t in turns] + smoke)
    turn_answers, smoke_answers = answers[: len(turns)], answers[len(turns) :]
    parsed = [fmt.parse(answer) for answer in turn_answers]
    samples = [
        {"prompt": prompt_of(t), "expected": _calls_json(t.expected) or t.expected_text, "answer": answer}
        for t, answer in zip(turns, turn_answers, strict=True)
    ][:SAMPLES_IN_REPORT]
    report = scored_report(turns, parsed, turn_answers, context_examples)
    return ModelEvaluation(
        {
            "toolCallFormat": fmt.name,
            **report,
            "smokeTests": [
                {"prompt": prompt, "answer": answer, "toolCalls": _calls_json(fmt.parse(answer).calls)}
                for prompt, answer in zip(smoke_prompts, smoke_answers, strict=True)
            ],
            "samples": samples,
            "seconds": round(time.monotonic() - started, 1),
        },
        parsed,
        turn_answers,
    )


def scored_report(
    turns: list[Turn], parsed: list[ParsedAnswer], answers: list[str], train: list[dict[str, Any]]
) -> dict[str, Any]:
    """metrics, breakdown, errors and wrongAnswers of parsed answers (answers: their text, as shown)."""
    wrong = wrong_answers(turns, parsed, answers, train)
    return {
        "metrics": score_parsed(turns, parsed),
        "breakdown": breakdown(turns, parsed),
        "errors": count_kinds([answer["errors"] for answer in wrong]),
        "wrongAnswers": wrong,
    }


def prompt_of(turn: Turn) -> str:
    """The turn's last user message."""
    return next((m.get("content") for m in reversed(turn.messages) if m.get("role") == "user"), "") or ""


def wrong_answers(
    turns: list[Turn], parsed: list[ParsedAnswer], answers: list[str], train: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every wrong answer with the kinds of error it has (answer_errors.classify)."""
    seen = training_values(train)
    wrong = []
    for turn, answer, text in zip(turns, parsed, answers, strict=True):
        errors = classify(turn.messages, turn.expected, answer, seen)
        if errors:
            expected = _calls_json(turn.expected) or turn.expected_text
            wrong.append({"prompt": prompt_of(turn), "expected": expected, "answer": text, "errors": errors})
    return wrong


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
