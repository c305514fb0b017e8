"""Checkpoints in the output store: background upload, manifest last, retention, resume; final lineage.

Layout under the job's output URI:

    <output>/checkpoints/step-<N>/<every file of the trainer's checkpoint-<N> directory>
    <output>/checkpoints/step-<N>/manifest.json     written last: step, size + sha256 of every file, and
                                                    the source: what the checkpoint was made from
    <output>/final/lineage.json                      what went into the final model

A checkpoint is complete only when its manifest exists and its files match it. Resume takes the newest
complete one; anything else (a pod killed mid-upload, a server outage) is ignored and later pruned.
Resume also compares the checkpoint's source (base model, LoRA shape or full fine-tune, chat format,
tokenizer) with the run's: a checkpoint made from something else is never resumed, the run starts fresh
and says why, and such checkpoints are deleted once the new run has a complete checkpoint of its own.
Training waits only for the trainer's local save: `CheckpointSync.on_save` hard-links the checkpoint
into a staging directory (so the trainer may rotate its local copy away) and a background thread
uploads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune_api import __version__
from tooltune_api.models import ToolTuneJobSpec, TrainerContract, now_iso
from transformers import TrainerCallback

from tooltune_trainer import ranks
from tooltune_trainer.storage import StorageError, Store, join

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step-"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "tooltune.dev/checkpoint-v1"
JOB = "job"  # manifest key: the ToolTuneJob that wrote the checkpoint (namespace, name)
SOURCE = "source"  # manifest key: what the checkpoint was made from (checkpoint_source)
LINEAGE = "lineage.json"
LINEAGE_FORMAT = "tooltune.dev/lineage-v1"
FINAL_DIR = "final"
LOCAL_CHECKPOINT_PREFIX = "checkpoint-"  # what transformers.Trainer names its checkpoint directories
STAGING_DIR = ".tooltune-uploads"  # inside args.output_dir; hard links of checkpoints waiting for upload
HASH_CHUNK_BYTES = 4 * 1024**2
UPLOAD_NICENESS = 10  # the upload thread (and the transfer threads it starts) yields the CPU to training
MAX_NICENESS = 19

_STEP_NAME = re.compile(rf"^{STEP_PREFIX}(\d+)$")

OnComplete = Callable[[int, str, int], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for one checkpoint's upload: 1, 2, 4, … s, capped, a bounded number of times."""

    attempts: int = 8
    first_delay_seconds: float = 1.0
    max_delay_seconds: float = 30.0

    def delay(self, failed_attempts: int) -> float:
        return min(self.first_delay_seconds * 2 ** (failed_attempts - 1), self.max_delay_seconds)


# ---------------------------------------------------------------- pure parts


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_uri(output_uri: str, step: int) -> str:
    return join(output_uri, CHECKPOINTS_DIR, f"{STEP_PREFIX}{step}")


def build_manifest(step: int, local_dir: Path) -> dict[str, Any]:
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    entries = [
        {"path": p.relative_to(local_dir).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in files
    ]
    if any(entry["path"] == MANIFEST for entry in entries):
        raise StorageError(f"{local_dir}: a checkpoint may not contain a file named {MANIFEST}")
    return {"format": MANIFEST_FORMAT, "step": step, "createdAt": now_iso(), "files": entries}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the vocabulary (token → id, special tokens included) and the chat template: what the
    token ids a checkpoint was trained on mean, and how conversations were laid out in them."""
    document = {"vocab": tokenizer.get_vocab(), "chatTemplate": getattr(tokenizer, "chat_template", None)}
    return hashlib.sha256(json.dumps(document, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def checkpoint_source(spec: ToolTuneJobSpec, tokenizer: Any, chat_format: str) -> dict[str, Any]:
    """What a run's checkpoints are made from; resuming is safe only into a run with the same source.

    The learning rate, epochs or batch size may change between attempts (a fixed spec resumes), but
    weights trained from another base model, LoRA shape or tokenizer, or on another chat format, are
    not a continuation of this run.
    """
    hyperparameters = spec.hyperparameters
    lora = hyperparameters.lora
    return {
        "baseModel": spec.base_model,
        "fullFineTune": hyperparameters.full_fine_tune,
        "lora": None
        if hyperparameters.full_fine_tune
        else {"r": lora.r, "alpha": lora.alpha, "targetModules": sorted(lora.target_modules)},
        "chatFormat": chat_format,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }


def source_mismatch(recorded: Any, current: Mapping[str, Any]) -> str | None:
    """Why a checkpoint with source `recorded` must not be resumed by a run with source `current`, as
    "was made from …; this run has …" naming only what differs; None when they match."""
    if not isinstance(recorded, Mapping):
        return (
            "records nothing of what it was made from (an older tooltune wrote it), so it cannot be told "
            "apart from one made from another base model, LoRA shape or tokenizer"
        )
    was, now = [], []
    for describe in (_describe_base_model, _describe_training, _describe_chat_format, _describe_tokenizer):
        before, after = describe(recorded), describe(current)
        if before != after:
            was.append(before)
            now.append(after)
    return f"was made from {', '.join(was)}; this run has {', '.join(now)}" if was else None


def _describe_base_model(source: Mapping[str, Any]) -> str:
    return f"base model {source.get('baseModel')}"


def _describe_training(source: Mapping[str, Any]) -> str:
    if source.get("fullFineTune"):
        return "a full fine-tune"
    lora = source.get("lora")
    if not isinstance(lora, Mapping):
        return f"LoRA of unknown shape ({lora!r})"
    modules = ",".join(lora.get("targetModules") or [])
    return f"LoRA r={lora.get('r')} alpha={lora.get('alpha')} on {modules}"


def _describe_chat_format(source: Mapping[str, Any]) -> str:
    return f"chat format {source.get('chatFormat')!r}"


def _describe_tokenizer(source: Mapping[str, Any]) -> str:
    fingerprint = source.get("tokenizer")
    short = fingerprint[:12] if isinstance(fingerprint, str) else fingerprint
    return f"tokenizer {short} (sha256 of vocabulary and chat template)"


def checkpoint_steps(names: Iterable[str]) -> dict[int, bool]:
    """From object names under <output>/checkpoints/: step → whether its manifest is there."""
    steps: dict[int, bool] = {}
    for name in names:
        top, _, rest = name.partition("/")
        match = _STEP_NAME.match(top)
        if match and rest:
            step = int(match.group(1))
            steps[step] = steps.get(step, False) or rest == MANIFEST
    return steps


def complete_steps(names: Iterable[str]) -> list[int]:
    """Steps that have a manifest, newest first."""
    return sorted((step for step, done in checkpoint_steps(names).items() if done), reverse=True)


def steps_to_prune(names: Iterable[str], keep: int, superseded: Collection[int] = ()) -> list[int]:
    """Complete checkpoints beyond the newest `keep`, and incomplete ones older than the newest complete one.

    The newest complete checkpoint is never returned, whatever `keep` says. `superseded` are steps made
    from another source (see source_mismatch): they go too, but only once a checkpoint of this run is
    complete, and they never count as the newest, whatever their step.
    """
    steps = {s: done for s, done in checkpoint_steps(names).items() if s not in superseded}
    complete = sorted((s for s, done in steps.items() if done), reverse=True)
    if not complete:
        return []
    stale = [s for s, done in steps.items() if not done and s < complete[0]]
    present = set(checkpoint_steps(names))
    return sorted(complete[max(keep, 1) :] + stale + [s for s in superseded if s in present])


def manifest_problems(manifest: Any, local_dir: Path) -> list[str]:
    """Why the files in local_dir do not match the manifest (empty when they do)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list) or not manifest["files"]:
        return ["the manifest lists no files"]
    problems = []
    for entry in manifest["files"]:
        path = local_dir / str(entry.get("path", ""))
        if not entry.get("path") or not path.is_file():
            problems.append(f"{entry.get('path')}: missing")
        elif path.stat().st_size != entry.get("size"):
            problems.append(
                f"{entry['path']}: {path.stat().st_size} bytes, the manifest says {entry.get('size')}"
            )
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{entry['path']}: sha256 differs from the manifest")
    return problems


# ---------------------------------------------------------------- background upload


@dataclass
class _Pending:
    step: int
    staged: Path


class CheckpointSync(TrainerCallback):
    """Uploads every checkpoint the trainer saves to <output>/checkpoints/step-N/ in the background.

    `on_complete(step, uri, count)` runs on the upload thread after each checkpoint is complete and old ones
    are pruned (count = complete checkpoints now kept). Call `wait()` before the process ends. `source`
    (checkpoint_source) goes into every manifest; `supersede(steps)` marks checkpoints made from another
    source for deletion once this run has a complete one.
    """

    def __init__(
        self,
        store: Store,
        output_uri: str,
        keep: int,
        on_complete: OnComplete | None = None,
        retry: RetryPolicy | None = None,
        job: Mapping[str, Any] | None = None,
        source: Mapping[str, Any] | None = None,
    ):
        self.store = store
        self.job = dict(job) if job is not None else None  # goes into every manifest (JOB)
        self.output_uri = output_uri
        self.keep = keep
        self.on_complete = on_complete
        self.retry = retry or RetryPolicy()
        self.source = dict(source) if source is not None else None
        self.superseded: set[int] = set()
        self.completed: list[int] = []
        self.failures: list[str] = []
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def supersede(self, steps: Iterable[int]) -> None:
        self.superseded.update(steps)

    # -- trainer side

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Under DDP every rank writes its own files into the checkpoint (rng_state_<rank>.pth): wait for all
        # of them before rank 0 snapshots it. Only rank 0 uploads.
        ranks.barrier(ranks.from_env())
        if not state.is_world_process_zero:
            return
        output_dir = Path(args.output_dir)
        local = output_dir / f"{LOCAL_CHECKPOINT_PREFIX}{state.global_step}"
        try:
            self.submit(state.global_step, local, output_dir / STAGING_DIR)
        except OSError as error:  # a checkpoint that cannot be uploaded must not stop training
            self.failures.append(f"step {state.global_step}: cannot stage {local} ({error.strerror})")
            log.error("checkpoint not uploaded: %s", self.failures[-1])

    def submit(self, step: int, local_dir: Path, staging_root: Path) -> None:
        """Snapshot local_dir (hard links: instant, immune to the trainer deleting it), queue its upload."""
        staged = staging_root / f"{STEP_PREFIX}{step}"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(local_dir, staged, copy_function=_link_or_copy)
        with self._idle:
            self._in_flight += 1
        self._queue.put(_Pending(step, staged))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="checkpoint-upload", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued checkpoint is uploaded or given up; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> bool:
        drained = self.wait(timeout)
        self._closing.set()
        return drained

    # -- upload thread

    def _run(self) -> None:
        _lower_priority_of_this_thread()
        while not self._closing.is_set():
            try:
                pending = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            # a newer checkpoint supersedes older ones still waiting: upload only the newest
            superseded = []
            while not self._queue.empty():
                superseded.append(pending)
                pending = self._queue.get_nowait()
            for old in superseded:
                log.info("checkpoint step %d skipped: step %d is newer", old.step, pending.step)
                self._finish(old)
            try:
                self._upload_with_retries(pending)
            except Exception as error:  # the thread must survive anything, training goes on
                self.failures.append(f"step {pending.step}: {error}")
                log.error("checkpoint step %d not uploaded: %s", pending.step, error)
            finally:
                self._finish(pending)

    def _finish(self, pending: _Pending) -> None:
        shutil.rmtree(pending.staged, ignore_errors=True)
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def _upload_with_retries(self, pending: _Pending) -> None:
        for attempt in range(1, self.retry.attempts + 1):
            try:
                self._upload(pending)
                break
            except StorageError as error:
                if attempt == self.retry.attempts or not error.retryable:
                    raise
                delay = self.retry.delay(attempt)
                log.warning("checkpoint step %d upload failed (attempt %d of %d): %s; retrying in %.0f s",
                            pending.step, attempt, self.retry.attempts, error, delay)  # fmt: skip
                if self._closing.wait(delay):
                    raise
        uri = checkpoint_uri(self.output_uri, pending.step)
        self.completed.append(pending.step)
        count = self._prune()
        log.info("checkpoint step %d complete at %s (%d kept)", pending.step, uri, count)
        if self.on_complete is not None:
            self.on_complete(pending.step, uri, count)

    def _upload(self, pending: _Pending) -> None:
        uri = checkpoint_uri(self.output_uri, pending.step)
        if self.store.list(uri):  # left over from an earlier attempt: make it incomplete before replacing it
            self.store.delete(join(uri, MANIFEST))
            self.store.delete_prefix(uri)
        files = sorted(p for p in pending.staged.rglob("*") if p.is_file())
        with ThreadPoolExecutor(max_workers=1) as hasher:  # hash while the files travel
            manifest = hasher.submit(build_manifest, pending.step, pending.staged)
            self.store.upload_many((p, join(uri, p.relative_to(pending.staged).as_posix())) for p in files)
            document = manifest.result()
        if self.job is not None:
            document[JOB] = self.job
        if self.source is not None:
            document[SOURCE] = self.source
        self.store.write_bytes(join(uri, MANIFEST), json.dumps(document, indent=1).encode())

    def _prune(self) -> int:
        root = join(self.output_uri, CHECKPOINTS_DIR)
        superseded = self.superseded - set(self.completed)  # a step this run wrote again is its own now
        try:
            for step in steps_to_prune(self.store.list(root), self.keep, superseded):
                uri = checkpoint_uri(self.output_uri, step)
                self.store.delete(join(uri, MANIFEST))  # first, so a half-deleted checkpoint is incomplete
                self.store.delete_prefix(uri)
            self.superseded -= superseded
            return len(complete_steps(self.store.list(root)))
        except StorageError as error:
            log.warning("old checkpoints not pruned: %s", error)
            return min(len(set(self.completed)), self.keep)


class SaveOnTerminate(TrainerCallback):
    """On SIGTERM (eviction, preemption, node drain): checkpoint at the end of the current step and stop.

    Kubernetes gives a pod `terminationGracePeriodSeconds` between SIGTERM and SIGKILL; a trainer that
    saves and uploads within it loses no steps. `requested` tells the recipe why training stopped. The
    handler lives only while training runs, and only in the main thread (where Python runs handlers).
    Under DDP the ranks decide together at every step's end (a signal may reach them a step apart, and a
    rank that stops alone would leave the others waiting in their next all-reduce): one rank's SIGTERM
    stops them all at the same step, and `requested` is set on each.
    """

    def __init__(self, process: ranks.Ranks | None = None) -> None:
        self.requested = threading.Event()
        self.ranks = process or ranks.Ranks()
        self._previous: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if ranks.any_rank(self.ranks, self.requested.is_set()):
            self.requested.set()
            log.warning("terminating: saving a checkpoint at step %d and stopping", state.global_step)
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested.set()


def _lower_priority_of_this_thread() -> None:
    """Linux keeps a niceness per thread, and threads started from here inherit it."""
    with contextlib.suppress(AttributeError, OSError):  # elsewhere: upload at normal priority
        thread = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread) + UPLOAD_NICENESS
        os.setpriority(os.PRIO_PROCESS, thread, min(niceness, MAX_NICENESS))


def _link_or_copy(source: str, dest: str) -> str:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
    return dest


# ---------------------------------------------------------------- resume


@dataclass(frozen=True)
class ResumePoint:
    """What fetch_latest_checkpoint found: the checkpoint to resume from (None: start fresh), and the
    complete checkpoints it passed over because they were made from another source (step → why)."""

    checkpoint: Path | None = None
    mismatched: dict[int, str] = field(default_factory=dict)

    @property
    def step(self) -> int | None:
        return int(self.checkpoint.name.removeprefix(LOCAL_CHECKPOINT_PREFIX)) if self.checkpoint else None

    @property
    def fresh_start_reason(self) -> str | None:
        """Why the run starts fresh although the output holds complete checkpoints (None otherwise)."""
        if self.checkpoint is not None or not self.mismatched:
            return None
        newest = max(self.mismatched)
        return f"checkpoint {STEP_PREFIX}{newest} {self.mismatched[newest]}: starting fresh"


def start_over(store: Store, output_uri: str) -> ResumePoint:
    """A run told not to resume: the output's complete checkpoints are an earlier run's, passed over like
    checkpoints of another source (never the newest, removed once this run has one of its own)."""
    why = "is from an earlier run (not resumed)"
    return ResumePoint(
        mismatched=dict.fromkeys(complete_steps(store.list(join(output_uri, CHECKPOINTS_DIR))), why)
    )


def local_checkpoint(dest_dir: Path) -> ResumePoint:
    """The checkpoint fetch_latest_checkpoint left in dest_dir (another rank of this node fetched it)."""
    found = [
        path
        for path in dest_dir.glob(f"{LOCAL_CHECKPOINT_PREFIX}*")
        if path.name[len(LOCAL_CHECKPOINT_PREFIX) :].isdigit()
    ]
    newest = max(found, key=lambda path: int(path.name[len(LOCAL_CHECKPOINT_PREFIX) :]), default=None)
    return ResumePoint(newest)


def fetch_latest_checkpoint(
    store: Store,
    output_uri: str,
    dest_dir: Path,
    source: Mapping[str, Any] | None = None,
    job: Mapping[str, Any] | None = None,
) -> ResumePoint:
    """Download the newest complete checkpoint into dest_dir/checkpoint-<N>; the ResumePoint names it.

    Checkpoints without a manifest, or whose files do not match it, are skipped (with a warning); so are,
    when `source` is given, checkpoints whose recorded source differs (see source_mismatch), and, when `job`
    is given, checkpoints another ToolTuneJob wrote (their manifest's JOB names another namespace or name),
    before their files are fetched. Pass `.checkpoint` to `trainer.train(resume_from_checkpoint=...)`.
    Raises a retryable StorageError when the store cannot be read: starting over, or from an older checkpoint,
    because of an outage would throw away training.
    """
    root = join(output_uri, CHECKPOINTS_DIR)
    mismatched: dict[int, str] = {}
    shutil.rmtree(dest_dir, ignore_errors=True)  # local_checkpoint reads what is left here: only the one
    for step in complete_steps(store.list(root)):
        uri = checkpoint_uri(output_uri, step)
        target = dest_dir / f"{LOCAL_CHECKPOINT_PREFIX}{step}"
        shutil.rmtree(target, ignore_errors=True)
        try:
            manifest = json.loads(store.read_bytes(join(uri, MANIFEST)))
            names = [str(entry["path"]) for entry in manifest["files"]]
            writer = manifest.get(JOB)
            if job is not None and writer is not None and writer != dict(job):
                log.warning("checkpoint %s not resumed: written by another job, %s", uri, writer)
                continue
            why = None if source is None else source_mismatch(manifest.get(SOURCE), source)
            if why is not None:
                log.warning("checkpoint %s not resumed: it %s", uri, why)
                mismatched[step] = why
                continue
            store.fetch_many((join(uri, name), target / name) for name in names)
            problems = manifest_problems(manifest, target)
        except (ValueError, KeyError, TypeError) as error:
            problems = [f"unreadable manifest ({type(error).__name__})"]
        except StorageError as error:
            if error.retryable:  # an outage says nothing about this checkpoint: fail, try again later
                raise
            problems = [str(error)]
        if not problems:
            log.info("resuming from %s", uri)
            return ResumePoint(target, mismatched)
        log.warning("checkpoint %s skipped: %s", uri, "; ".join(problems[:5]))
        shutil.rmtree(target, ignore_errors=True)
    return ResumePoint(None, mismatched)


# ---------------------------------------------------------------- lineage of the final model


def lineage_manifest(
    contract: TrainerContract,
    datasets: Mapping[str, Path],
    metrics: Mapping[str, Any],
    tool_call_format: str | None = None,
    cost: Mapping[str, Any] | None = None,
    promotion: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What went into the final model: base model, data (URI + sha256), hyperparameters, versions, results,
    and what the run cost (GPU-hours, and dollars where a price per GPU-hour is known).

    datasets maps each dataset URI as the spec wrote it to the local file that was trained on.
    """
    spec = contract.spec
    return {
        "format": LINEAGE_FORMAT,
        "createdAt": now_iso(),
        "tooltuneVersion": __version__,
        "image": contract.image,
        "job": contract.job.dump(),
        "backend": spec.backend,
        "baseModel": spec.base_model,
        "toolCallFormat": tool_call_format,
        "datasets": [
            {"uri": uri, "sha256": sha256_file(path), "bytes": path.stat().st_size}
            for uri, path in datasets.items()
        ],
        "hyperparameters": spec.hyperparameters.dump(),
        "seed": spec.dataset.seed,
        "output": spec.output.uri,
        "metrics": dict(metrics),
        "cost": dict(cost) if cost else None,
        **dict(promotion or {}),
        "training": dict(training) if training else None,  # processes and effective batch (status.training)
    }


def write_lineage(
    store: Store,
    contract: TrainerContract,
    datasets: Mapping[str, Path],
    metrics: Mapping[str, Any],
    tool_call_format: str | None = None,
    cost: Mapping[str, Any] | None = None,
    promotion: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> str:
    """Write <output>/final/lineage.json and return its URI; promotion: the gate verdict (promoted, gate)."""
    uri = join(contract.spec.output.uri, FINAL_DIR, LINEAGE)
    document = lineage_manifest(contract, datasets, metrics, tool_call_format, cost, promotion, training)
    store.write_bytes(uri, json.dumps(document, indent=1, sort_keys=True, default=str).encode())
    return uri
