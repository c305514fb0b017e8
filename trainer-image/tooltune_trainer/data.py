"""Dataset validation and splitting for OpenAI fine-tuning JSONL with tool calls.

A line holds one example: ``{"messages": [...], "tools": [...], "parallel_tool_calls": bool}``;
assistant messages may carry ``tool_calls`` (``function.arguments`` is a JSON *string*) and a
``weight`` of 0 or 1. ``validate_examples`` checks every line and reports each problem with its
line number and a reason that says how to fix it; it also summarises the data (tool-name
distribution, share of examples with and without tool calls, token counts) and warns on likely
personal data. The functions here are pure: ``read_jsonl`` and ``write_jsonl`` are the only I/O.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from jsonschema import Draft202012Validator, SchemaError
from jsonschema import ValidationError as SchemaViolation

Example = dict[str, Any]

ROLES = ("system", "developer", "user", "assistant", "tool")
PREAMBLE_ROLES = {"system", "developer"}  # may only open a conversation
TOP_LEVEL_KEYS = {"messages", "tools", "parallel_tool_calls"}
WEIGHTS = (0, 1)
MAX_PROBLEMS_IN_ERROR = 20  # how many problems str(InvalidDataset) lists before "… and N more"

# Likely personal data. Card numbers must also pass the Luhn check, which rules out most ids.
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD = re.compile(r"(?<![\d+-])\d(?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(
    r"(?<![\w+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]?\d{3,4}(?![\w-])"
    r"|(?<![\w+])\+\d{8,15}(?!\w)"
)
PHONE_DIGITS = range(7, 16)


@dataclass(frozen=True)
class Problem:
    """One finding about the dataset. ``line`` is 1-based; None means the file as a whole."""

    line: int | None
    reason: str

    def __str__(self) -> str:
        return self.reason if self.line is None else f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class PiiFinding:
    line: int
    kind: str  # email | phone | card
    where: str  # e.g. messages[1].content
    masked: str  # enough to find it, not enough to leak it


@dataclass
class Summary:
    lines: int = 0
    examples: int = 0  # valid examples
    invalid_lines: int = 0
    with_tool_calls: int = 0
    without_tool_calls: int = 0
    with_tool_results: int = 0  # multi-turn: a tool message answers a call
    tool_calls: Counter[str] = field(default_factory=Counter)
    tokens: list[int] = field(default_factory=list)  # per valid example, when a token counter was given
    pii: list[PiiFinding] = field(default_factory=list)

    @property
    def share_with_tool_calls(self) -> float:
        return self.with_tool_calls / self.examples if self.examples else 0.0

    @property
    def share_without_tool_calls(self) -> float:
        return self.without_tool_calls / self.examples if self.examples else 0.0

    @property
    def total_tokens(self) -> int | None:
        return sum(self.tokens) if self.tokens else None

    def as_dict(self) -> dict[str, Any]:
        tokens = (
            {
                "total": sum(self.tokens),
                "min": min(self.tokens),
                "max": max(self.tokens),
                "mean": round(sum(self.tokens) / len(self.tokens), 1),
            }
            if self.tokens
            else None
        )
        return {
            "lines": self.lines,
            "examples": self.examples,
            "invalidLines": self.invalid_lines,
            "withToolCalls": self.with_tool_calls,
            "withoutToolCalls": self.without_tool_calls,
            "shareWithToolCalls": round(self.share_with_tool_calls, 4),
            "shareWithoutToolCalls": round(self.share_without_tool_calls, 4),
            "withToolResults": self.with_tool_results,
            "toolCalls": dict(self.tool_calls.most_common()),
            "tokens": tokens,
            "pii": [vars(finding) for finding in self.pii],
        }


@dataclass
class ValidationReport:
    examples: list[Example] = field(default_factory=list)  # parsed valid lines, in file order
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    summary: Summary = field(default_factory=Summary)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": [{"line": p.line, "reason": p.reason} for p in self.problems],
            "warnings": [{"line": w.line, "reason": w.reason} for w in self.warnings],
            "summary": self.summary.as_dict(),
        }


class InvalidDataset(ValueError):
    """The dataset has problems; str() lists the first ones, one per line."""

    def __init__(self, report: ValidationReport, limit: int = MAX_PROBLEMS_IN_ERROR):
        self.report = report
        shown = [str(problem) for problem in report.problems[:limit]]
        if len(report.problems) > limit:
            shown.append(f"… and {len(report.problems) - limit} more problems")
        super().__init__("\n".join(shown))


# ---------------------------------------------------------------- one example


class _LineCheck:
    """Collects the problems and warnings of one line while its example is walked."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, reason: str) -> None:
        self.problems.append(reason)

    def warn(self, reason: str) -> None:
        self.warnings.append(reason)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def _check_tools(tools: Any, check: _LineCheck) -> dict[str, dict[str, Any]]:
    """Return the declared tools' parameter schemas by name."""
    if tools is None:
        return {}
    if not isinstance(tools, list):
        check.problem(f"tools must be an array of tool definitions, got {_type_name(tools)}")
        return {}
    schemas: dict[str, dict[str, Any]] = {}
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict):
            check.problem(
                f'{where} must look like {{"type": "function", "function": {{"name": ..., '
                '"parameters": {...}}}'
            )
            continue
        if tool.get("type", "function") != "function":
            check.problem(f'{where}.type is {tool["type"]!r}; only "function" tools are supported')
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not name:
            check.problem(f"{where}.function.name is missing; give the tool a name")
            continue
        if name in schemas:
            check.problem(f"{where}: tool '{name}' is defined twice; remove the duplicate")
            continue
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            check.problem(
                f"{where}.function.parameters must be a JSON schema object, got {_type_name(parameters)}"
            )
            continue
        schema_error = _schema_error(json.dumps(parameters, sort_keys=True))
        if schema_error:
            check.problem(f"{where}.function.parameters is not a valid JSON schema: {schema_error}")
            continue
        schemas[name] = parameters
    return schemas


@functools.lru_cache(maxsize=256)
def _schema_error(schema: str) -> str | None:
    """Why a JSON schema (as canonical JSON) is invalid, or None. Cached: every line repeats its tools."""
    try:
        Draft202012Validator.check_schema(json.loads(schema))
    except SchemaError as error:
        return error.message
    return None


def _schema_problem(tool: str, error: SchemaViolation) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "required" and not path:
        missing = error.message.split(" is a required property")[0]
        return f"arguments for {tool} miss required parameter {missing}"
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        got = json.dumps(error.instance)
        return f"arguments for {tool}: parameter '{path}' is {got}, expected type {expected}"
    if error.validator == "additionalProperties" and not path:
        return f"arguments for {tool}: {error.message}"
    return (
        f"arguments for {tool}: parameter '{path}': {error.message}"
        if path
        else f"arguments for {tool}: {error.message}"
    )


def _check_arguments(
    tool: str, arguments: Any, schema: dict[str, Any], where: str, check: _LineCheck
) -> None:
    if isinstance(arguments, dict):
        check.problem(f"{where}.function.arguments is an object; it must be a JSON string (json.dumps it)")
        return
    if not isinstance(arguments, str):
        check.problem(
            f"{where}.function.arguments must be a JSON string of an object, got {_type_name(arguments)}"
        )
        return
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as error:
        check.problem(f"{where}.function.arguments is not valid JSON ({error.msg} at column {error.colno})")
        return
    if not isinstance(parsed, dict):
        check.problem(f"{where}.function.arguments must encode a JSON object, got {_type_name(parsed)}")
        return
    violations = Draft202012Validator(schema).iter_errors(parsed)
    for violation in sorted(violations, key=lambda v: [str(part) for part in v.absolute_path]):
        check.problem(f"{where}: {_schema_problem(tool, violation)}")
    properties = schema.get("properties")
    if isinstance(properties, dict) and "additionalProperties" not in schema:
        for name in parsed:
            if name not in properties:
                check.problem(
                    f"{where}: arguments for {tool} pass parameter '{name}' that the tool does not "
                    f"define; remove it or add it to the tool's parameters"
                )


def _check_content(message: dict[str, Any], where: str, check: _LineCheck) -> str | None:
    """Return the message's text (None when it has none); content may be a string or text parts."""
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    check.problem(f'{where}.content must be a string or a list of {{"type": "text", "text": ...}} parts')
    return None


class _Call(NamedTuple):
    """A well-formed tool call: its position in tool_calls, id, tool name and raw arguments."""

    position: int
    id: str | None
    name: str
    arguments: Any


def _check_tool_calls(
    message: dict[str, Any], where: str, tools: dict[str, dict[str, Any]], has_tools: bool, check: _LineCheck
) -> list[_Call]:
    """Check each call; return the well-formed ones."""
    calls = message["tool_calls"]
    if not isinstance(calls, list) or not calls:
        check.problem(f"{where}.tool_calls must be a non-empty array (leave it out when there is no call)")
        return []
    found: list[_Call] = []
    for index, call in enumerate(calls):
        at = f"{where}.tool_calls[{index}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            check.problem(
                f'{at} must look like {{"id": ..., "type": "function", "function": {{"name": ..., '
                '"arguments": "{...}"}}'
            )
            continue
        if call.get("type", "function") != "function":
            check.problem(f'{at}.type is {call["type"]!r}; only "function" calls are supported')
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            check.problem(f"{at}.id must be a string")
            call_id = None
        name = call["function"].get("name")
        if not isinstance(name, str) or not name:
            check.problem(f"{at}.function.name is missing")
            continue
        if name not in tools:
            if has_tools:
                known = ", ".join(sorted(tools)) or "none"
                check.problem(f"{at} calls tool '{name}', which is not in tools (defined: {known})")
            else:
                check.problem(
                    f"{at} calls tool '{name}' but the example has no tools; add its definition to tools"
                )
        else:
            _check_arguments(name, call["function"].get("arguments"), tools[name], at, check)
        found.append(_Call(index, call_id, name, call["function"].get("arguments")))
    ids = [call.id for call in found if call.id is not None]
    for duplicate in sorted({i for i in ids if ids.count(i) > 1}):
        check.problem(f"{where}: tool call id '{duplicate}' is used twice; give each call its own id")
    return found


@dataclass
class _Walk:
    """What walking one example's messages found."""

    has_assistant: bool = False
    trained_assistant: bool = False  # an assistant turn whose weight is not 0
    unreadable: bool = False  # a message without a known role was skipped
    calls: list[str] = field(default_factory=list)
    tool_results: int = 0
    texts: list[tuple[str, str]] = field(default_factory=list)  # (where, text) for the PII scan


ANSWER_HINT = "; add a tool message with each call's result and its tool_call_id"


def _unanswered(where: str, pending: dict[str, str]) -> str:
    return f"{where} has tool calls without a tool message answering them (ids: {', '.join(sorted(pending))})"


class _Conversation:
    """Walks one example's messages in order, checking where each role may appear."""

    def __init__(self, tools: dict[str, dict[str, Any]], has_tools: bool, parallel: bool, check: _LineCheck):
        self.tools, self.has_tools, self.parallel, self.check = tools, has_tools, parallel, check
        self.walk = _Walk()
        self.started = False  # a message other than system/developer was seen
        self.pending: dict[str, str] = {}  # tool_call_id -> name: calls still awaiting their tool message
        self.pending_from = ""  # the assistant message those calls came from

    def message(self, message: Any, where: str) -> None:
        if not isinstance(message, dict):
            self.check.problem(f"{where} must be an object with role and content, got {_type_name(message)}")
            self.walk.unreadable = True
            return
        role = message.get("role")
        if role not in ROLES:
            got = "missing" if role is None else f"{role!r}"
            self.check.problem(f"{where}.role is {got}; use one of {', '.join(ROLES)}")
            self.walk.unreadable = True
            return
        if role != "tool" and self.pending:
            self.check.problem(f"{_unanswered(self.pending_from, self.pending)} before {where}{ANSWER_HINT}")
            self.pending = {}
        text = _check_content(message, where, self.check)
        if text:
            self.walk.texts.append((f"{where}.content", text))
        if role in PREAMBLE_ROLES:
            if self.started:
                self.check.problem(
                    f"{where}: a {role} message must come before the conversation, not after it starts"
                )
            return
        if not self.started and role != "user":
            self.check.problem(f"{where}: the conversation must start with a user message, not {role}")
        self.started = True
        if role == "tool":
            self.tool(message, where)
        elif role == "assistant":
            self.assistant(message, where, text)

    def tool(self, message: dict[str, Any], where: str) -> None:
        call_id = message.get("tool_call_id")
        if isinstance(call_id, str) and call_id in self.pending:
            del self.pending[call_id]
            self.walk.tool_results += 1
            return
        if call_id is None or call_id == "":
            self.check.problem(
                f"{where}: tool message has no tool_call_id; set it to the id of the call it answers"
            )
        elif not isinstance(call_id, str):
            self.check.problem(f"{where}.tool_call_id must be a string, the id of the call it answers")
        else:
            self.check.problem(
                f"{where}: tool message answers tool_call_id '{call_id}', which matches no "
                "unanswered tool call of the assistant message before it"
            )
        self.pending = {}  # reported here; the calls it leaves unanswered would only repeat it

    def assistant(self, message: dict[str, Any], where: str, text: str | None) -> None:
        self.walk.has_assistant = True
        weight = message.get("weight", 1)
        if weight not in WEIGHTS or isinstance(weight, bool):
            self.check.problem(
                f"{where}.weight is {json.dumps(weight)}; use 0 (do not train on this turn) or 1"
            )
        if weight != 0:
            self.walk.trained_assistant = True
        has_calls = message.get("tool_calls") is not None
        calls = _check_tool_calls(message, where, self.tools, self.has_tools, self.check) if has_calls else []
        if not text and not has_calls:
            self.check.problem(f"{where}: empty assistant turn; give it content or tool_calls")
        if len(calls) > 1 and not self.parallel:
            self.check.problem(
                f"{where} has {len(calls)} tool calls but parallel_tool_calls is false; "
                "set it to true or make one call per assistant turn"
            )
        self.walk.calls.extend(call.name for call in calls)
        for call in calls:
            if isinstance(call.arguments, str):
                self.walk.texts.append(
                    (f"{where}.tool_calls[{call.position}].function.arguments", call.arguments)
                )
            if call.id is not None:
                self.pending[call.id] = call.name
        self.pending_from = where

    def end(self, last: Any) -> _Walk:
        walk, last_role = self.walk, last.get("role") if isinstance(last, dict) else None
        if not walk.has_assistant and not walk.unreadable:  # an unknown role may have been the assistant
            self.check.problem(
                "no assistant turn: every example needs at least one assistant message to learn from"
            )
        elif walk.has_assistant and not walk.trained_assistant:
            self.check.warn("every assistant turn has weight 0, so this example trains nothing")
        if self.pending and last_role == "tool":
            self.check.problem(f"{_unanswered(self.pending_from, self.pending)}{ANSWER_HINT}")
        if walk.has_assistant and last_role in {"user", "tool", "system", "developer"}:
            self.check.warn(
                f"ends with a {last_role} message that no assistant turn answers; "
                "it carries no training signal"
            )
        return walk


def _check_messages(
    messages: list[Any], tools: dict[str, dict[str, Any]], has_tools: bool, parallel: bool, check: _LineCheck
) -> _Walk:
    conversation = _Conversation(tools, has_tools, parallel, check)
    for index, message in enumerate(messages):
        conversation.message(message, f"messages[{index}]")
    return conversation.end(messages[-1])


def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def find_pii(text: str) -> list[tuple[str, str]]:
    """Likely personal data in a text as (kind, masked value): emails, phone numbers, card numbers."""
    found: list[tuple[str, str]] = []
    for match in EMAIL.finditer(text):
        local, domain = match.group().split("@", 1)
        found.append(("email", f"{local[0]}***@{domain}"))
    taken: list[range] = []
    for match in CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        taken.append(range(match.start(), match.end()))  # a long digit run is no phone number either way
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            found.append(("card", f"****{digits[-4:]}"))
    for match in PHONE.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if len(digits) in PHONE_DIGITS and not any(match.start() in span for span in taken):
            found.append(("phone", f"***{digits[-4:]}"))
    return found


def _check_example(value: Any, check: _LineCheck) -> _Walk | None:
    if not isinstance(value, dict):
        check.problem(f'is {_type_name(value)}, not an object like {{"messages": [...]}}')
        return None
    for key in sorted(set(value) - TOP_LEVEL_KEYS):
        check.warn(f"unknown key '{key}' is ignored (known: messages, tools, parallel_tool_calls)")
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages:
        check.problem(
            'has no "messages" array; each line needs {"messages": [...]} with at least one message'
            if messages is None
            else "messages must be a non-empty array of messages"
        )
        return None
    parallel = value.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        check.problem(f"parallel_tool_calls must be true or false, got {json.dumps(parallel)}")
        parallel = True
    tools = _check_tools(value.get("tools"), check)
    return _check_messages(messages, tools, value.get("tools") is not None, parallel, check)


# ---------------------------------------------------------------- the whole file


def validate_examples(
    lines: Iterable[str],
    *,
    max_seq_length: int | None = None,
    count_tokens: Callable[[Example], int] | None = None,
) -> ValidationReport:
    """Check every line of a JSONL dataset; never raises on bad data, reports it.

    ``count_tokens`` returns an example's length once templated (the caller owns the tokenizer);
    with ``max_seq_length`` it turns examples that would be truncated into problems.
    """
    report = ValidationReport()
    for number, raw in enumerate(lines, start=1):
        report.summary.lines = number
        line = raw.rstrip("\r\n")
        if not line.strip():
            report.warnings.append(Problem(number, "blank line is ignored"))
            continue
        if "\x00" in line:  # JSONL text never holds NUL: reading on would report every line of a binary file
            reason = "contains NUL bytes: this looks like a binary file, not JSONL text; stopped reading here"
            report.problems.append(Problem(number, reason))
            report.summary.invalid_lines += 1
            break
        check = _LineCheck()
        value, walk = _check_line(line, check)
        if walk is not None and not check.problems and count_tokens is not None:
            _check_length(value, count_tokens, max_seq_length, check, report.summary)
        report.problems.extend(Problem(number, reason) for reason in check.problems)
        report.warnings.extend(Problem(number, reason) for reason in check.warnings)
        if walk is None or check.problems:
            report.summary.invalid_lines += 1
        else:
            _count_example(number, value, walk, report)
    _file_findings(report)
    return report


def _check_line(line: str, check: _LineCheck) -> tuple[Any, _Walk | None]:
    if any("\udc80" <= char <= "\udcff" for char in line):  # undecodable bytes, see read_jsonl
        check.problem("is not UTF-8 text; save the file as UTF-8")
        return None, None
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        check.problem(
            f"invalid JSON: {error.msg} at column {error.colno}; each line must be one whole JSON object"
        )
        return None, None
    return value, _check_example(value, check)


def _check_length(
    example: Example,
    count_tokens: Callable[[Example], int],
    max_seq_length: int | None,
    check: _LineCheck,
    summary: Summary,
) -> None:
    try:
        tokens = count_tokens(example)
    except Exception as error:  # a template failing on user data is a finding, not a crash
        check.problem(f"could not be templated: {error}")
        return
    if max_seq_length is not None and tokens > max_seq_length:
        check.problem(
            f"is {tokens} tokens once templated, longer than maxSeqLength {max_seq_length}; "
            "shorten the example or raise hyperparameters.maxSeqLength"
        )
    else:
        summary.tokens.append(tokens)


def _count_example(number: int, example: Example, walk: _Walk, report: ValidationReport) -> None:
    summary = report.summary
    report.examples.append(example)
    summary.examples += 1
    summary.tool_calls.update(walk.calls)
    if walk.calls:
        summary.with_tool_calls += 1
    else:
        summary.without_tool_calls += 1
    if walk.tool_results:
        summary.with_tool_results += 1
    for where, text in walk.texts:
        for kind, masked in find_pii(text):
            summary.pii.append(PiiFinding(number, kind, where, masked))
            reason = f"likely {kind} in {where} ({masked}): remove or anonymise personal data before training"
            report.warnings.append(Problem(number, reason))


def _file_findings(report: ValidationReport) -> None:
    summary = report.summary
    if summary.lines == 0 or (summary.examples == 0 and not report.problems):
        report.problems.append(Problem(None, "is empty: no examples; write one JSON example per line"))
    if summary.with_tool_calls and summary.without_tool_calls:
        mixed = (
            f"mixed outputs: {summary.without_tool_calls} of {summary.examples} examples "
            f"({summary.share_without_tool_calls:.0%}) answer without a tool call; a model trained on "
            "mixed outputs may answer in prose when a tool call is wanted, so keep them only where prose "
            "is the right answer"
        )
        report.warnings.append(Problem(None, mixed))


def split_examples(
    examples: Sequence[Example], validation_split: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """The lab's reproducible split: shuffle with a seeded RNG, hold out the tail for validation.

    1183 examples at 0.1 give 1064 train / 119 validation, the same for every run with the same seed.
    """
    if not 0 < validation_split < 1:
        raise ValueError(f"validationSplit must be between 0 and 1 (exclusive), got {validation_split}")
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    cut = int(len(shuffled) * (1 - validation_split))
    train, validation = shuffled[:cut], shuffled[cut:]
    if not train or not validation:
        raise ValueError(
            f"{len(shuffled)} examples with validationSplit {validation_split} leave "
            f"{len(train)} for training and {len(validation)} for validation; add examples "
            "or change validationSplit"
        )
    return train, validation


# ---------------------------------------------------------------- files


def read_jsonl(path: str | Path) -> Iterator[str]:
    """The lines of a JSONL file. A leading byte-order mark is dropped; bytes that are not UTF-8
    survive as lone surrogates, which the validator reports per line, so a binary file gets
    findings instead of a crash."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as file:
        yield from file


def write_jsonl(path: str | Path, examples: Iterable[Example]) -> int:
    """Write one compact JSON example per line; returns how many were written."""
    count = 0
    with open(path, "w", encoding="utf-8") as file:
        for example in examples:
            file.write(json.dumps(example, ensure_ascii=False) + "\n")
            count += 1
    return count
