"""The training recipe, top to bottom like the lab: data, split, format, model, evaluate the base, train,
evaluate the tuned model (and the references), save, gate.

`run(contract, workdir)` is the whole job; the pod entrypoint (`tooltune train`) and the local runner
(`tooltune run`) both call it. Errors a user can fix (bad data, bad settings) raise `InvalidJob`
subclasses, which the entrypoint turns into exit code 2; anything else is worth a retry.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tooltune_api import WORKDIR_ENV
from tooltune_api.models import (
    BASE,
    InvalidSpec,
    ToolTuneJobSpec,
    TrainerContract,
    TrainingStatus,
    describe_validation_error,
    now_iso,
)
from transformers import PrinterCallback

from tooltune_trainer import backends, pod, ranks, tiny
from tooltune_trainer.checkpoints import (
    CheckpointSync,
    ResumePoint,
    SaveOnTerminate,
    checkpoint_source,
    fetch_latest_checkpoint,
    local_checkpoint,
    start_over,
    write_lineage,
)
from tooltune_trainer.data import InvalidDataset, read_jsonl, split_examples, validate_examples
from tooltune_trainer.evaluate import (
    SAMPLES_IN_REPORT,
    ModelEvaluation,
    Turn,
    agreement,
    evaluate,
    evaluation_turns,
    prompt_of,
    same_calls,
    write_report,
)
from tooltune_trainer.formatting import FormattingError, end_of_turn_id, templated_length, training_rows
from tooltune_trainer.gate import evaluate_gate
from tooltune_trainer.plots import render_loss_curves
from tooltune_trainer.references import ReferenceFailed, api_key, evaluate_reference
from tooltune_trainer.serving import write_model_card
from tooltune_trainer.storage import StorageError, join, open_store
from tooltune_trainer.telemetry import (
    EventRecorder,
    StatusReporter,
    TrainingMetrics,
    gpu_cost,
    telemetry_callbacks,
)
from tooltune_trainer.tool_formats import ToolCallFormat, prepare_tokenizer

log = logging.getLogger(__name__)

FINAL_DIR = "final"
CHECKPOINT_UPLOAD_TIMEOUT_SECONDS = 600
# After SIGTERM: how long the last checkpoint may take to upload (the pod's grace period ends it anyway).
TERMINATING_UPLOAD_TIMEOUT_SECONDS = 120
# evaluation report key -> TrainingMetrics gauge (the same names as status.evaluation)
EVALUATION_METRICS = {
    "toolNameAccuracy": "tool_name_accuracy",
    "argumentsExactMatch": "arguments_exact_match",
    "validJsonRate": "valid_json_rate",
    "noCallRate": "no_call_rate",
}
STATUS_SCORES = ("examples", *EVALUATION_METRICS, "falseCallRate")
EVALUATION_FILE = "evaluation.json"
PROMOTION_FILE = "promotion.json"  # next to final/ when the run passed its gate: the model may be used
LOSS_CURVE_FILE = "loss_curve.png"
TRAIN_LOG_FILE = "train_log.json"


class InvalidJob(ValueError):
    """The contract or the job's settings cannot work as written; the message names the field."""


class Terminated(RuntimeError):
    """SIGTERM stopped training after a checkpoint of the last step; the next pod resumes from it."""

    def __init__(self, step: int, uploaded: bool | None):
        self.step = step
        self.uploaded = uploaded  # None: not this process's to upload (a rank other than 0)
        where = {
            True: "its checkpoint is uploaded",
            False: "its checkpoint is NOT uploaded in time; the next pod resumes from an older one",
            None: "rank 0 uploads its checkpoint",
        }[uploaded]
        super().__init__(f"terminated at step {step}: {where}")


# What a user can fix; the entrypoint exits 2 on these (the Job fails at once instead of retrying).
INVALID_JOB_ERRORS: tuple[type[Exception], ...] = (
    InvalidJob,
    InvalidDataset,
    InvalidSpec,
    FormattingError,
    backends.BackendError,
)


@dataclass
class RunResult:
    output_uri: str
    device: str
    backend: str
    train_examples: int
    validation_examples: int
    steps: int
    seconds: float
    train_loss: float | None
    eval_loss: float | None
    evaluation: dict[str, Any]
    saved: list[str] = field(default_factory=list)
    rank: int = 0  # under DDP only rank 0 evaluates and saves; the others' evaluation is empty

    @property
    def promoted(self) -> bool:
        return bool(self.evaluation.get("promoted"))


def run(
    contract: TrainerContract,
    workdir: Path,
    callbacks: list[Any] | None = None,
    on_stage: Callable[[str], None] = lambda stage: None,
    print_logs: bool = True,
    resume: bool = True,
) -> RunResult:
    """Train the contract's job end to end; workdir holds data, the tiny model cache and local checkpoints."""
    spec = contract.spec
    started = time.monotonic()
    device = backends.detect_device()
    process = ranks.from_env()
    ranks.join_group(process, device)
    backend = backends.prepare(device)
    backends.check_supported(spec, device)
    store = open_store(spec.storage)
    # Only rank 0 speaks for the job: status, Events and /metrics (the loss it logs is all ranks' mean).
    silent = {"report_progress": False, "metrics_port": 0}
    speaker = contract if process.is_main else contract.model_copy(update=silent)
    reporter, metrics = StatusReporter(speaker), TrainingMetrics(speaker)
    metrics.serve()

    on_stage("fetch and validate data")
    fetch = (
        store.fetch if process.local_rank == 0 else lambda uri, dest: dest
    )  # the node's others read its copy
    with ranks.local_main_first(process):  # one download and one tiny model per node, read by all its ranks
        datasets = {spec.dataset.train: fetch(spec.dataset.train, workdir / "data" / "train.jsonl")}
        train_lines = list(read_jsonl(datasets[spec.dataset.train]))
        examples = _validated(train_lines)
        model_source = (
            str(tiny.ensure_tiny_model(examples, workdir))
            if tiny.is_tiny(spec.base_model)
            else spec.base_model
        )
    on_stage("pick the tool-call format")
    chat_tokenizer = _tokenizer(model_source)
    fmt = prepare_tokenizer(chat_tokenizer, spec.tool_call_format)
    log.info("tool-call format: %s (%s)", fmt.name, fmt.summary)
    count_tokens = partial(templated_length, chat_tokenizer)
    examples = _validated(train_lines, spec, count_tokens)

    on_stage("split")
    if spec.dataset.validation:
        with ranks.local_main_first(process):
            datasets[spec.dataset.validation] = fetch(spec.dataset.validation, workdir / "data" / "val.jsonl")
        validation_lines = list(read_jsonl(datasets[spec.dataset.validation]))
        train, validation = examples, _validated(validation_lines, spec, count_tokens)
    else:
        try:
            train, validation = split_examples(
                examples, spec.dataset.effective_validation_split, spec.dataset.seed
            )
        except ValueError as error:
            raise InvalidJob(f"dataset.validationSplit: {error}") from None

    on_stage(f"load model ({backend} on {device})")
    model, tokenizer = backends.load_model(spec, device, model_source)

    on_stage("format with the chat template")
    tokenizer.chat_template = chat_tokenizer.chat_template  # the one the format was prepared with
    max_length = spec.hyperparameters.max_seq_length
    train_rows = training_rows(tokenizer, train, max_length, fmt)
    validation_rows = training_rows(tokenizer, validation, max_length, fmt)

    source = checkpoint_source(spec, tokenizer, fmt.name)
    # The job that writes this output, by name: a re-created ToolTuneJob (or its next attempt) resumes its own
    # checkpoints, never another job's (the operator refuses two unfinished jobs on one output).
    writer = {"namespace": contract.job.namespace, "name": contract.job.name}
    checkpoint_sync = CheckpointSync(
        store,
        spec.output.uri,
        spec.checkpoints.keep,
        on_complete=lambda step, uri, count: reporter.update(
            checkpoints={"latestStep": step, "latestUri": uri, "count": count}
        ),
        source=source,
        job=writer,
    )
    telemetry = telemetry_callbacks(speaker, reporter, metrics)
    save_on_terminate = SaveOnTerminate(process)
    trainer = _trainer(
        spec,
        model,
        tokenizer,
        train_rows,
        validation_rows,
        workdir,
        device,
        [*telemetry, checkpoint_sync, save_on_terminate, *(callbacks or [])],
    )
    if not print_logs:
        trainer.remove_callback(PrinterCallback)
    turns = evaluation_turns(validation)[: spec.evaluation.max_examples]
    base = None
    if spec.evaluation.evaluate_base and process.is_main:  # rank 0 alone evaluates
        on_stage(f"evaluate the base model on {len(turns)} validation turns")
        _stop_at_end_of_turn(trainer.model, tokenizer, fmt)
        with base_weights(trainer.model):
            base = evaluate(trainer.model, tokenizer, turns, [], train, fmt)
        log.info("base model: %s (%.1f s)", base.report["metrics"], base.report["seconds"])
        reporter.update(evaluation={"base": _status_scores(base.report["metrics"])})
    training = training_status(spec, process, backend, backends.impl_reason(device))
    _report_training(training, reporter, telemetry[0].events)
    on_stage("train")
    with ranks.local_main_first(process):  # per node, local rank 0 downloads; its other ranks read that copy
        if not resume:
            resume_point = start_over(store, spec.output.uri)
        elif process.local_rank == 0:
            resume_point = fetch_latest_checkpoint(store, spec.output.uri, workdir / "resume", source, writer)
        else:
            resume_point = local_checkpoint(workdir / "resume")
    _report_resume(resume_point, reporter, telemetry[0].events)
    checkpoint_sync.supersede(resume_point.mismatched)
    trainer.train(resume_from_checkpoint=resume_point.checkpoint)
    if save_on_terminate.requested.is_set():
        checkpoint_sync.close(TERMINATING_UPLOAD_TIMEOUT_SECONDS)
        reporter.flush()
        metrics.close()
        step = trainer.state.global_step
        raise Terminated(step, step in checkpoint_sync.completed if process.is_main else None)
    try:
        _stop_at_end_of_turn(trainer.model, tokenizer, fmt)
        eval_loss = trainer.evaluate()["eval_loss"] if validation_rows else None  # every rank: a collective
        if not process.is_main:  # rank 0 alone evaluates tool calls, saves and uploads
            return RunResult(
                output_uri=join(spec.output.uri, FINAL_DIR), device=device, backend=backend,
                train_examples=len(train), validation_examples=len(validation),
                steps=trainer.state.global_step, seconds=time.monotonic() - started,
                train_loss=_last(trainer.state.log_history, "loss"), eval_loss=eval_loss, evaluation={},
                rank=process.rank,
            )  # fmt: skip

        on_stage(f"evaluate the tuned model on {len(turns)} validation turns")
        tuned = evaluate(trainer.model, tokenizer, turns, spec.evaluation.smoke_prompts, train, fmt)
        scores = tuned.report["metrics"]
        metrics.observe(**{name: scores[key] for key, name in EVALUATION_METRICS.items()})
        references = _evaluate_references(spec, turns, train, tuned, on_stage, telemetry[0].events)
        gate = evaluate_gate(
            spec.evaluation.gate,
            scores,
            {BASE: base.report["metrics"] if base else None}
            | {r["name"]: r.get("metrics") for r in references},
        )
        log.info("%s", gate["message"])
        report = {
            **tuned.report,
            "base": _without(base.report, "smokeTests", "samples", "wrongAnswers") if base else None,
            "references": references,
            "gate": gate,
            "promoted": gate["passed"],
            "promotionUri": join(spec.output.uri, PROMOTION_FILE) if gate["passed"] else None,
        }

        on_stage("save and upload")
        final = workdir / "output" / FINAL_DIR
        backends.clear_dir(final)
        saved = backends.save_model(trainer.model, tokenizer, final, spec, device)
        write_report(report, final / EVALUATION_FILE)
        write_model_card(final, spec, fmt, saved, scores)
        (final / TRAIN_LOG_FILE).write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
        diagnosis = telemetry[0].diagnosis
        if telemetry[0].train_losses or telemetry[0].eval_losses:
            render_loss_curves(
                telemetry[0].train_losses, telemetry[0].eval_losses, diagnosis, final / LOSS_CURVE_FILE
            )
        output_uri = join(spec.output.uri, FINAL_DIR)
        promotion_uri = join(spec.output.uri, PROMOTION_FILE)
        store.delete(promotion_uri)  # an earlier run's marker must never vouch for this model
        store.upload_dir(final, output_uri)
        if not checkpoint_sync.close(CHECKPOINT_UPLOAD_TIMEOUT_SECONDS):
            log.warning(
                "checkpoint uploads still pending after %ss; the final model is complete",
                CHECKPOINT_UPLOAD_TIMEOUT_SECONDS,
            )
        write_lineage(
            store,
            contract,
            datasets,
            {
                **scores,
                "trainLoss": _last(trainer.state.log_history, "loss"),
                "evalLoss": eval_loss,
                "steps": trainer.state.global_step,
            },
            fmt.name,
            gpu_cost(spec.resources.gpus, telemetry[0].gpu_hour_price, time.monotonic() - started, 0),
            {"promoted": gate["passed"], "gate": gate["message"]},
            training,
        )
        if gate["passed"]:
            marker = {"promoted": True, "model": output_uri, "gate": gate["message"], "at": now_iso(),
                      "job": contract.job.dump()}  # fmt: skip
            store.write_bytes(promotion_uri, (json.dumps(marker, indent=1) + "\n").encode())
            telemetry[0].events.record("ModelPromoted", f"{output_uri}: {gate['message']}")
        reporter.update(
            evaluation={
                **_status_scores(scores),
                "reportUri": join(output_uri, EVALUATION_FILE),
                "base": _status_scores(base.report["metrics"]) if base else None,
                "references": [_reference_status(r) for r in references] or None,
                "gate": {"passed": gate["passed"], "message": gate["message"]},
                "promoted": gate["passed"],
            },
            output={"uri": output_uri},
        )
        reporter.flush()
        telemetry[0].events.flush()  # the evaluation after training may have changed the diagnosis
        metrics.close()

        return RunResult(
            output_uri=output_uri,
            device=device,
            backend=backend,
            train_examples=len(train),
            validation_examples=len(validation),
            steps=trainer.state.global_step,
            seconds=time.monotonic() - started,
            train_loss=_last(trainer.state.log_history, "loss"),
            eval_loss=eval_loss,
            evaluation=report,
            saved=saved,
        )
    except BaseException:
        # SIGTERM or a failure after training: the next pod resumes from the newest complete checkpoint,
        # so the one still uploading (the last step's) gets its chance to land first.
        checkpoint_sync.close(TERMINATING_UPLOAD_TIMEOUT_SECONDS)
        raise


# ---------------------------------------------------------------- steps of the recipe


def _validated(
    lines: list[str],
    spec: ToolTuneJobSpec | None = None,
    count_tokens: Callable[[dict[str, Any]], int] | None = None,
) -> list[dict[str, Any]]:
    report = validate_examples(
        lines, max_seq_length=spec.hyperparameters.max_seq_length if spec else None, count_tokens=count_tokens
    )
    if report.problems:
        raise InvalidDataset(report)
    return report.examples


def training_status(
    spec: ToolTuneJobSpec, process: ranks.Ranks, implementation: str, reason: str | None
) -> dict[str, Any]:
    """status.training: the implementation, the processes, and the batch as a user counts it."""
    hp = spec.hyperparameters
    return TrainingStatus(
        implementation=implementation,
        implementation_reason=reason,
        nodes=process.nodes,
        processes_per_node=process.local_world_size,
        world_size=process.world_size,
        per_device_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        effective_batch_size=hp.batch_size * process.world_size * hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
    ).dump()


def _report_training(training: dict[str, Any], reporter: StatusReporter, events: EventRecorder) -> None:
    """The log line, status.training and (when it is not the device's default) an Event saying how this
    attempt trains."""
    batch = (
        f"effective batch {training['effectiveBatchSize']} = {training['perDeviceBatchSize']} per device × "
        f"{training['worldSize']} process(es) × {training['gradientAccumulationSteps']} accumulation steps; "
        f"learning rate {training['learningRate']:g} per optimizer step (not scaled with the processes)"
    )
    log.info("training with %s: %s", training["implementation"], batch)
    reporter.update(training=training)
    reason = training.get("implementationReason")
    if reason:
        log.warning("%s", reason)
        events.record("DistributedTraining", f"{reason}; {batch}")


def _report_resume(resume: ResumePoint, reporter: StatusReporter, events: EventRecorder) -> None:
    """Say where training starts: the status's checkpoints field, an Event, and for a fresh start over
    checkpoints made from something else, a warning in the log."""
    reason = resume.fresh_start_reason
    reporter.update(checkpoints={"resumedFromStep": resume.step, "freshStartReason": reason})
    if reason is not None:
        log.warning("%s", reason)
        events.record("CheckpointMismatch", reason, "Warning")
    elif resume.step is not None:
        events.record("ResumedFromCheckpoint", f"resuming from checkpoint step-{resume.step}")


def _tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def _trainer(
    spec: ToolTuneJobSpec,
    model: Any,
    tokenizer: Any,
    train_rows: list[dict[str, list[int]]],
    validation_rows: list[dict[str, list[int]]],
    workdir: Path,
    device: str,
    callbacks: list[Any],
) -> Any:
    from datasets import Dataset

    config = backends.sft_config(spec, workdir / "checkpoints", device, has_eval=bool(validation_rows))
    return backends.trainer_class(device)(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(validation_rows) if validation_rows else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def _stop_at_end_of_turn(model: Any, tokenizer: Any, fmt: ToolCallFormat) -> None:
    """Generation stops at the template's end-of-turn token. The Trainer aligns the generation config's eos
    with the tokenizer's single eos token, which for Gemma (eos `<eos>`, turns end `<end_of_turn>`) would let
    evaluation and a saved full model talk past the end of their turn."""
    end = end_of_turn_id(tokenizer, fmt)
    configured = model.generation_config.eos_token_id
    stops = list(configured) if isinstance(configured, list) else [] if configured is None else [configured]
    if end is not None and end not in stops:
        model.generation_config.eos_token_id = [*stops, end]


def _status_scores(scores: dict[str, Any]) -> dict[str, Any]:
    return {key: scores[key] for key in STATUS_SCORES if scores.get(key) is not None}


def _reference_status(reference: dict[str, Any]) -> dict[str, Any]:
    scores = _status_scores(reference["metrics"]) if "metrics" in reference else {}
    extra = {key: reference[key] for key in ("agreement", "error") if reference.get(key) is not None}
    return {"name": reference["name"], "model": reference["model"], **scores, **extra}


def _without(report: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in report.items() if key not in keys}


@contextmanager
def base_weights(model: Any) -> Iterator[None]:
    """The model as its base: LoRA adapters disabled (PEFT's disable_adapter; the output is the base
    model's exactly, tests/integration/test_evaluation.py compares logits), a full fine-tune as it is before
    its first step."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield
    else:
        yield


def _evaluate_references(
    spec: ToolTuneJobSpec,
    turns: list[Turn],
    train: list[dict[str, Any]],
    tuned: ModelEvaluation,
    on_stage: Callable[[str], None],
    events: EventRecorder,
) -> list[dict[str, Any]]:
    """Each reference scored on the turns, with its agreement with the tuned model and the turns where they
    differ; a reference that fails is reported with its reason (a Warning Event too), never raised."""
    results = []
    for index, reference in enumerate(spec.evaluation.references):
        on_stage(f"evaluate reference {reference.name} ({reference.model})")
        entry: dict[str, Any] = {
            "name": reference.name,
            "model": reference.model,
            "baseUrl": reference.base_url,
        }
        try:
            report, parsed, texts = evaluate_reference(reference, api_key(index, reference), turns, train)
        except Exception as error:  # whatever a remote service does, the tuned model is not lost over it
            if not isinstance(error, ReferenceFailed):
                log.exception("reference %s", reference.name)
            reason = str(error) if isinstance(error, ReferenceFailed) else f"{type(error).__name__}: {error}"
            log.warning("reference %s: %s", reference.name, reason)
            events.record("ReferenceFailed", f"reference {reference.name}: {reason}", "Warning")
            results.append(entry | {"error": reason})
            continue
        differ = [
            {"prompt": prompt_of(turn), "tuned": mine, "reference": theirs}
            for turn, mine_parsed, theirs_parsed, mine, theirs in zip(
                turns, tuned.parsed, parsed, tuned.answers, texts, strict=True
            )
            if not same_calls(mine_parsed, theirs_parsed)
        ]
        results.append(
            entry
            | report
            | {"agreement": agreement(tuned.parsed, parsed), "disagreements": differ[:SAMPLES_IN_REPORT]}
        )
    return results


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    return next((entry[key] for entry in reversed(history) if key in entry), None)


# ---------------------------------------------------------------- a ToolTuneJob file, run locally

LOCAL_NAMESPACE = "local"


def _is_local(uri: str) -> bool:
    return "://" not in uri and not Path(uri).is_absolute()


def contract_from_job_file(path: Path, cwd: Path) -> TrainerContract:
    """The contract `tooltune run` trains: the YAML's spec, dataset paths resolved against the YAML's
    directory, a relative output.uri against cwd, and no status patches or /metrics server."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise InvalidJob(f"{path}: cannot read the ToolTuneJob: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("spec"), dict):
        raise InvalidJob(f"{path}: not a ToolTuneJob (needs apiVersion tooltune.dev/v1alpha1 and a spec)")
    spec_doc = dict(document["spec"])
    dataset = dict(spec_doc.get("dataset") or {})
    for key in ("train", "validation"):
        if isinstance(dataset.get(key), str) and _is_local(dataset[key]):
            dataset[key] = str((path.parent / dataset[key]).resolve())
    spec_doc["dataset"] = dataset
    output = dict(spec_doc.get("output") or {})
    if isinstance(output.get("uri"), str) and _is_local(output["uri"]):
        output["uri"] = str((cwd / output["uri"]).resolve())
    spec_doc["output"] = output
    try:
        spec = ToolTuneJobSpec.model_validate(spec_doc)
    except ValidationError as error:
        raise InvalidJob(f"{path}: " + "; ".join(describe_validation_error(error))) from None
    if spec.backend != "unsloth":
        raise InvalidJob(f"{path}: spec.backend: {spec.backend} trains remotely; use it on a cluster")
    name = str((document.get("metadata") or {}).get("name") or path.stem)
    return TrainerContract(
        job={"namespace": LOCAL_NAMESPACE, "name": name}, spec=spec, metrics_port=0, report_progress=False
    )


# ---------------------------------------------------------------- pod entrypoint

DEFAULT_WORKDIR = "/tmp/tooltune"
NOT_RETRYABLE: tuple[type[Exception], ...] = (pod.InvalidContract, *INVALID_JOB_ERRORS)


def main(config: Path | None = None) -> int:
    """`tooltune train`: run the contract's job; exit and termination message as tooltune_trainer.pod says."""
    pod.setup_logging()
    workdir = Path(os.environ.get(WORKDIR_ENV, DEFAULT_WORKDIR))
    try:
        contract = pod.load_contract(pod.contract_path(config))
        result = run(contract, workdir, on_stage=lambda stage: log.info("stage: %s", stage))
        ranks.leave_group(ranks.from_env())  # this rank's collectives are over; rank 0 evaluates alone
    except NOT_RETRYABLE as error:
        log.error("invalid job, not retrying: %s", error)
        return pod.finish(pod.INVALID, error)
    except Terminated as stopped:
        ranks.leave_group(ranks.from_env())  # every rank stopped at the same step: no collective is left
        log.warning("%s", stopped)
        return pod.finish(pod.TERMINATED, stopped)
    except Exception as error:
        if isinstance(error, StorageError) and not error.retryable:  # denied, no bucket, not S3: fix first
            log.error("storage refused, not retrying: %s", error)
            return pod.finish(pod.INVALID, error)
        log.exception("training failed, the Job may retry")
        return pod.finish(pod.RETRYABLE, f"{type(error).__name__}: {pod.one_line(error)}")
    if result.rank:
        summary = f"rank {result.rank}: {result.steps} steps; rank 0 evaluates and saves the model"
        return pod.finish(pod.SUCCEEDED, summary)
    gate = result.evaluation["gate"]["message"]
    if not result.promoted:  # the model is kept, not promoted; retrying would train the same model again
        log.error("%s", gate)
        return pod.finish(pod.GATE_FAILED, f"{gate}; the model is kept at {result.output_uri}")
    accuracy = result.evaluation["metrics"]["toolNameAccuracy"]
    summary = f"{result.steps} steps, tool-name accuracy {accuracy}, model at {result.output_uri}, promoted"
    return pod.finish(pod.SUCCEEDED, summary)
