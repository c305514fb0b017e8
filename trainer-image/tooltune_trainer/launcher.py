"""`tooltune train` on several processes: hand over to torchrun (PyTorch's launcher), speak for its workers.

The distributed shape comes only from the environment Kubeflow Trainer sets, which torchrun reads as the
defaults of its options (``torch.distributed.argparse_util.env``: ``--nnodes`` from ``PET_NNODES`` and so
on), so the same image runs under the tooltune operator and under Kubeflow Trainer:

    PET_NNODES  PET_NPROC_PER_NODE  PET_NODE_RANK  PET_MASTER_ADDR  PET_MASTER_PORT

When they say more than one process in all and this process is not already a torchrun worker, the pod's
process becomes torchrun's agent (``torch.distributed.run``), which starts ``tooltune train`` once per
local rank and rendezvous them (one node and no master port: torchrun's own c10d store on a free
loopback port; several nodes: its static rendezvous at ``PET_MASTER_ADDR:PET_MASTER_PORT``). The pod's
contract with the Job survives the hand-over (tooltune_trainer.pod):

- SIGTERM reaches the agent (PID 1), which forwards it to every worker and waits for them up to
  ``WORKER_SHUTDOWN_SECONDS``: each checkpoints its step (rank 0 uploads) and exits 143.
- Each worker writes its termination line into its own file (``pod.RANK_MESSAGES_ENV``); the pod's line is the
  first failing worker's, or the lowest rank's when none failed, and the pod exits with that worker's code
  (2 invalid, 143 terminated, 1 or a signal's 128 + N otherwise).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tooltune_trainer import pod

log = logging.getLogger(__name__)

# Set by torchrun (and by other launchers) in every worker it starts: this process is a rank already.
WORKER_ENV = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")
NNODES_ENV, NPROC_ENV = "PET_NNODES", "PET_NPROC_PER_NODE"
# SIGTERM → workers' checkpoint and upload → their exit: as long as the pod's termination grace period
# (operator builders.TERMINATION_GRACE_SECONDS), after which the kubelet kills everything anyway.
WORKER_SHUTDOWN_SECONDS = 120
SHUTDOWN_ENV = ("PET_SHUTDOWN_TIMEOUT", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT")


class InvalidShape(ValueError):
    """PET_* variables that torchrun could not use; the message names the variable."""


@dataclass(frozen=True)
class Shape:
    nodes: int  # the most nodes the job may have (torchrun's --nnodes MIN:MAX, or N)
    procs_per_node: int

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


def is_worker(env: Mapping[str, str]) -> bool:
    return any(name in env for name in WORKER_ENV)


def shape(env: Mapping[str, str]) -> Shape:
    """The job's shape as torchrun will read it from the environment (defaults: 1 node, 1 process)."""
    from torch.distributed.run import determine_local_world_size, parse_min_max_nnodes

    nnodes, nproc = env.get(NNODES_ENV, "1"), env.get(NPROC_ENV, "1")
    try:
        _, nodes = parse_min_max_nnodes(nnodes)
    except (ValueError, RuntimeError):
        raise InvalidShape(f"{NNODES_ENV}={nnodes!r}: give a number of nodes, e.g. 2 (or MIN:MAX)") from None
    try:
        procs = determine_local_world_size(nproc)
    except ValueError as error:
        raise InvalidShape(
            f"{NPROC_ENV}={nproc!r}: give a number of processes per node, e.g. 2, or auto, cpu, gpu "
            f"({pod.one_line(error)})"
        ) from None
    if nodes < 1 or procs < 1:
        raise InvalidShape(f"{NNODES_ENV}={nnodes!r}, {NPROC_ENV}={nproc!r}: both must be at least 1")
    return Shape(nodes, procs)


def should_launch(env: Mapping[str, str]) -> bool:
    """True when this process must start torchrun's workers instead of training itself."""
    return not is_worker(env) and shape(env).world_size > 1


def worker_command(args: list[str]) -> list[str]:
    """`tooltune <args>` as each worker runs it: this interpreter, the same package."""
    return [sys.executable, "-m", "tooltune_trainer", *args]


def launch(command: list[str]) -> int:
    """Run command (worker_command(...)) once per rank under torchrun; returns the pod's exit code and writes
    its termination line (see the module docstring)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    pod.setup_logging()
    try:
        job_shape = shape(os.environ)
    except InvalidShape as error:
        log.error("%s", error)
        return pod.finish(pod.INVALID, error)
    if "OMP_NUM_THREADS" not in os.environ:  # else torchrun gives every worker 1 thread
        from tooltune_trainer.backends import cpu_budget

        os.environ["OMP_NUM_THREADS"] = str(max(1, cpu_budget() // job_shape.procs_per_node))
    messages = Path(tempfile.mkdtemp(prefix="tooltune-ranks-"))
    os.environ[pod.RANK_MESSAGES_ENV] = str(messages)  # the workers inherit it
    options = [] if any(name in os.environ for name in SHUTDOWN_ENV) else [
        f"--shutdown-timeout={WORKER_SHUTDOWN_SECONDS}"
    ]  # fmt: skip
    log.info(
        "distributed training: %d node(s) × %d process(es) per node = world size %d; "
        "starting torchrun with: %s",
        job_shape.nodes, job_shape.procs_per_node, job_shape.world_size, " ".join(command),
    )  # fmt: skip
    try:
        torchrun(parse_args([*options, "--no-python", *command]))
    except ChildFailedError as failed:
        rank, code = first_failure(failed, messages)
        return _finish_as(messages, rank, code)
    except SignalException as stopped:
        log.warning("%s: the workers were asked to checkpoint and stop", stopped)
        reporter = lowest_rank(messages)
        if reporter is None:
            return pod.finish(pod.TERMINATED, f"{stopped.sigval.name} before any worker reported")
        return _finish_as(messages, reporter, None)
    except Exception as error:  # rendezvous failed, a worker could not start: worth a retry
        log.exception("torchrun failed")
        return pod.finish(pod.RETRYABLE, f"torchrun: {type(error).__name__}: {pod.one_line(error)}")
    reporter = lowest_rank(messages)
    if reporter is None:
        return pod.finish(pod.SUCCEEDED, "every worker finished")
    return _finish_as(messages, reporter, pod.EXIT_OK)


def lowest_rank(messages: Path) -> int | None:
    ranks = [int(path.name.removeprefix("rank-")) for path in messages.glob("rank-*")]
    return min(ranks, default=None)


def first_failure(failed: object, messages: Path) -> tuple[int, int]:
    """(rank, exit code) of the worker that failed first.

    torchrun stops the other workers with SIGTERM once one fails, and may count them as failed too: a
    worker that exited 143 is a cause only when every failure is one. torchrun stamps failures in whole
    seconds when it notices them, so within one second the worker that wrote its line first failed first,
    and one that wrote none (killed, out of memory) died before it could."""
    failures = failed.failures  # type: ignore[attr-defined]

    def when(rank: int) -> tuple[bool, float, int, int]:
        path = pod.rank_message(messages, rank)
        written = path.stat().st_mtime_ns if path.exists() else 0
        stopped = failures[rank].exitcode in (pod.EXIT_TERMINATED, -signal.SIGTERM)
        return (stopped, failures[rank].timestamp, written, rank)

    rank = min(failures, key=when)
    code = failures[rank].exitcode
    return rank, 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N


def _finish_as(messages: Path, rank: int, code: int | None) -> int:
    """Make rank's termination line the pod's; the exit code is code, or the line's outcome's when None."""
    path = pod.rank_message(messages, rank)
    line = path.read_text() if path.exists() else ""
    outcome, _, reason = line.partition(": ")
    if outcome not in pod.EXIT_CODES:  # the worker died before writing (killed, out of memory)
        died = code if code is not None else pod.EXIT_RETRYABLE
        outcome = pod.outcome_of(died)
        reason = f"worker rank {rank} exited with code {died}" + _signal_name(died)
    elif code is None:
        code = pod.EXIT_CODES[outcome]
    log.info("worker rank %d: %s: %s", rank, outcome, reason)
    pod.write_termination_message(f"{outcome}: {reason}")
    return code if code is not None else pod.EXIT_CODES[outcome]


def _signal_name(code: int) -> str:
    try:
        return f" ({signal.Signals(code - 128).name})" if code > 128 else ""
    except ValueError:
        return ""
