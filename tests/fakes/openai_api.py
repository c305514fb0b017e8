"""A local server that speaks the OpenAI fine-tuning API's wire format, with scripted job lifecycles.

It answers the requests openai-python sends for files, fine-tuning jobs (create, retrieve, list with a
metadata filter, events, checkpoints, cancel), models (list, retrieve, with ``shutdown_date``) and chat
completions, checks the Bearer key, and counts what it was asked to do so tests can assert "exactly one
job was created" or "nothing was uploaded".

Chat completions answer in OpenAI's wire format: ``choices[0].message.tool_calls[].function.arguments`` as
a JSON string and ``finish_reason`` "tool_calls", or text and "stop". A model neither in the catalogue, nor
fine-tuned here, nor in ``chat_models`` is a 404 ``model_not_found``; a request without messages, or with an
empty ``tools`` array, a 400. ``chat_script`` maps a prompt (the last user message) to the answer: a list
of (name, arguments) calls, arguments a dict or the raw string to send, or a text; other prompts get a call
guessed from the prompt's verb. ``chat_delay`` holds every chat answer back that many seconds (timeouts).

OpenAI's wind-down, as the real service behaves: the fine-tunable models carry a ``shutdown_date`` (OpenAI
announced 2027-01-14 for the gpt-4o and gpt-4.1 families; here it stays 44 days after today, as it was on
2026-12-01, so tests do not depend on the calendar); a job on a model past its shutdown, or on one the
catalogue lacks, is refused with 400 naming the model; ``refuse_jobs`` makes every job creation a 403
whose message says nothing about why or what to do (the service's refusal is no more helpful than that);
``serves_models = False`` is a compatible service without a models endpoint (404 on every model route).

A job moves one stage forward each time it is retrieved: validating_files, queued, then one running
stage per ``Lifecycle.running_polls`` (each emits a metrics event and a checkpoint), then the scripted
outcome. ``fail_next`` makes the next requests answer 429 (with Retry-After) or 5xx.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qs, urlparse

from tests.fakes.server import JsonHandler, LocalServer

TEST_API_KEY = "sk-tooltune-test-key"
ORGANIZATION = "org-tooltune-test"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

Outcome = Literal["succeeded", "failed", "cancelled", "running"]

# The fine-tunable snapshots and their creation times, as the models endpoint lists them.
FINE_TUNABLE = {
    "gpt-4o-mini-2024-07-18": 1721172717,
    "gpt-4o-2024-08-06": 1722814719,
    "gpt-4.1-2025-04-14": 1744316542,
    "gpt-4.1-mini-2025-04-14": 1744317547,
}
DAYS_TO_SHUTDOWN = 44  # 2026-12-01 → 2027-01-14
REFUSAL_MESSAGE = "You do not have access to create fine-tuning jobs."


def today() -> date:
    return datetime.now(UTC).date()


def model_body(
    model_id: str, created: int, shutdown: date | None, owned_by: str = "system"
) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": owned_by,
        "shutdown_date": shutdown.isoformat() if shutdown else None,
    }


@dataclass
class Lifecycle:
    """How the next created jobs evolve. ``outcome='running'`` never finishes until cancelled."""

    outcome: Outcome = "succeeded"
    validating_polls: int = 1
    queued_polls: int = 1
    running_polls: int = 3
    steps_per_poll: int = 10
    trained_tokens: int = 48_210
    error: dict[str, Any] = field(
        default_factory=lambda: {
            "code": "invalid_training_file",
            "message": "The job failed due to an invalid training file. Line 3: missing 'messages'.",
            "param": "training_file",
        }
    )


@dataclass
class FakeJob:
    body: dict[str, Any]
    lifecycle: Lifecycle
    stages: list[str]
    position: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)


def _loss(step: int) -> float:
    return round(2.0 * 0.93 ** (step / 5) + 0.05, 4)


class FakeOpenAI(LocalServer):
    """The server's state; ``start()`` serves it on a free localhost port in a background thread."""

    def __init__(self, api_key: str = TEST_API_KEY):
        super().__init__(type("Handler", (_Handler,), {"api": self}), "fake-openai")
        self.api_key = api_key
        self.lifecycle = Lifecycle()
        self.files: dict[str, dict[str, Any]] = {}
        self.file_contents: dict[str, bytes] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.chat_requests: list[dict[str, Any]] = []
        self.chat_models: set[str] = (
            set()
        )  # served for chat besides the catalogue and this server's fine-tunes
        self.chat_script: dict[str, str | list[tuple[str, dict[str, Any] | str]]] = {}
        self.chat_delay = 0.0
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.cancel_requests = 0
        self.filters_metadata = True  # False: list every job, as a compatible service without the filter may
        shutdown = today() + timedelta(days=DAYS_TO_SHUTDOWN)
        self.models = {name: model_body(name, created, shutdown) for name, created in FINE_TUNABLE.items()}
        self.serves_models = True  # False: a compatible service without a models endpoint
        self.refuse_jobs = False  # True: every job creation is refused with 403, as OpenAI's wind-down does
        self._failures: list[tuple[int, float]] = []  # (status, retry-after seconds) of the next requests
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    # ------------------------------------------------------------ scripting and assertions

    def fail_next(self, count: int, status: int = 429, retry_after: float = 0.05) -> None:
        """Answer the next ``count`` requests with ``status`` (429 carries Retry-After)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    @property
    def jobs_created(self) -> int:
        return len(self.jobs)

    @property
    def files_uploaded(self) -> int:
        return len(self.files)

    def job(self, job_id: str | None = None) -> dict[str, Any]:
        """The current body of a job (the only one when no id is given)."""
        with self._lock:
            if job_id is None:
                (only,) = self.jobs.values()
                return dict(only.body)
            return dict(self.jobs[job_id].body)

    def set_shutdown(self, model_id: str, shutdown: date | None) -> None:
        """Announce (or withdraw, with None) a model's shutdown date; adds the model when it is new."""
        with self._lock:
            created = self.models.get(model_id, {}).get("created", int(time.time()))
            self.models[model_id] = model_body(model_id, created, shutdown)

    def requested(self, method: str, path: str) -> int:
        """How many requests of this method and path the server answered."""
        return sum(1 for m, p, _ in self.requests if (m, p) == (method, path))

    def answered(self, status: int) -> int:
        return sum(1 for _, _, answered in self.requests if answered == status)

    # ------------------------------------------------------------ the API, one method per route

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):06d}"

    def upload_file(self, purpose: str, filename: str, content: bytes) -> tuple[int, dict[str, Any]]:
        if purpose != "fine-tune":
            return 400, _error(f"Invalid purpose {purpose!r}", "purpose")
        if not content.strip():
            return 400, _error("File is empty.", "file")
        file_id = self._new_id("file")
        body = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file_id] = body
        self.file_contents[file_id] = content
        return 200, body

    def retrieve_model(self, model_id: str) -> tuple[int, dict[str, Any]]:
        model = self.models.get(model_id)
        if model is None:
            return 404, _model_not_found(model_id)
        return 200, model

    def list_models(self) -> tuple[int, dict[str, Any]]:
        return 200, {"object": "list", "data": list(self.models.values())}

    def _fine_tunable(self, model_id: str) -> bool:
        if not self.serves_models:  # a compatible service without a catalogue fine-tunes what it is asked
            return True
        model = self.models.get(model_id)
        if model is None:
            return False
        shutdown = model.get("shutdown_date")
        return shutdown is None or date.fromisoformat(shutdown) > today()

    def create_job(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not request.get("model"):
            return 400, _error("Missing required parameter: 'model'.", "model")
        if self.refuse_jobs:
            return 403, _error(REFUSAL_MESSAGE, None)
        if not self._fine_tunable(request["model"]):
            message = f"Model {request['model']} is not available for fine-tuning or does not exist."
            return 400, _error(message, "model", "model_not_available")
        for param in ("training_file", "validation_file"):
            file_id = request.get(param)
            if param == "training_file" and not file_id:
                return 400, _error("Missing required parameter: 'training_file'.", param)
            if file_id and file_id not in self.files:
                return 400, _error(f"File {file_id!r} not found.", param, "invalid_file")
        hyper = _requested_hyperparameters(request)
        resolved = {
            "n_epochs": 3 if hyper.get("n_epochs", "auto") == "auto" else hyper["n_epochs"],
            "batch_size": 1 if hyper.get("batch_size", "auto") == "auto" else hyper["batch_size"],
            "learning_rate_multiplier": 1.8
            if hyper.get("learning_rate_multiplier", "auto") == "auto"
            else hyper["learning_rate_multiplier"],
        }
        job_id = self._new_id("ftjob")
        lifecycle = self.lifecycle
        stages = ["validating_files"] * lifecycle.validating_polls + ["queued"] * lifecycle.queued_polls
        stages += ["running"] * max(lifecycle.running_polls, 1)
        body = {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": int(time.time()),
            "error": None,
            "fine_tuned_model": None,
            "finished_at": None,
            "hyperparameters": resolved,
            "model": request["model"],
            "organization_id": ORGANIZATION,
            "result_files": [],
            "seed": request.get("seed") if request.get("seed") is not None else 1234,
            "status": stages[0],
            "trained_tokens": None,
            "training_file": request["training_file"],
            "validation_file": request.get("validation_file"),
            "estimated_finish": None,
            "integrations": None,
            "metadata": request.get("metadata"),
            "method": {"type": "supervised", "supervised": {"hyperparameters": resolved}},
            "suffix": request.get("suffix"),
        }
        job = FakeJob(body=body, lifecycle=lifecycle, stages=stages)
        self.jobs[job_id] = job
        self._event(job, "Validating training file: " + request["training_file"])
        return 200, _public(body)

    def retrieve_job(self, job_id: str) -> tuple[int, dict[str, Any]]:
        job = self.jobs.get(job_id)
        if job is None:
            return 404, _error(f"Could not find fine-tune: {job_id}", None, "fine_tune_not_found")
        self._advance(job)
        return 200, _public(job.body)

    def list_jobs(self, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        wanted = {
            m.group(1): values[0]
            for key, values in query.items()
            if (m := re.fullmatch(r"metadata\[(.+)]", key))
        }
        jobs = [
            j.body
            for j in reversed(list(self.jobs.values()))  # newest first, as the real API does
            if not self.filters_metadata
            or all((j.body.get("metadata") or {}).get(k) == v for k, v in wanted.items())
        ]
        return 200, _page([_public(b) for b in jobs], query)

    def list_events(self, job_id: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        job = self.jobs.get(job_id)
        if job is None:
            return 404, _error(f"Could not find fine-tune: {job_id}", None, "fine_tune_not_found")
        return 200, _page(list(reversed(job.events)), query)

    def list_checkpoints(self, job_id: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        job = self.jobs.get(job_id)
        if job is None:
            return 404, _error(f"Could not find fine-tune: {job_id}", None, "fine_tune_not_found")
        return 200, _page(list(reversed(job.checkpoints)), query)

    def cancel_job(self, job_id: str) -> tuple[int, dict[str, Any]]:
        job = self.jobs.get(job_id)
        if job is None:
            return 404, _error(f"Could not find fine-tune: {job_id}", None, "fine_tune_not_found")
        self.cancel_requests += 1
        if job.body["status"] in TERMINAL:
            return 400, _error(
                f"Job {job_id} has already completed: {job.body['status']}", None, "invalid_cancel"
            )
        self._finish(job, "cancelled")
        return 200, _public(job.body)

    def _chat_model(self, model_id: str) -> bool:
        fine_tuned = {job.body["fine_tuned_model"] for job in self.jobs.values()}
        return model_id in self.models or model_id in fine_tuned or model_id in self.chat_models

    def chat_completion(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.chat_requests.append(request)
        if not request.get("model"):
            return 400, _error("you must provide a model parameter", None)
        if not request.get("messages"):
            return 400, _error(
                "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
            )
        if "tools" in request and not request["tools"]:
            message = (
                "Invalid 'tools': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead."
            )
            return 400, _error(message, "tools", "empty_array")
        if not self._chat_model(request["model"]):
            message = f"The model `{request['model']}` does not exist or you do not have access to it."
            return 404, _error(message, None, "model_not_found")
        prompt = next((m["content"] for m in reversed(request["messages"]) if m["role"] == "user"), "")
        if prompt in self.chat_script:
            return 200, self._completion(request, self._scripted(self.chat_script[prompt]))
        tool = _pick_tool(prompt, request.get("tools") or [])
        if tool is None:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "I can only help with tasks.",
                "tool_calls": None,
            }
        else:
            required = tool.get("parameters", {}).get("required", [])
            arguments = {name: prompt for name in required}
            call = {
                "id": self._new_id("call"),
                "type": "function",
                "function": {"name": tool["name"], "arguments": json.dumps(arguments)},
            }
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return 200, self._completion(request, message)

    def _scripted(self, answer: str | list[tuple[str, dict[str, Any] | str]]) -> dict[str, Any]:
        if isinstance(answer, str):
            return {"role": "assistant", "content": answer, "tool_calls": None}
        calls = [
            {
                "id": self._new_id("call"),
                "type": "function",
                "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)},
            }
            for name, args in answer
        ]
        return {"role": "assistant", "content": None, "tool_calls": calls}

    def _completion(self, request: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        return {
            "id": self._new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {**message, "refusal": None},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60},
        }

    # ------------------------------------------------------------ job state machine

    def _advance(self, job: FakeJob) -> None:
        if job.body["status"] in TERMINAL:
            return
        job.position += 1
        if job.position < len(job.stages):
            status = job.stages[job.position]
            if status != job.body["status"]:
                self._event(job, {"queued": "Job enqueued.", "running": "Fine-tuning job started."}[status])
            job.body["status"] = status
            if status == "running":
                self._train_one_poll(job)
        elif job.lifecycle.outcome != "running":
            self._finish(job, job.lifecycle.outcome)

    def _train_one_poll(self, job: FakeJob) -> None:
        lifecycle = job.lifecycle
        total = max(lifecycle.running_polls, 1) * lifecycle.steps_per_poll
        step = min((len(job.checkpoints) + 1) * lifecycle.steps_per_poll, total)
        data = {
            "step": step,
            "total_steps": total,
            "train_loss": _loss(step),
            "valid_loss": round(_loss(step) + 0.03, 4),
            "train_mean_token_accuracy": round(min(0.99, 0.5 + step / (2 * total)), 4),
            "valid_mean_token_accuracy": round(min(0.99, 0.48 + step / (2 * total)), 4),
        }
        losses = f"training loss={data['train_loss']:.4f}, validation loss={data['valid_loss']:.4f}"
        message = f"Step {step}/{total}: {losses}"
        self._event(job, message, kind="metrics", data=data)
        if len(job.checkpoints) < total // lifecycle.steps_per_poll:
            job.checkpoints.append(
                {
                    "id": self._new_id("ftckpt"),
                    "object": "fine_tuning.job.checkpoint",
                    "created_at": int(time.time()),
                    "fine_tuned_model_checkpoint": f"{self._model_name(job)}:ckpt-step-{step}",
                    "fine_tuning_job_id": job.body["id"],
                    "metrics": {
                        "step": float(step),
                        "train_loss": data["train_loss"],
                        "valid_loss": data["valid_loss"],
                    },
                    "step_number": step,
                }
            )

    def _model_name(self, job: FakeJob) -> str:
        suffix = job.body.get("suffix") or ""
        return f"ft:{job.body['model']}:tooltune-test:{suffix}:{job.body['id'][-6:]}"

    def _finish(self, job: FakeJob, outcome: str) -> None:
        job.body["status"] = outcome
        job.body["finished_at"] = int(time.time())
        if outcome == "succeeded":
            job.body["fine_tuned_model"] = self._model_name(job)
            job.body["trained_tokens"] = job.lifecycle.trained_tokens
            job.body["result_files"] = [self._new_id("file")]
            self._event(job, f"New fine-tuned model created: {job.body['fine_tuned_model']}")
            self._event(job, "The job has successfully completed")
        elif outcome == "failed":
            job.body["error"] = dict(job.lifecycle.error)
            self._event(job, job.lifecycle.error["message"], level="error")
        else:
            self._event(job, "Fine-tuning job cancelled")

    def _event(
        self, job: FakeJob, message: str, kind: str = "message", data: dict | None = None, level: str = "info"
    ) -> None:
        job.events.append(
            {
                "id": self._new_id("ftevent"),
                "object": "fine_tuning.job.event",
                "created_at": int(time.time()),
                "level": level,
                "message": message,
                "data": data or {},
                "type": kind,
            }
        )

    # ------------------------------------------------------------ dispatch

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            if self._failures:
                status, retry_after = self._failures.pop(0)
                extra = (
                    {"Retry-After": f"{retry_after:g}", "retry-after-ms": f"{retry_after * 1000:g}"}
                    if status == 429
                    else {}
                )
                message = "Rate limit reached" if status == 429 else "The server had an error"
                return status, _error(message, None, "rate_limit_exceeded" if status == 429 else None), extra
            if headers.get("Authorization") != f"Bearer {self.api_key}":
                return 401, _error("Incorrect API key provided.", None, "invalid_api_key"), {}
            return (*self._route(method, path, query, headers, body), {})

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        parts = path.removeprefix("/v1").strip("/").split("/")
        match method, parts:
            case "POST", ["files"]:
                fields = _multipart(headers.get("Content-Type", ""), body)
                filename, content = fields.get("file", ("", b""))
                return self.upload_file(fields.get("purpose", ("", b""))[1].decode(), filename, content)
            case "GET", ["files", file_id]:
                return (
                    (200, self.files[file_id])
                    if file_id in self.files
                    else (404, _error("No such File object", "id"))
                )
            case "POST", ["fine_tuning", "jobs"]:
                return self.create_job(json.loads(body or b"{}"))
            case "GET", ["fine_tuning", "jobs"]:
                return self.list_jobs(query)
            case "GET", ["fine_tuning", "jobs", job_id]:
                return self.retrieve_job(job_id)
            case "GET", ["fine_tuning", "jobs", job_id, "events"]:
                return self.list_events(job_id, query)
            case "GET", ["fine_tuning", "jobs", job_id, "checkpoints"]:
                return self.list_checkpoints(job_id, query)
            case "POST", ["fine_tuning", "jobs", job_id, "cancel"]:
                return self.cancel_job(job_id)
            case "GET", ["models"] if self.serves_models:
                return self.list_models()
            case "GET", ["models", model_id] if self.serves_models:
                return self.retrieve_model(model_id)
            case "POST", ["chat", "completions"]:
                return self.chat_completion(json.loads(body or b"{}"))
        return 404, _error(f"Unknown route {method} {path}", None)


class _Handler(JsonHandler):
    api: FakeOpenAI

    def _serve(self) -> None:
        url = urlparse(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path.endswith("/chat/completions") and self.api.chat_delay:
            time.sleep(self.api.chat_delay)  # outside the lock: other requests are answered meanwhile
        status, payload, extra = self.api.handle(
            self.command, url.path, parse_qs(url.query), self.headers, body
        )
        with self.api._lock:
            self.api.requests.append((self.command, url.path, status))
        self.answer(status, payload, extra)

    do_GET = do_POST = do_DELETE = _serve


# ------------------------------------------------------------ wire helpers


def _error(message: str, param: str | None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def _model_not_found(model_id: str) -> dict[str, Any]:
    return _error(f"The model '{model_id}' does not exist", "model", "model_not_found")


def _public(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "suffix"}


def _page(items: list[dict[str, Any]], query: dict[str, list[str]]) -> dict[str, Any]:
    after = query.get("after", [None])[0]
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = int(query.get("limit", ["20"])[0])
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "has_more": len(items) > limit,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }


def _requested_hyperparameters(request: dict[str, Any]) -> dict[str, Any]:
    method = request.get("method") or {}
    if method.get("type") == "supervised":
        return dict((method.get("supervised") or {}).get("hyperparameters") or {})
    return dict(request.get("hyperparameters") or {})


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    """Fields of a multipart/form-data body: name -> (filename, bytes)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[str(name)] = (part.get_filename() or "", part.get_payload(decode=True) or b"")
    return fields


# Words that point a smoke prompt at a tool whose name starts with the key.
_TOOL_HINTS = {
    "create": ("create", "add", "new"),
    "list": ("what", "show", "list", "due"),
    "complete": ("mark", "complete", "done", "finish"),
}


def _pick_tool(prompt: str, tools: list[dict[str, Any]]) -> dict[str, Any] | None:
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    for spec in tools:
        function = spec.get("function", {})
        verb = function.get("name", "").split("_")[0]
        if words & set(_TOOL_HINTS.get(verb, (verb,))):
            return function
    return None
