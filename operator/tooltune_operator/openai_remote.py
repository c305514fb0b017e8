"""The operator's two calls to the OpenAI side: read the API key from its Secret, cancel a remote job.

Used by the delete (finalizer) and suspend handlers so that no paid fine-tuning job outlives its
ToolTuneJob. Errors follow kube.py: what a retry can fix (429, 5xx, lost connection) is a
``kopf.TemporaryError``; what needs the user (missing Secret, rejected key) is a ``kopf.PermanentError``
whose message names the Secret and the remote job, never the key.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Protocol

import kopf
import openai
from kubernetes.client.rest import ApiException
from openai import OpenAI
from tooltune_api.models import SecretKeyRef

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
REMOTE_GONE = "not found"  # what cancel_remote_job returns when the provider no longer knows the job
MAX_RETRIES = 2  # the client's own retries (with backoff) before the handler gives up for now
REQUEST_TIMEOUT_SECONDS = 20.0  # handlers block: keep one call short
RETRY_DELAY_SECONDS = 30.0


class SecretReader(Protocol):
    """The part of ``tooltune_operator.kube.Kube`` this module needs."""

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...


def read_api_key(kube: SecretReader, namespace: str, secret_ref: SecretKeyRef) -> str:
    """The API key stored under secret_ref.key in the Secret secret_ref.name of namespace."""
    where = f"Secret {namespace}/{secret_ref.name}"
    try:
        secret = kube.get("v1", "Secret", namespace, secret_ref.name)
    except ApiException as error:
        if error.status == 403:
            raise kopf.PermanentError(
                f"the operator may not read {where} (403): grant it get on secrets in {namespace}"
            ) from None
        raise
    if secret is None:
        raise kopf.PermanentError(
            f"{where} not found: create it with the API key under key {secret_ref.key}, e.g. "
            f"kubectl -n {namespace} create secret generic {secret_ref.name} "
            f"--from-literal={secret_ref.key}=sk-..."
        )
    data = secret.get("data") or {}
    if secret_ref.key not in data:
        keys = ", ".join(sorted(data)) or "none"
        raise kopf.PermanentError(
            f"{where} has no key {secret_ref.key} (it has: {keys}); "
            "fix spec.openai.apiKeySecret.key or the Secret"
        )
    try:
        key = base64.b64decode(data[secret_ref.key], validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        raise kopf.PermanentError(f"{where} key {secret_ref.key} is not valid base64 text") from None
    if not key:
        raise kopf.PermanentError(f"{where} key {secret_ref.key} is empty: put the API key there")
    return key


def cancel_remote_job(
    api_key: str, base_url: str | None, job_id: str, *, secret_ref: SecretKeyRef | None = None
) -> str:
    """Cancel a remote fine-tuning job unless it already ended; returns its status afterwards
    ("cancelled", or the terminal status it had, or REMOTE_GONE when the provider answers 404)."""
    client = OpenAI(
        api_key=api_key, base_url=base_url, max_retries=MAX_RETRIES, timeout=REQUEST_TIMEOUT_SECONDS
    )
    jobs = client.fine_tuning.jobs
    try:
        job = jobs.retrieve(job_id)
        if job.status in TERMINAL_STATUSES:
            return job.status
        try:
            return jobs.cancel(job_id).status
        except openai.BadRequestError:
            # it may have ended between the two calls; anything else is a real refusal
            job = jobs.retrieve(job_id)
            if job.status in TERMINAL_STATUSES:
                return job.status
            raise
    except openai.NotFoundError:
        return REMOTE_GONE
    except openai.OpenAIError as error:
        raise _handler_error(error, job_id, secret_ref) from None


def _handler_error(error: openai.OpenAIError, job_id: str, secret_ref: SecretKeyRef | None) -> Exception:
    key = f"the API key in Secret {secret_ref.name} (key {secret_ref.key})" if secret_ref else "the API key"
    by_hand = f"cancel remote job {job_id} with the provider by hand"
    if isinstance(error, openai.AuthenticationError):  # its body may echo part of the key: not quoted
        return kopf.PermanentError(f"{key} was rejected (401) while cancelling; {by_hand}")
    if isinstance(error, openai.APIStatusError) and error.status_code < 500 and error.status_code != 429:
        body = error.body if isinstance(error.body, dict) else {}
        cause = body.get("message") or error.message
        return kopf.PermanentError(
            f"cancelling remote job {job_id} was refused ({error.status_code}): {cause}"
        )
    return kopf.TemporaryError(
        f"cancelling remote job {job_id} failed ({type(error).__name__}); retrying", delay=RETRY_DELAY_SECONDS
    )
