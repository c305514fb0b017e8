"""`tooltune cancel-remote`: the short-lived pod that cancels a remote OpenAI fine-tuning job.

The operator starts it (a Job owned by the ToolTuneJob) when a ToolTuneJob of the OpenAI backend is deleted
or suspended, so that no paid fine-tuning job outlives it. The pod gets the API key from the job's Secret
through ``secretKeyRef``, as the submitter pod does: the operator never reads a Secret. The pod tells the
user what happened with an Event on the ToolTuneJob (``RemoteJobCancelled``, or ``RemoteCancelFailed``
naming the Secret and the remote job to cancel by hand, never the key) and exits as tooltune_trainer.pod
says: 0 done, 2 when retrying cannot help (a rejected key, a refusal), 1 when the Job should retry (429,
5xx, a lost connection).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import openai
from openai import OpenAI
from tooltune_api.models import JobRef, SecretKeyRef

from tooltune_trainer import pod

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
REMOTE_GONE = "not found"  # what cancel_remote_job returns when the provider no longer knows the job
MAX_RETRIES = 2  # the client's own retries (with backoff); then the Job's retries take over
REQUEST_TIMEOUT_SECONDS = 20.0
API_KEY_ENV = "OPENAI_API_KEY"
CANCELLED = "RemoteJobCancelled"  # Event reason: the remote job is cancelled (or had ended, or is unknown)
CANCEL_FAILED = "RemoteCancelFailed"  # Event reason: it may still run; the message says what to do

log = logging.getLogger(__name__)
PostEvent = Callable[[str, str, str], None]  # (type, reason, message)


class CancelError(Exception):
    """Cancelling failed; retryable when another try later may succeed."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


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
        raise explain(error, job_id, secret_ref) from None


def explain(error: openai.OpenAIError, job_id: str, secret_ref: SecretKeyRef | None) -> CancelError:
    key = f"the API key in Secret {secret_ref.name} (key {secret_ref.key})" if secret_ref else "the API key"
    by_hand = f"cancel remote job {job_id} with the provider by hand"
    if isinstance(error, openai.AuthenticationError):  # its body may echo part of the key: not quoted
        return CancelError(f"{key} was rejected (401) while cancelling; {by_hand}", retryable=False)
    if isinstance(error, openai.APIStatusError) and error.status_code < 500 and error.status_code != 429:
        body = error.body if isinstance(error.body, dict) else {}
        cause = body.get("message") or error.message
        return CancelError(
            f"cancelling remote job {job_id} was refused ({error.status_code}): {cause}; {by_hand}",
            retryable=False,
        )
    return CancelError(
        f"cancelling remote job {job_id} failed ({type(error).__name__}); the Job retries", retryable=True
    )


def kubernetes_event_poster(job: JobRef) -> PostEvent:
    """Post Events about the ToolTuneJob as the pod's ServiceAccount (a failure is logged, never raised)."""
    from tooltune_trainer.telemetry import describe_error, event_body, kubernetes_api_client

    api_client = kubernetes_api_client()

    def post(event_type: str, reason: str, message: str) -> None:
        if api_client is None:
            return
        from kubernetes import client

        try:
            client.CoreV1Api(api_client).create_namespaced_event(
                job.namespace, event_body(job, reason, message, event_type), _request_timeout=10
            )
        except Exception as error:  # the termination message still says it
            log.warning("creating Event %s failed: %s", reason, describe_error(error))

    return post


def main(
    job_id: str,
    job: JobRef,
    why: str,
    base_url: str | None = None,
    secret_ref: SecretKeyRef | None = None,
    post: PostEvent | None = None,
) -> int:
    """Cancel job_id with the key in $OPENAI_API_KEY; an Event on the ToolTuneJob and the pod's exit say how
    it went."""
    pod.setup_logging(quiet=("httpx",))
    post = post or kubernetes_event_poster(job)
    api_key = os.environ.get(API_KEY_ENV, "").strip()
    try:
        if not api_key:
            where = f"Secret {secret_ref.name} (key {secret_ref.key})" if secret_ref else "its Secret"
            raise CancelError(
                f"{API_KEY_ENV} is empty: put the API key in {where}, or cancel remote job {job_id} by hand",
                retryable=False,
            )
        remote = cancel_remote_job(api_key, base_url, job_id, secret_ref=secret_ref)
    except CancelError as error:
        log.error("%s", error)
        post("Warning", CANCEL_FAILED, str(error))
        return pod.finish(pod.RETRYABLE if error.retryable else pod.INVALID, error)
    message = f"OpenAI job {job_id} {remote} ({why})"
    log.info("%s", message)
    post("Normal", CANCELLED, message)
    return pod.finish(pod.SUCCEEDED, message)
