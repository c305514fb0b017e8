"""The OpenAI backend's pod: validate the data, upload it, run one remote fine-tuning job, smoke-test it.

Read top to bottom, ``Submitter.run`` is the lab's Option A:

1. fetch the training (and validation) JSONL and validate it with the same validator as the trainer,
   split 90/10 when no validation file is given; invalid data stops here, before any upload;
2. estimate the training tokens and their price (``status.cost``) before anything is paid for;
3. look for the remote job this resource's attempt already created (``metadata`` carries namespace,
   name, uid and attempt), so a restarted pod never starts a second paid job;
4. otherwise read the base model's ``shutdown_date`` from the models endpoint (an Event warns when it is
   near; past it the run stops), upload both files (purpose ``fine-tune``) and create the job; a service
   that refuses to create fine-tuning jobs (OpenAI stops taking them on 2027-01-06) ends the run with the
   way out: the same spec with ``backend: unsloth`` and an open-weight base model;
5. poll the job, its events and checkpoints; metrics events become status progress and ``/metrics``;
   the billed tokens (``trained_tokens``) and their price go to ``status.cost``;
6. on success, ask the fine-tuned model the smoke prompts with the dataset's tools (tool_choice auto,
   temperature 0) and store the answers in ``<output>/final/smoke.json``.

Exit codes as the trainer's: 0 done, 2 permanent (invalid data, rejected key or request, remote job
failed or cancelled), anything else retryable. The one-line reason goes to the termination log.
The API key arrives in ``OPENAI_API_KEY`` from the Secret named in spec.openai.apiKeySecret and is never
written to status, logs or the termination log.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import openai
from openai import OpenAI
from tooltune_api import (
    EXIT_INVALID,
    WORKDIR_ENV,
)
from tooltune_api.diagnosis import diagnose
from tooltune_api.models import (
    Backend,
    Diagnosis,
    JobRef,
    Phase,
    PriceTable,
    SecretKeyRef,
    ToolTuneJobSpec,
    TrainerContract,
)
from tooltune_api.pricing import dollars, openai_training_price

from tooltune_trainer import pod
from tooltune_trainer.data import read_jsonl, split_examples, validate_examples, write_jsonl
from tooltune_trainer.pod import EXIT_RETRYABLE
from tooltune_trainer.storage import StorageError, Store, join, open_store

log = logging.getLogger("tooltune.submitter")

API_KEY_ENV = "OPENAI_API_KEY"
MAX_RETRIES = 5  # the client's own retries of 408/409/429/5xx and lost connections, with backoff
MAX_POLL_FAILURES = 6  # consecutive failed polls (after the client's retries) before the pod gives up
MAX_POLL_BACKOFF_SECONDS = 600.0
EVENTS_PER_POLL = 50  # newest events read each poll: metrics arrive far slower than this
METADATA_PREFIX = "tooltune-"
SMOKE_REPORT = "smoke.json"
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

# The remote job's status as the resource's phase (the operator owns the phase; this is the mapping).
REMOTE_PHASES = {
    "validating_files": Phase.VALIDATING,
    "queued": Phase.PENDING,
    "running": Phase.RUNNING,
    "succeeded": Phase.SUCCEEDED,
    "failed": Phase.FAILED,
    "cancelled": Phase.CANCELLED,
}
# Client errors that retrying cannot fix; 408, 409 and 429 are retried by the client.
PERMANENT_STATUS_CODES = frozenset({400, 401, 403, 404, 422})


class SubmitError(Exception):
    """Ends the run: ``str()`` is the one-line reason, ``exit_code`` tells the Job whether to retry."""

    def __init__(self, message: str, exit_code: int = EXIT_INVALID):
        super().__init__(message)
        self.exit_code = exit_code


def storage_exit(error: StorageError) -> int:
    """Denied, no such bucket, not S3: retrying cannot help until someone fixes it, so fail at once."""
    return EXIT_RETRYABLE if error.retryable else EXIT_INVALID


class Reporter(Protocol):
    def update(self, **fields: dict) -> None: ...
    def flush(self) -> None: ...


class Metrics(Protocol):
    def observe(self, **values: float | None) -> None: ...
    def set_diagnosis(self, pattern: str) -> None: ...


class Events(Protocol):
    def record(self, reason: str, message: str, event_type: str = "Normal") -> None: ...
    def flush(self) -> None: ...


class NoEvents:
    def record(self, reason: str, message: str, event_type: str = "Normal") -> None:
        log.info("event %s: %s", reason, message)

    def flush(self) -> None:
        pass


# ---------------------------------------------------------------- pure mappings


def remote_phase(status: str) -> Phase:
    """The phase a resource is in while its remote job has this status."""
    return REMOTE_PHASES.get(status, Phase.RUNNING)


def hyperparameters(spec: ToolTuneJobSpec) -> dict[str, Any]:
    """The API's supervised hyperparameters: epochs and batch size from the spec, the learning-rate
    multiplier from spec.openai ("auto" when unset: the API does not take an absolute learning rate)."""
    assert spec.openai is not None
    multiplier = spec.openai.learning_rate_multiplier
    return {
        "n_epochs": spec.hyperparameters.epochs,
        "batch_size": spec.hyperparameters.batch_size,
        "learning_rate_multiplier": "auto" if multiplier is None else multiplier,
    }


def job_metadata(job: JobRef) -> dict[str, str]:
    """Metadata that ties a remote job to one attempt of one resource; the API filters jobs on it."""
    return {
        f"{METADATA_PREFIX}namespace": job.namespace,
        f"{METADATA_PREFIX}name": job.name,
        f"{METADATA_PREFIX}uid": job.uid,
        f"{METADATA_PREFIX}attempt": str(job.attempt),
    }


def create_params(contract: TrainerContract, training_file: str, validation_file: str) -> dict[str, Any]:
    spec = contract.spec
    assert spec.openai is not None
    params: dict[str, Any] = {
        "model": spec.openai.model,
        "training_file": training_file,
        "validation_file": validation_file,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters(spec)}},
        "seed": spec.dataset.seed,
        "metadata": job_metadata(contract.job),
    }
    if spec.openai.suffix:
        params["suffix"] = spec.openai.suffix
    return params


@dataclass(frozen=True)
class ProgressSample:
    """One metrics event of a remote job."""

    step: int
    total_steps: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    train_token_accuracy: float | None = None
    eval_token_accuracy: float | None = None

    def status(self) -> dict[str, Any]:
        """The status.progress fields (camelCase) this sample sets."""
        fields: dict[str, Any] = {"step": self.step, "trainLoss": self.train_loss, "evalLoss": self.eval_loss}
        if self.total_steps:
            fields["totalSteps"] = self.total_steps
            fields["percent"] = round(100.0 * self.step / self.total_steps, 1)
        return {key: value for key, value in fields.items() if value is not None}

    def metrics(self) -> dict[str, float]:
        values = {
            "step": self.step,
            "total_steps": self.total_steps,
            "train_loss": self.train_loss,
            "eval_loss": self.eval_loss,
        }
        return {key: float(value) for key, value in values.items() if value is not None}

    def report(self) -> dict[str, Any]:
        """Everything the event said, token accuracies included (status has no place for them)."""
        fields = self.status() | {
            "trainTokenAccuracy": self.train_token_accuracy,
            "evalTokenAccuracy": self.eval_token_accuracy,
        }
        return {key: value for key, value in fields.items() if value is not None}


def _number(data: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def progress_from_event(event_type: str | None, data: Any) -> ProgressSample | None:
    """A metrics event's data (step, total_steps, train_loss, valid_loss, *_mean_token_accuracy; the
    full_valid_* values, computed on the whole validation file, win over the batch ones)."""
    if event_type != "metrics" or not isinstance(data, dict):
        return None
    step = _number(data, "step")
    if step is None:
        return None
    total = _number(data, "total_steps")
    return ProgressSample(
        step=int(step),
        total_steps=int(total) if total else None,
        train_loss=_number(data, "train_loss"),
        eval_loss=_number(data, "full_valid_loss", "valid_loss"),
        train_token_accuracy=_number(data, "train_mean_token_accuracy"),
        eval_token_accuracy=_number(data, "full_valid_mean_token_accuracy", "valid_mean_token_accuracy"),
    )


def progress_samples(events: Iterable[Any]) -> list[ProgressSample]:
    """The metrics events among events (any order), as samples."""
    samples = [progress_from_event(getattr(e, "type", None), getattr(e, "data", None)) for e in events]
    return [sample for sample in samples if sample is not None]


def latest_progress(events: Iterable[Any]) -> ProgressSample | None:
    """The metrics event with the highest step among events (any order)."""
    samples = progress_samples(events)
    return max(samples, key=lambda sample: sample.step) if samples else None


def loss_diagnosis(samples: Iterable[ProgressSample]) -> Diagnosis | None:
    """The lab's reading of the remote loss curve, as for local training."""
    ordered = sorted(samples, key=lambda sample: sample.step)
    train = [(s.step, s.train_loss) for s in ordered if s.train_loss is not None]
    evals = [(s.step, s.eval_loss) for s in ordered if s.eval_loss is not None]
    total = next((s.total_steps for s in reversed(ordered) if s.total_steps), None)
    return diagnose(train, evals, total)


def remote_failure(job: Any) -> str:
    """One line on why a remote job did not succeed, naming its error code and parameter."""
    if job.status == "cancelled":
        return f"remote fine-tuning job {job.id} was cancelled"
    error = job.error
    if error is None:
        return f"remote fine-tuning job {job.id} failed without an error message"
    where = f" (parameter {error.param})" if error.param else ""
    return f"remote fine-tuning job {job.id} failed: {error.code}{where}: {error.message}"


def explain_api_error(error: openai.OpenAIError, secret: SecretKeyRef, doing: str) -> SubmitError:
    """Turn a client error into the run's outcome. Never quotes a 401 body: it may echo the key."""
    if isinstance(error, openai.AuthenticationError):
        return SubmitError(
            f"the API key in Secret {secret.name} (key {secret.key}) was rejected (401) while {doing}; "
            "put a valid key in that Secret"
        )
    if isinstance(error, openai.APIStatusError) and error.status_code in PERMANENT_STATUS_CODES:
        body = error.body if isinstance(error.body, dict) else {}
        param = body.get("param")
        cause = body.get("message") or error.message
        where = f" (parameter {param})" if param else ""
        return SubmitError(f"the fine-tuning API refused {doing} ({error.status_code}){where}: {cause}")
    return SubmitError(f"the fine-tuning API failed while {doing}: {type(error).__name__}", EXIT_RETRYABLE)


# ---------------------------------------------------------------- OpenAI's shutdown

# OpenAI names a shutdown months ahead; a fine-tune made within this many days of its base model's shutdown
# stops answering weeks after it was paid for, so the run says so with a Warning Event.
SHUTDOWN_WARNING_DAYS = 90
MIGRATION_DOC = "docs/migrating-from-openai.md"
# Open-weight base models for backend: unsloth in place of an OpenAI model, by name prefix (longest wins).
# Qwen 2.5 Instruct writes <tool_call> blocks, which tooltune evaluates and serves as they are; with QLoRA
# the 7B trains on one 24 GB GPU, the 32B on one 48 GB GPU.
SMALL_REPLACEMENT = "unsloth/Qwen2.5-7B-Instruct-bnb-4bit"
LARGE_REPLACEMENT = "unsloth/Qwen2.5-32B-Instruct-bnb-4bit"
REPLACEMENT_BASE_MODELS = {
    "gpt-3.5-turbo": SMALL_REPLACEMENT,
    "gpt-4o-mini": SMALL_REPLACEMENT,
    "gpt-4.1-nano": SMALL_REPLACEMENT,
    "gpt-4.1-mini": SMALL_REPLACEMENT,
    "gpt-4o": LARGE_REPLACEMENT,
    "gpt-4.1": LARGE_REPLACEMENT,
}


def replacement_base_model(model: str) -> str:
    """The open-weight base model to train instead of an OpenAI model (a fine-tune counts as its base)."""
    name = model.removeprefix("ft:")
    matches = [prefix for prefix in REPLACEMENT_BASE_MODELS if name.startswith(prefix)]
    return REPLACEMENT_BASE_MODELS[max(matches, key=len)] if matches else SMALL_REPLACEMENT


def way_out(model: str) -> str:
    return (
        f"train the same data on your own GPUs instead: the same ToolTuneJob with backend: unsloth, "
        f"baseModel: {replacement_base_model(model)} and no openai block (see {MIGRATION_DOC})"
    )


def shutdown_date(model: Any) -> date | None:
    """The model's shutdown_date from the models endpoint; None when none is announced or it is unreadable."""
    raw = getattr(model, "shutdown_date", None)
    if not raw:
        return None
    try:
        return date.fromisoformat(str(raw)[:10])
    except ValueError:
        log.warning("model %s: shutdown_date %r is not a date; ignoring it", getattr(model, "id", "?"), raw)
        return None


def shutdown_notice(model: str, shutdown: date, today: date) -> tuple[bool, str] | None:
    """(past, message) when model's shutdown is past or within SHUTDOWN_WARNING_DAYS of today, else None."""
    days = (shutdown - today).days
    if days <= 0:
        return True, (
            f"spec.openai.model {model} shut down on {shutdown.isoformat()} (the models endpoint says so): "
            f"it can no longer be fine-tuned, nor can a fine-tune of it answer; {way_out(model)}"
        )
    if days <= SHUTDOWN_WARNING_DAYS:
        return False, (
            f"spec.openai.model {model} shuts down on {shutdown.isoformat()}, in {days} days: the model this "
            f"run makes stops answering then; to keep it, {way_out(model)}"
        )
    return None


def explain_create_refusal(error: openai.OpenAIError, model: str) -> SubmitError | None:
    """A refusal to create the job that no retry or fix of the request can change, with the way out:
    403 (OpenAI no longer lets this organisation create fine-tuning jobs: all of them from 2027-01-06),
    or 400/404 naming the model (it cannot be fine-tuned there, e.g. after its shutdown)."""
    if not isinstance(error, openai.APIStatusError):
        return None
    body = error.body if isinstance(error.body, dict) else {}
    cause = body.get("message") or error.message
    if error.status_code == 403:
        return SubmitError(
            f"the fine-tuning service refused to create a job (403): {cause}; OpenAI is winding down "
            "self-serve fine-tuning and takes no new jobs from 2027-01-06 (earlier for organisations "
            f"without recent fine-tuned-model use); {way_out(model)}"
        )
    if error.status_code in {400, 404} and (
        body.get("param") == "model" or body.get("code") == "model_not_found"
    ):
        return SubmitError(
            f"spec.openai.model {model} cannot be fine-tuned there ({error.status_code}): {cause}; "
            f"pick a model the service fine-tunes, or {way_out(model)}"
        )
    return None


# ---------------------------------------------------------------- cost before you pay

# No OpenAI tokenizer ships offline, so OpenAI's token count is estimated with its own rule of thumb (a
# token is about 4 characters of English text), plus the role and the markers around each message.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
OPENAI_TOKEN_COUNT = "estimated: ~4 characters per token, +4 per message (no OpenAI tokenizer offline)"


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    parts = (
        [content]
        if isinstance(content, str)
        else [p.get("text", "") for p in content or [] if isinstance(p, dict)]
    )
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        parts += [str(function.get("name", "")), str(function.get("arguments", ""))]
    return "".join([str(message.get("role", "")), *parts])


def openai_example_tokens(example: dict[str, Any]) -> int:
    """Estimated tokens OpenAI counts for one training example: its messages and its tool schemas."""
    messages = example["messages"]
    chars = sum(len(_message_text(m)) for m in messages)
    if example.get("tools"):
        chars += len(json.dumps(example["tools"], separators=(",", ":")))
    return math.ceil(chars / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * len(messages)


def training_cost(
    examples: Iterable[dict[str, Any]], epochs: int, model: str, prices: PriceTable
) -> dict[str, Any]:
    """status.cost before the job: the training file's estimated tokens times the epochs, and their price."""
    tokens = sum(openai_example_tokens(example) for example in examples) * epochs
    cost: dict[str, Any] = {"trainingTokens": tokens, "tokenCount": OPENAI_TOKEN_COUNT}
    price = openai_training_price(model, prices.openai_training_per_million_tokens)
    if price is not None:
        cost |= {
            "pricePerMillionTokens": price,
            "priceSource": prices.source,
            "estimatedUsd": dollars(tokens, price),
        }
    return cost


def billed_cost(trained_tokens: int | None, model: str, prices: PriceTable) -> dict[str, Any]:
    """status.cost once the provider has billed: trained_tokens and what they cost at the table's price."""
    if trained_tokens is None:
        return {}
    price = openai_training_price(model, prices.openai_training_per_million_tokens)
    billed: dict[str, Any] = {"billedTokens": trained_tokens}
    if price is not None:
        billed["billedUsd"] = dollars(trained_tokens, price)
    return billed


def smoke_tools(examples: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every tool the dataset offers, once per function name, in order of first appearance."""
    tools: dict[str, dict[str, Any]] = {}
    for example in examples:
        for tool in example.get("tools") or []:
            tools.setdefault(tool["function"]["name"], tool)
    return list(tools.values())


def system_prompt(examples: Iterable[dict[str, Any]]) -> str | None:
    """The first system message of the data: the model was trained to follow it."""
    for example in examples:
        for message in example["messages"]:
            if message["role"] in {"system", "developer"} and isinstance(message.get("content"), str):
                return message["content"]
    return None


def smoke_answer(prompt: str, message: Any) -> dict[str, Any]:
    calls = []
    for call in message.tool_calls or []:
        try:
            json.loads(call.function.arguments)
            valid = True
        except (TypeError, ValueError):
            valid = False
        calls.append({"name": call.function.name, "arguments": call.function.arguments, "validJson": valid})
    return {"prompt": prompt, "toolCalls": calls, "content": message.content}


def smoke_summary(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """status.evaluation from the smoke answers: how many prompts, how many got no tool call, how many
    tool calls carried valid JSON arguments."""
    answered = [a for a in answers if "error" not in a]
    calls = [call for a in answered for call in a["toolCalls"]]
    summary: dict[str, Any] = {"examples": len(answers)}
    if answered:
        summary["noCallRate"] = round(sum(1 for a in answered if not a["toolCalls"]) / len(answered), 4)
    if calls:
        summary["validJsonRate"] = round(sum(1 for call in calls if call["validJson"]) / len(calls), 4)
    return summary


# ---------------------------------------------------------------- the run


class Submitter:
    def __init__(
        self,
        contract: TrainerContract,
        client: OpenAI,
        reporter: Reporter,
        metrics: Metrics,
        workdir: Path,
        store: Store | None = None,
        sleep: Callable[[float], None] = time.sleep,
        events: Events | None = None,
        today: Callable[[], date] = lambda: datetime.now(UTC).date(),
    ):
        if contract.spec.backend != Backend.OPENAI or contract.spec.openai is None:
            raise SubmitError("spec.backend is not openai: the submitter only drives the OpenAI backend")
        self.contract = contract
        self.spec = contract.spec
        self.settings = contract.spec.openai
        self.client = client
        self.reporter = reporter
        self.metrics = metrics
        self.workdir = workdir
        self.store = store or open_store(contract.spec.storage)
        self.sleep = sleep
        self.events: Events = events or NoEvents()
        self.today = today
        self._events_seen: set[str] = set()
        self._samples: dict[int, ProgressSample] = {}  # by step, across polls

    def run(self) -> str:
        """Drive the remote job to the end; returns the fine-tuned model's name or raises SubmitError."""
        train, validation = self.prepare_data()
        cost = training_cost(
            train, self.spec.hyperparameters.epochs, self.settings.model, self.contract.prices
        )
        log.info("training tokens before the job: %s", cost)
        self.reporter.update(cost=cost)
        self.metrics.observe(estimated_cost_usd=cost.get("estimatedUsd"))
        job = self.find_job()
        if job is None:
            self.check_model()
            job = self.create_job(train, validation)
        else:
            log.info("found remote job %s (%s) created by an earlier run of this attempt", job.id, job.status)
        job = self.wait(job)
        if job.status != "succeeded":
            raise SubmitError(remote_failure(job))
        log.info(
            "remote job %s succeeded: %s (%s trained tokens)",
            job.id,
            job.fine_tuned_model,
            job.trained_tokens,
        )
        self.smoke_test(job, train + validation)
        return job.fine_tuned_model

    # ---- data

    def _validated(self, field: str, uri: str) -> list[dict[str, Any]]:
        local = self.workdir / "data" / f"{field.rsplit('.', 1)[-1]}.source.jsonl"
        try:
            self.store.fetch(uri, local)
        except StorageError as error:
            raise SubmitError(f"{field} {uri}: {error}", storage_exit(error)) from None
        report = validate_examples(read_jsonl(local))
        for warning in report.warnings:
            log.warning("%s: %s", field, warning)
        if report.problems:
            first = report.problems[0]
            more = f" (and {len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
            for problem in report.problems:
                log.error("%s %s: %s", field, uri, problem)
            raise SubmitError(f"invalid data in {field} {uri}: {first}{more}; nothing was uploaded")
        return report.examples

    def prepare_data(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        dataset = self.spec.dataset
        examples = self._validated("spec.dataset.train", dataset.train)
        if dataset.validation is not None:
            return examples, self._validated("spec.dataset.validation", dataset.validation)
        try:
            return split_examples(examples, dataset.effective_validation_split, dataset.seed)
        except ValueError as error:
            raise SubmitError(f"spec.dataset.validationSplit: {error}") from None

    # ---- the remote job

    def _call(self, doing: str, request: Callable[[], Any]) -> Any:
        try:
            return request()
        except openai.OpenAIError as error:
            raise explain_api_error(error, self.settings.api_key_secret, doing) from None

    def find_job(self) -> Any | None:
        """The newest remote job of this resource's attempt that was not cancelled, if any."""
        wanted = job_metadata(self.contract.job)
        jobs = self._call(
            "listing fine-tuning jobs", lambda: list(self.client.fine_tuning.jobs.list(metadata=wanted))
        )
        for job in jobs:
            # compatible services may ignore the filter: check the metadata here too
            ours = all((job.metadata or {}).get(key) == value for key, value in wanted.items())
            if ours and job.status != "cancelled":
                return job
        return None

    def check_model(self) -> None:
        """Read the base model's shutdown_date: a Warning Event when it is near, the end of the run when it is
        past. A service without a models endpoint, or without the model in it, is asked no further."""
        model = self.settings.model
        try:
            found = self.client.models.retrieve(model)
        except openai.AuthenticationError as error:
            raise explain_api_error(error, self.settings.api_key_secret, "reading the model") from None
        except openai.OpenAIError as error:
            reason = type(error).__name__
            log.warning(
                "could not read model %s from the models endpoint (%s): no shutdown date", model, reason
            )
            return
        shutdown = shutdown_date(found)
        if shutdown is None:
            return
        self.reporter.update(openai={"shutdownDate": shutdown.isoformat()})
        notice = shutdown_notice(model, shutdown, self.today())
        if notice is None:
            return
        past, message = notice
        if past:
            raise SubmitError(message)
        log.warning("%s", message)
        self.events.record("ModelShutdownNear", message, "Warning")

    def _upload(self, name: str, examples: list[dict[str, Any]]) -> str:
        path = self.workdir / "data" / f"{name}.jsonl"
        write_jsonl(path, examples)
        uploaded = self._call(
            f"uploading the {name} file",
            lambda: self.client.files.create(file=(path.name, path.read_bytes()), purpose="fine-tune"),
        )
        log.info("uploaded %d %s examples as %s", len(examples), name, uploaded.id)
        return uploaded.id

    def create_job(self, train: list[dict[str, Any]], validation: list[dict[str, Any]]) -> Any:
        params = create_params(
            self.contract, self._upload("train", train), self._upload("validation", validation)
        )
        try:
            job = self.client.fine_tuning.jobs.create(**params)
        except openai.OpenAIError as error:
            refusal = explain_create_refusal(error, self.settings.model)
            if refusal is not None:
                raise refusal from None
            raise explain_api_error(
                error, self.settings.api_key_secret, "creating the fine-tuning job"
            ) from None
        log.info("created remote job %s on %s (%s)", job.id, params["model"], job.status)
        return job

    def poll_once(self, job_id: str) -> Any:
        """One look at the job, its newest events and checkpoints, reported to status and metrics."""
        jobs = self.client.fine_tuning.jobs
        job = self._call("reading the fine-tuning job", lambda: jobs.retrieve(job_id))
        events = self._call(
            "reading the job's events", lambda: jobs.list_events(job_id, limit=EVENTS_PER_POLL).data
        )
        checkpoints = self._call("reading the job's checkpoints", lambda: jobs.checkpoints.list(job_id).data)
        for event in reversed(events):  # oldest first
            if event.id not in self._events_seen:
                self._events_seen.add(event.id)
                log.info("remote %s: %s", event.level, event.message)
        fields: dict[str, Any] = {"openai": self._openai_status(job)}
        billed = billed_cost(job.trained_tokens, self.settings.model, self.contract.prices)
        if billed:
            fields["cost"] = billed
        self._samples.update((sample.step, sample) for sample in progress_samples(events))
        if self._samples:
            latest = self._samples[max(self._samples)]
            fields["progress"] = latest.status()
            self.metrics.observe(**latest.metrics())
            diagnosis = loss_diagnosis(self._samples.values())
            if diagnosis is not None:
                fields["diagnosis"] = diagnosis.dump()
                self.metrics.set_diagnosis(diagnosis.pattern)
        if checkpoints:
            newest = max(checkpoints, key=lambda checkpoint: checkpoint.step_number)
            fields["checkpoints"] = {
                "latestStep": newest.step_number,
                "latestUri": newest.fine_tuned_model_checkpoint,
                "count": len(checkpoints),
            }
        self.reporter.update(**fields)
        return job

    @staticmethod
    def _openai_status(job: Any) -> dict[str, Any]:
        fields = {
            "jobId": job.id,
            "status": job.status,
            "fineTunedModel": job.fine_tuned_model,
            "trainedTokens": job.trained_tokens,
        }
        return {key: value for key, value in fields.items() if value is not None}

    def wait(self, job: Any) -> Any:
        """Poll every spec.openai.pollSeconds until the job ends; back off on failed polls."""
        self.reporter.update(openai=self._openai_status(job))
        interval = float(self.settings.poll_seconds)
        failures = 0
        while True:
            try:
                job = self.poll_once(job.id)
            except SubmitError as error:
                if error.exit_code == EXIT_INVALID:
                    raise
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    raise SubmitError(f"{error} ({failures} polls in a row failed)", EXIT_RETRYABLE) from None
                backoff = min(interval * 2**failures, MAX_POLL_BACKOFF_SECONDS)
                log.warning("%s; polling again in %.0f s", error, backoff)
                self.sleep(backoff)
                continue
            failures = 0
            if job.status in TERMINAL_STATUSES:
                return job
            self.sleep(interval)

    # ---- after success

    def smoke_test(self, job: Any, examples: list[dict[str, Any]]) -> None:
        """The lab's quick inference check; its answers are stored, a failed call does not fail the run."""
        tools = smoke_tools(examples)
        system = system_prompt(examples)
        answers: list[dict[str, Any]] = []
        for prompt in self.spec.evaluation.smoke_prompts:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            request: dict[str, Any] = {"model": job.fine_tuned_model, "messages": messages, "temperature": 0}
            if tools:
                request |= {"tools": tools, "tool_choice": "auto"}
            try:
                response = self.client.chat.completions.create(**request)
            except openai.OpenAIError as error:
                log.warning("smoke prompt %r failed: %s", prompt, type(error).__name__)
                answers.append({"prompt": prompt, "error": type(error).__name__})
                continue
            answers.append(smoke_answer(prompt, response.choices[0].message))
            for call in answers[-1]["toolCalls"]:
                log.info("smoke %r → %s(%s)", prompt, call["name"], call["arguments"])
        report = {
            "jobId": job.id,
            "fineTunedModel": job.fine_tuned_model,
            "trainedTokens": job.trained_tokens,
            "finalMetrics": self._samples[max(self._samples)].report() if self._samples else None,
            "answers": answers,
        }
        local = self.workdir / "final" / SMOKE_REPORT
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(json.dumps(report, indent=2) + "\n")
        report_uri = join(self.spec.output.uri, "final", SMOKE_REPORT)
        try:
            self.store.upload_file(local, report_uri)
        except StorageError as error:
            raise SubmitError(
                f"spec.output.uri: could not store the smoke report: {error}", storage_exit(error)
            ) from None
        summary = smoke_summary(answers)
        self.metrics.observe(
            no_call_rate=summary.get("noCallRate"), valid_json_rate=summary.get("validJsonRate")
        )
        self.reporter.update(
            evaluation=summary | {"reportUri": report_uri}, output={"uri": self.spec.output.uri}
        )


# ---------------------------------------------------------------- the pod's entry point


def make_client(contract: TrainerContract, api_key: str) -> OpenAI:
    assert contract.spec.openai is not None
    return OpenAI(api_key=api_key, base_url=contract.spec.openai.base_url, max_retries=MAX_RETRIES)


def main(config: Path | None = None) -> int:
    """Run the submitter as the pod does; exit and termination message as tooltune_trainer.pod says."""
    pod.setup_logging(quiet=("httpx", "httpx2"))  # one line per request drowns the job's own events
    api_key = os.environ.get(API_KEY_ENV, "")
    try:
        contract = pod.load_contract(pod.contract_path(config))
        if contract.spec.openai is None:
            raise SubmitError("spec.openai is missing: the submitter only drives the OpenAI backend")
        secret = contract.spec.openai.api_key_secret
        if not api_key:
            raise SubmitError(
                f"{API_KEY_ENV} is empty: put the API key in Secret {secret.name} (key {secret.key})"
            )
    except (pod.InvalidContract, SubmitError) as error:
        log.error("%s", error)
        return pod.finish(pod.outcome_of(getattr(error, "exit_code", EXIT_INVALID)), error)

    from tooltune_trainer.telemetry import EventRecorder, StatusReporter, TrainingMetrics

    reporter = StatusReporter(contract)
    metrics = TrainingMetrics(contract)
    events = EventRecorder(contract)
    metrics.serve()
    workdir = Path(os.environ.get(WORKDIR_ENV) or tempfile.mkdtemp(prefix="tooltune-submit-"))
    try:
        client = make_client(contract, api_key)
        model = Submitter(contract, client, reporter, metrics, workdir, events=events).run()
    except SubmitError as error:
        reason = str(error).replace(api_key, "***")
        log.error("%s", reason)
        return pod.finish(pod.outcome_of(error.exit_code), reason)
    finally:
        reporter.flush()
        events.flush()
        metrics.close()
    return pod.finish(pod.SUCCEEDED, f"fine-tuned model {model}")
