"""The training recipe, top to bottom like the lab: data, split, format, model, train, evaluate, save.

`run(contract, workdir)` is the whole job; the pod entrypoint (`tooltune train`) and the local runner
(`tooltune run`) both call it. Errors a user can fix (bad data, bad settings) raise `InvalidJob`
subclasses, which the entrypoint turns into exit code 2; anything else is worth a retry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tooltune_api.models import ToolTuneJobSpec, TrainerContract

from tooltune_trainer import backends, tiny
from tooltune_trainer.data import InvalidDataset, read_jsonl, split_examples, validate_examples
from tooltune_trainer.evaluate import evaluate, write_report
from tooltune_trainer.formatting import FormattingError, templated_length, training_rows
from tooltune_trainer.storage import Store, join, open_store

FINAL_DIR = "final"
EVALUATION_FILE = "evaluation.json"
LOSS_CURVE_FILE = "loss_curve.png"
TRAIN_LOG_FILE = "train_log.json"

# What a user can fix; the entrypoint exits 2 on these (the Job fails at once instead of retrying).
INVALID_JOB_ERRORS: tuple[type[Exception], ...] = (InvalidDataset, FormattingError, backends.BackendError)


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


def run(
    contract: TrainerContract,
    workdir: Path,
    callbacks: list[Any] | None = None,
    on_stage: Callable[[str], None] = lambda stage: None,
) -> RunResult:
    spec = contract.spec
    started = time.monotonic()
    device = backends.detect_device()
    backend = backends.prepare(device)
    backends.check_supported(spec, device)
    store = open_store(spec.storage)

    on_stage("fetch and validate data")
    train_lines = _fetch_lines(store, spec.dataset.train, workdir / "data" / "train.jsonl")
    examples = _validated(train_lines)
    model_source = (
        tiny.ensure_tiny_model(examples, workdir) if tiny.is_tiny(spec.base_model) else spec.base_model
    )
    count_tokens = partial(templated_length, _tokenizer(model_source))
    examples = _validated(train_lines, spec, count_tokens)

    on_stage("split")
    if spec.dataset.validation:
        validation_lines = _fetch_lines(store, spec.dataset.validation, workdir / "data" / "validation.jsonl")
        train, validation = examples, _validated(validation_lines, spec, count_tokens)
    else:
        train, validation = split_examples(
            examples, spec.dataset.effective_validation_split, spec.dataset.seed
        )

    on_stage(f"load model ({backend} on {device})")
    model, tokenizer = backends.load_model(spec, device, model_source)

    on_stage("format with the chat template")
    max_length = spec.hyperparameters.max_seq_length
    train_rows = training_rows(tokenizer, train, max_length)
    validation_rows = training_rows(tokenizer, validation, max_length)

    on_stage("train")
    trainer = _trainer(spec, model, tokenizer, train_rows, validation_rows, workdir, device, callbacks or [])
    trainer.train(resume_from_checkpoint=_resume_from(store, spec, workdir))
    eval_loss = trainer.evaluate()["eval_loss"] if validation_rows else None

    on_stage("evaluate tool calls")
    report = evaluate(
        trainer.model,
        tokenizer,
        validation,
        spec.evaluation.smoke_prompts,
        train,
        spec.evaluation.max_examples,
    )

    on_stage("save and upload")
    final = workdir / "output" / FINAL_DIR
    backends.clear_dir(final)
    saved = backends.save_model(trainer.model, tokenizer, final, spec, device)
    history = trainer.state.log_history
    write_report(report, final / EVALUATION_FILE)
    (final / TRAIN_LOG_FILE).write_text(json.dumps(history, indent=1) + "\n")
    _plot_loss_curve(history, final / LOSS_CURVE_FILE)
    output_uri = join(spec.output.uri, FINAL_DIR)
    store.upload_dir(final, output_uri)

    return RunResult(
        output_uri=output_uri,
        device=device,
        backend=backend,
        train_examples=len(train),
        validation_examples=len(validation),
        steps=trainer.state.global_step,
        seconds=time.monotonic() - started,
        train_loss=_last(history, "loss"),
        eval_loss=eval_loss,
        evaluation=report,
        saved=saved,
    )


# ---------------------------------------------------------------- steps of the recipe


def _fetch_lines(store: Store, uri: str, dest: Path) -> list[str]:
    return list(read_jsonl(store.fetch(uri, dest)))


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


def _resume_from(store: Store, spec: ToolTuneJobSpec, workdir: Path) -> str | None:
    """The newest complete checkpoint under <output>/checkpoints/, downloaded, if an attempt left one."""
    # CHECKPOINT RESUME: wire tooltune_trainer.checkpoints.fetch_latest_checkpoint here once it lands.
    return None


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    return next((entry[key] for entry in reversed(history) if key in entry), None)


def _plot_loss_curve(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5))
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss")):
        points = [(entry["step"], entry[key]) for entry in history if key in entry]
        if points:
            axes.plot(*zip(*points, strict=True), marker="." if key == "eval_loss" else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
