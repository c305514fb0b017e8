"""What every tooltune pod does around its work (`tooltune train` and `tooltune submit` alike).

- read the operator↔trainer contract from the file the operator mounts (``TOOLTUNE_CONFIG``);
- log one line per record to stderr, which `kubectl logs` shows;
- end with an exit code the Job's podFailurePolicy reads: 0 done, 2 invalid (data, config, credentials:
  retrying cannot help, the Job fails at once) or the model missed its evaluation gate (retrying would
  train the same model again), 143 stopped by SIGTERM after a checkpoint, 1 anything else (the Job
  retries);
- and write one line to the termination log, in one format: ``<outcome>: <reason>`` with outcome one of
  ``succeeded``, ``invalid``, ``gate_failed``, ``terminated``, ``retryable``. `kubectl describe pod` shows
  it, and the operator copies it into the ToolTuneJob's status when the pod fails (and reads the outcome
  ``gate_failed`` as the reason EvaluationGateFailed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

from pydantic import ValidationError
from tooltune_api import (
    CONTRACT_ENV,
    CONTRACT_PATH,
    EXIT_INVALID,
    EXIT_OK,
    GATE_FAILED_OUTCOME,
    TERMINATION_LOG_ENV,
    TERMINATION_LOG_PATH,
)
from tooltune_api.models import TrainerContract, describe_validation_error

EXIT_RETRYABLE = 1
EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM
SUCCEEDED, INVALID, TERMINATED, RETRYABLE = "succeeded", "invalid", "terminated", "retryable"
GATE_FAILED = GATE_FAILED_OUTCOME  # the operator reads it as the reason EvaluationGateFailed
EXIT_CODES = {  # one outcome per exit code: outcome_of reads them back
    SUCCEEDED: EXIT_OK,
    INVALID: EXIT_INVALID,
    TERMINATED: EXIT_TERMINATED,
    RETRYABLE: EXIT_RETRYABLE,
}
TERMINATION_MESSAGE_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
# Under several processes (tooltune_trainer.launcher) each worker writes its line into this directory as
# rank-<RANK>, and the launcher makes one of them the pod's.
RANK_MESSAGES_ENV = "TOOLTUNE_RANK_MESSAGES"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class InvalidContract(ValueError):
    """The contract file is missing or does not match the contract model; the message names the field."""


def setup_logging(quiet: tuple[str, ...] = ()) -> None:
    """INFO to stderr; the loggers named in quiet (one line per HTTP request, say) only from WARNING."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


def contract_path(config: Path | None = None) -> Path:
    return config or Path(os.environ.get(CONTRACT_ENV, CONTRACT_PATH))


def load_contract(path: Path) -> TrainerContract:
    try:
        text = path.read_text()
    except OSError as error:
        why = error.strerror or error
        raise InvalidContract(f"{path}: cannot read the trainer contract: {why}") from None
    try:
        return TrainerContract.model_validate_json(text)
    except ValidationError as error:
        raise InvalidContract(
            f"{path}: " + "; ".join(describe_validation_error(error, prefix="contract"))
        ) from None


def one_line(reason: str | BaseException) -> str:
    """The first non-empty line of reason, with a count of the lines left out."""
    text = str(reason)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return type(reason).__name__ if isinstance(reason, BaseException) else ""
    more = len(lines) - 1
    return lines[0] + (f" (and {more} more)" if more else "")


def outcome_of(exit_code: int) -> str:
    return next((outcome for outcome, code in EXIT_CODES.items() if code == exit_code), RETRYABLE)


def finish(outcome: str, reason: str | BaseException) -> int:
    """Write ``<outcome>: <reason>`` to the termination log; returns the outcome's exit code."""
    write_termination_message(f"{outcome}: {one_line(reason)}")
    return EXIT_INVALID if outcome == GATE_FAILED else EXIT_CODES[outcome]  # gate_failed: fail at once


def rank_message(messages: Path, rank: int | str) -> Path:
    return messages / f"rank-{rank}"


def termination_log_path() -> Path:
    """The pod's termination log, or this worker's file when a launcher collects the workers' lines."""
    messages, rank = os.environ.get(RANK_MESSAGES_ENV), os.environ.get("RANK")
    if messages and rank is not None:
        return rank_message(Path(messages), rank)
    return Path(os.environ.get(TERMINATION_LOG_ENV, TERMINATION_LOG_PATH))


def write_termination_message(message: str) -> None:
    """The one line `kubectl describe pod` shows; unwritable outside a pod, which is fine."""
    path = termination_log_path()
    with contextlib.suppress(OSError):
        path.write_bytes(message.encode()[:TERMINATION_MESSAGE_LIMIT])
