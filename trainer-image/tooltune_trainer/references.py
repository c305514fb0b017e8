"""Reference models: the evaluation turns asked of a model behind an OpenAI-compatible chat endpoint.

A reference is what the tuned model should match or beat: the OpenAI fine-tune it replaces (`ft:…`), or
another model a vLLM server serves. Each turn goes to `chat.completions` with the dataset's tool
definitions (`tools=`) at temperature 0, and the answer's `tool_calls` are scored exactly as the tuned
model's calls are (`evaluate.scored_report`). The first error a reference answers with (a rejected key, an
unknown model, a timeout after the client's retries) ends that reference's evaluation with the reason; it
never ends the run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import openai
from tooltune_api import reference_key_env
from tooltune_api.models import Reference

from tooltune_trainer.evaluate import MAX_NEW_TOKENS, Turn, scored_report
from tooltune_trainer.tool_formats import ParsedAnswer, ToolCall

log = logging.getLogger(__name__)

MAX_RETRIES = 2  # the client's own retries of 408/409/429/5xx and lost connections, with backoff
NO_KEY = "none"  # the client insists on a key; a server without keys (vLLM without --api-key) ignores it
# What a chat message may carry on the wire; the fine-tuning format's "weight" is not part of it.
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")

ClientFactory = Callable[..., Any]


class ReferenceFailed(Exception):
    """A reference that could not be scored; str() says why and what to check."""


def api_key(index: int, reference: Reference, environ: dict[str, str] | None = None) -> str | None:
    """The reference's key: from the pod's variable for it (the operator fills it from apiKeySecret), or,
    run locally (`tooltune run`), from the variable named like the Secret's key, e.g. OPENAI_API_KEY."""
    environ = dict(os.environ) if environ is None else environ
    if reference.api_key_secret is None:
        return None
    return environ.get(reference_key_env(index)) or environ.get(reference.api_key_secret.key) or None


def wire_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: message[key] for key in MESSAGE_KEYS if key in message} for message in messages]


def parsed_message(message: Any) -> ParsedAnswer:
    """The calls of a chat completion's message; arguments that are not a JSON object are malformed."""
    answer = ParsedAnswer()
    for call in message.tool_calls or []:
        text = call.function.arguments or ""
        try:
            arguments = json.loads(text)
        except ValueError:
            arguments = None
        if isinstance(arguments, dict):
            answer.calls.append(ToolCall(call.function.name, arguments))
        else:
            answer.malformed.append(text)
    return answer


def shown(message: Any) -> str:
    """The answer as the report shows it: the text, then each call as name(arguments)."""
    calls = [f"{c.function.name}({c.function.arguments})" for c in message.tool_calls or []]
    return " ".join([message.content or "", *calls]).strip()


def ask(client: Any, reference: Reference, turn: Turn) -> Any:
    request: dict[str, Any] = {
        "model": reference.model,
        "messages": wire_messages(turn.messages),
        "temperature": 0,
        "max_completion_tokens": MAX_NEW_TOKENS,
    }
    if turn.tools:  # the API refuses an empty tools array
        request["tools"] = turn.tools
    return client.chat.completions.create(**request).choices[0].message


def explain(error: openai.OpenAIError, reference: Reference, has_key: bool) -> str:
    """Why the reference could not be scored, naming what to check. Never quotes a 401 body (it may echo
    the key)."""
    where = f"{reference.base_url} (model {reference.model})"
    if isinstance(error, openai.AuthenticationError):
        secret = reference.api_key_secret
        if secret is None:
            return f"{where} wants an API key (401): set apiKeySecret"
        if not has_key:
            return f"{where} wants an API key (401) and Secret {secret.name} (key {secret.key}) gave none"
        return f"{where} rejected the API key in Secret {secret.name} (key {secret.key}) (401)"
    if isinstance(error, openai.APIStatusError):
        body = error.body if isinstance(error.body, dict) else {}
        cause = body.get("message") or error.message
        hint = "; check model and baseUrl (it usually ends in /v1)" if error.status_code == 404 else ""
        return f"{where} answered {error.status_code}: {cause}{hint}"
    if isinstance(error, openai.APITimeoutError):
        tries = MAX_RETRIES + 1
        seconds = reference.timeout_seconds
        return f"{where} did not answer within {seconds} s ({tries} tries): raise timeoutSeconds"
    if isinstance(error, openai.APIConnectionError):
        return f"cannot connect to {reference.base_url}: {error.__cause__ or error}"
    return f"{where} failed: {type(error).__name__}: {error}"


def _without_wrong_answers(report: dict[str, Any]) -> dict[str, Any]:
    """The reference's scores; its answers are shown where they differ from the tuned model's instead."""
    return {key: value for key, value in report.items() if key != "wrongAnswers"}


def evaluate_reference(
    reference: Reference,
    key: str | None,
    turns: list[Turn],
    train: list[dict[str, Any]],
    client_factory: ClientFactory = openai.OpenAI,
) -> tuple[dict[str, Any], list[ParsedAnswer], list[str]]:
    """The reference's part of the report, its parsed answers and their text; raises ReferenceFailed."""
    started = time.monotonic()
    client = client_factory(
        api_key=key or NO_KEY,
        base_url=reference.base_url,
        timeout=reference.timeout_seconds,
        max_retries=MAX_RETRIES,
    )
    parsed, texts = [], []
    for turn in turns:
        try:
            message = ask(client, reference, turn)
        except openai.OpenAIError as error:
            raise ReferenceFailed(explain(error, reference, key is not None)) from None
        parsed.append(parsed_message(message))
        texts.append(shown(message))
    report = _without_wrong_answers(scored_report(turns, parsed, texts, train))
    return report | {"seconds": round(time.monotonic() - started, 1)}, parsed, texts
