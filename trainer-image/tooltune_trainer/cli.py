"""The `tooltune` command: run a ToolTuneJob locally, validate and split datasets, and the pod entrypoints."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from tooltune_api import EXIT_INVALID

from tooltune_trainer import pod
from tooltune_trainer.data import (
    Problem,
    ValidationReport,
    read_jsonl,
    split_examples,
    validate_examples,
    write_jsonl,
)

app = typer.Typer(help="Fine-tune models for tool calling.", no_args_is_help=True, add_completion=False)


@app.command()
def submit(
    config: Annotated[
        Path | None, typer.Option("--config", help="Contract JSON; default $TOOLTUNE_CONFIG.")
    ] = None,
) -> None:
    """Run the OpenAI backend's submitter: upload the data, drive one remote fine-tuning job."""
    exit_on_sigterm()
    from tooltune_trainer.submitter import main

    raise typer.Exit(main(config))


@app.command("cancel-remote")
def cancel_remote(
    job_id: Annotated[str, typer.Argument(help="The remote fine-tuning job, e.g. ftjob-abc123.")],
    tooltunejob: Annotated[
        str, typer.Option("--tooltunejob", help="<namespace>/<name> of the ToolTuneJob the Events are about.")
    ],
    uid: Annotated[str, typer.Option("--uid", help="The ToolTuneJob's uid.")] = "",
    why: Annotated[str, typer.Option("--why", help="Said in the Event: deleted, suspended.")] = "deleted",
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="The fine-tuning API (spec.openai.baseUrl).")
    ] = None,
    secret: Annotated[
        str,
        typer.Option("--secret", help="<name>/<key> of the key's Secret, for messages."),
    ] = "",
) -> None:
    """Cancel a remote OpenAI fine-tuning job with the key in $OPENAI_API_KEY (the operator's cancel pod)."""
    exit_on_sigterm()
    from tooltune_api.models import JobRef, SecretKeyRef

    from tooltune_trainer.remote_cancel import main

    namespace, _, name = tooltunejob.partition("/")
    if not namespace or not name:
        raise typer.BadParameter(f"{tooltunejob!r} is not <namespace>/<name>", param_hint="--tooltunejob")
    secret_name, _, key = secret.partition("/")
    secret_ref = SecretKeyRef(name=secret_name, **({"key": key} if key else {})) if secret_name else None
    job = JobRef(namespace=namespace, name=name, uid=uid)
    raise typer.Exit(main(job_id, job, why, base_url=base_url, secret_ref=secret_ref))


# ---------------------------------------------------------------- datasets: validate and split

DEFAULT_VALIDATION_SPLIT = 0.1  # the lab's 90/10 split, as dataset.validationSplit defaults to
DEFAULT_SEED = 42  # as dataset.seed defaults to
DEFAULT_EPOCHS = 3  # as hyperparameters.epochs defaults to


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="OpenAI fine-tuning JSONL: one example per line.")],
    max_seq_length: Annotated[
        int | None,
        typer.Option("--max-seq-length", min=1, help="Longest templated example allowed, in tokens."),
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            "--base-model",
            help="Count tokens with this model's tokenizer and chat template "
            "(a local path, or tooltune/tiny-llama).",
        ),
    ] = None,
    epochs: Annotated[
        int,
        typer.Option(
            "--epochs", min=1, help="Epochs of the run (hyperparameters.epochs), to count training tokens."
        ),
    ] = DEFAULT_EPOCHS,
    validation_split: Annotated[
        float,
        typer.Option(
            "--validation-split",
            min=0,
            max=0.99,
            help="Share held out as dataset.validationSplit holds it out; 0 when the whole file trains "
            "(dataset.validation set).",
        ),
    ] = DEFAULT_VALIDATION_SPLIT,
    seed: Annotated[int, typer.Option("--seed", help="dataset.seed: which examples the split holds out.")] = (
        DEFAULT_SEED
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a dataset: every problem as FILE:LINE: reason, then a summary. Exit 1 when there are problems.

    With --base-model it also counts the tokens training will process: the training split's examples
    templated with the model's chat template, times the epochs."""
    if max_seq_length is not None and base_model is None:
        raise typer.BadParameter("needs --base-model to count tokens, e.g. --base-model tooltune/tiny-llama",
                                 param_hint="--max-seq-length")  # fmt: skip
    lengths: dict[int, int] = {}
    report = _validate_file(file, max_seq_length, base_model, lengths)
    training = training_tokens(report, lengths, epochs, validation_split, seed) if lengths else None
    if as_json:
        data = report.as_dict() | ({"training": training} if training else {})
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        _print_findings(file, report)
        if report.summary.lines:
            _print_summary(report, training)
        _print_verdict(report)
    raise typer.Exit(0 if report.ok else 1)


def training_tokens(
    report: ValidationReport, lengths: dict[int, int], epochs: int, validation_split: float, seed: int
) -> dict[str, Any] | None:
    """The templated tokens of the examples training will see (the split the trainer makes, with the same
    seed), per epoch and times the epochs; None when the file cannot be trained as it is."""
    if not report.ok:
        return None
    train = report.examples
    if validation_split > 0:
        try:
            train, _ = split_examples(report.examples, validation_split, seed)
        except ValueError:
            return None
    per_epoch = sum(lengths[id(example)] for example in train)
    return {
        "examples": len(train),
        "validationSplit": validation_split,
        "seed": seed,
        "epochs": epochs,
        "tokensPerEpoch": per_epoch,
        "tokens": per_epoch * epochs,
    }


@app.command()
def split(
    file: Annotated[Path, typer.Argument(help="OpenAI fine-tuning JSONL: one example per line.")],
    validation_split: Annotated[
        float,
        typer.Option(
            "--validation-split",
            help="Share of examples held out for validation.",
        ),
    ] = DEFAULT_VALIDATION_SPLIT,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the shuffle: same seed, same split.")
    ] = DEFAULT_SEED,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where train.jsonl and val.jsonl go.")] = Path(),
) -> None:
    """Validate, shuffle with a seed, write train.jsonl and val.jsonl: the lab's reproducible 90/10 split."""
    report = _validate_file(file, None, None)
    if not report.ok:
        _print_findings(file, report, warnings=False)
        _print_verdict(report)
        raise typer.Exit(1)
    try:
        train, val = split_examples(report.examples, validation_split, seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(out_dir / "train.jsonl", train)
        write_jsonl(out_dir / "val.jsonl", val)
    except (ValueError, OSError) as error:
        typer.echo(f"{file}: cannot split: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Training examples: {len(train)} -> {out_dir / 'train.jsonl'}")
    typer.echo(f"Validation examples: {len(val)} -> {out_dir / 'val.jsonl'}")


def _validate_file(
    file: Path, max_seq_length: int | None, base_model: str | None, lengths: dict[int, int] | None = None
) -> ValidationReport:
    """Validate file; with base_model, count each example's templated tokens (into lengths, by id)."""
    try:
        lines = list(read_jsonl(file))
    except OSError as error:
        return ValidationReport(problems=[Problem(None, f"cannot be read: {error.strerror or error}")])
    report = validate_examples(lines)
    if base_model is None or not report.examples:
        return report
    try:
        from tooltune_trainer.formatting import templated_length
        from tooltune_trainer.tiny import load_tokenizer
        from tooltune_trainer.tool_formats import prepare_tokenizer

        tokenizer = load_tokenizer(base_model, report.examples)
        prepare_tokenizer(tokenizer)  # count as trained: in the family's tool-call format
    except Exception as error:  # any failure to load a user-named model is reported, not raised
        first_line = next(iter(str(error).splitlines()), type(error).__name__)
        report.problems.append(
            Problem(None, f"--base-model {base_model}: cannot load its tokenizer: {first_line}")
        )
        return report
    counted = lengths if lengths is not None else {}

    def count_tokens(example: dict[str, Any]) -> int:
        counted[id(example)] = templated_length(tokenizer, example)
        return counted[id(example)]

    return validate_examples(lines, max_seq_length=max_seq_length, count_tokens=count_tokens)


def _print_findings(file: Path, report: ValidationReport, warnings: bool = True) -> None:
    for problem in report.problems:
        typer.echo(
            f"{file}:{problem.line}: {problem.reason}" if problem.line else f"{file}: {problem.reason}"
        )
    for warning in report.warnings if warnings else []:
        where = f"{file}:{warning.line}" if warning.line else f"{file}"
        typer.echo(f"{where}: warning: {warning.reason}")


def _print_summary(report: ValidationReport, training: dict[str, Any] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    summary = report.summary
    table = Table(title="Dataset summary", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("lines", str(summary.lines))
    table.add_row("valid examples", str(summary.examples))
    table.add_row("invalid lines", str(summary.invalid_lines))
    table.add_row("with tool calls", f"{summary.with_tool_calls} ({summary.share_with_tool_calls:.0%})")
    table.add_row(
        "without tool calls", f"{summary.without_tool_calls} ({summary.share_without_tool_calls:.0%})"
    )
    table.add_row("with tool results (multi-turn)", str(summary.with_tool_results))
    for name, count in summary.tool_calls.most_common():
        table.add_row(f"calls to {name}", str(count))
    if summary.tokens:
        table.add_row("tokens (templated)", f"{sum(summary.tokens)} total, {max(summary.tokens)} max, "
                      f"{sum(summary.tokens) / len(summary.tokens):.0f} mean")  # fmt: skip
    if training:
        held_out = f"after the {training['validationSplit']:.0%} validation split, seed {training['seed']}"
        table.add_row(
            "training tokens (templated × epochs)",
            f"{training['tokensPerEpoch']} × {training['epochs']} epochs = {training['tokens']} "
            f"({training['examples']} examples {held_out if training['validationSplit'] else 'in all'})",
        )
    kinds = Counter(finding.kind for finding in summary.pii)
    table.add_row("likely PII", ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none")
    Console(highlight=False, markup=False).print(table)


def _print_verdict(report: ValidationReport) -> None:
    if report.ok:
        count = len(report.warnings)
        typer.echo(f"OK: {report.summary.examples} examples, {_plural(count, 'warning')}")
        return
    lines = len({problem.line for problem in report.problems if problem.line is not None})
    where = f" on {_plural(lines, 'line')}" if lines else ""
    typer.echo(
        f"FAILED: {_plural(len(report.problems), 'problem')}{where}; fix them and run tooltune validate again"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# ---------------------------------------------------------------- finished runs side by side


@app.command()
def compare(
    runs: Annotated[
        list[str], typer.Argument(help="Finished runs: output directories (or their final/) or output URIs.")
    ],
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint", help="S3 endpoint of s3:// runs (keys from AWS_ACCESS_KEY_ID and friends)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Finished runs side by side: backend, base model, steps, time, tokens, cost, each score, gate result."""
    from tooltune_api.models import PriceTable, Storage

    from tooltune_trainer.compare import CompareError, read_run, run_row
    from tooltune_trainer.storage import open_store

    store = open_store(Storage(endpoint=endpoint))
    rows, unreadable = [], 0
    for run in runs:
        try:
            rows.append(run_row(read_run(run, store), PriceTable()))
        except CompareError as error:
            typer.echo(str(error), err=True)
            unreadable += 1
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif rows:
        _print_comparison(rows)
    raise typer.Exit(1 if unreadable else 0)


def _print_comparison(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from tooltune_trainer.compare import score_columns

    scores = score_columns(rows)
    table = Table(title="Runs", title_justify="left")
    for name in ("run", "backend", "base model", "steps", "time", "tokens", "cost", *scores, "gate"):
        table.add_column(name, justify="left" if name in {"run", "backend", "base model"} else "right")
    for row in rows:
        table.add_row(
            row["run"],
            row["backend"] or "—",
            row["baseModel"] or "—",
            "—" if row["steps"] is None else f"{row['steps']:.0f}",
            "—" if row["seconds"] is None else f"{row['seconds']:.0f} s",
            "—" if row["tokens"] is None else f"{row['tokens']:,.0f}",
            "—" if row["costUsd"] is None else f"${row['costUsd']:.2f}",
            *(_fmt(row["scores"].get(name)) for name in scores),
            row.get("gate", "—"),
        )
    Console(highlight=False, markup=False).print(table)


# ---------------------------------------------------------------- training: tooltune run / tooltune train

DEFAULT_LOCAL_WORKDIR = Path(".tooltune")


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="A ToolTuneJob YAML; dataset paths are relative to it.")],
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Scratch space: data, built tiny model, local checkpoints.")
    ] = DEFAULT_LOCAL_WORKDIR,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from the newest checkpoint in output.uri, as a pod would."),
    ] = False,
) -> None:
    """Train a ToolTuneJob here with the pod's recipe (no cluster); a relative output.uri is under cwd.
    Exits 2 when the spec is invalid or the model misses spec.evaluation.gate (kept, not promoted)."""
    from rich.console import Console

    console = Console(highlight=False)
    from tooltune_trainer import backends

    _quiet_library_warnings()
    backends.prepare(backends.detect_device())  # Unsloth, when used, must be imported before transformers
    _quiet_library_progress_bars()
    from tooltune_trainer import recipe

    try:
        contract = recipe.contract_from_job_file(file, Path.cwd())
        job_workdir = workdir / contract.job.name
        with _training_progress(console) as progress:
            result = recipe.run(
                contract, job_workdir, callbacks=[progress], on_stage=progress.stage, print_logs=False,
                resume=resume,
            )  # fmt: skip
    except recipe.INVALID_JOB_ERRORS as error:
        console.print(f"[red]invalid job:[/red] {error}", markup=True)
        raise typer.Exit(EXIT_INVALID) from None
    _print_run_summary(console, result)
    if not result.promoted:  # the model is saved; spec.evaluation.gate says it is not good enough
        raise typer.Exit(EXIT_INVALID)


@app.command()
def train(
    config: Annotated[
        Path | None, typer.Option("--config", help="Contract JSON; default $TOOLTUNE_CONFIG.")
    ] = None,
) -> None:
    """The training pod's entrypoint: exit 0 done, 2 invalid data or config, anything else retryable.

    When PET_NNODES × PET_NPROC_PER_NODE (Kubeflow Trainer's variables) is more than 1, it starts torchrun,
    whose workers each run this command again (tooltune_trainer.launcher)."""
    exit_on_sigterm()
    from tooltune_trainer import launcher

    try:
        distributed = launcher.should_launch(os.environ)
    except launcher.InvalidShape as error:
        pod.setup_logging()
        logging.getLogger(__name__).error("%s", error)
        raise typer.Exit(pod.finish(pod.INVALID, error)) from None
    if distributed:
        options = ["--config", str(config)] if config else []
        raise typer.Exit(launcher.launch(launcher.worker_command(["train", *options])))
    _quiet_library_warnings()
    from tooltune_trainer import backends

    backends.prepare(backends.detect_device())
    from tooltune_trainer import recipe

    raise typer.Exit(recipe.main(config))


def exit_on_sigterm() -> None:
    """A container's PID 1 ignores SIGTERM unless it has a handler, and would wait out the whole grace
    period for its SIGKILL: exit at once instead. While training, a handler that checkpoints first
    (checkpoints.SaveOnTerminate) stands in for this one."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


# (logger, part of the message) of warnings about optional pieces tooltune never uses, logged when
# transformers and peft import them: torchao's CUDA/other-ABI kernels, the pytree registrations torchao
# makes on import, bitsandbytes' optional CPU 4-bit kernel. Nothing a user can or needs to act on.
IRRELEVANT_WARNINGS = (
    ("torchao", "Failed to load "),
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported by torch.compile"),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)


def _quiet_library_warnings() -> None:
    """Drop exactly the IRRELEVANT_WARNINGS; every other warning of those libraries still shows."""

    def keep(text: str) -> Callable[[logging.LogRecord], bool]:
        return lambda record: text not in record.getMessage()

    for name, text in IRRELEVANT_WARNINGS:
        logging.getLogger(name).addFilter(keep(text))


def _quiet_library_progress_bars() -> None:
    """One progress bar, ours: the libraries' bars (dataset maps, weight shards) would interleave with it."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _training_progress(console: Any) -> Any:
    """A rich progress bar over training steps, fed by a TrainerCallback; also prints each recipe stage."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[loss]}"), console=console, transient=False,
            )  # fmt: skip
            self.task = self.bar.add_task("training", total=None, loss="")
            self.loss = ""

        def __enter__(self) -> RichProgress:
            self.bar.__enter__()
            return self

        def __exit__(self, *exc: Any) -> None:
            self.bar.__exit__(*exc)

        def stage(self, name: str) -> None:
            self.bar.console.print(f"[bold]•[/bold] {name}", markup=True)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar.update(self.task, total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar.update(self.task, completed=state.global_step, loss=self.loss)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            logs = logs or {}
            parts = [f"{label} {logs[key]:.4f}" for key, label in (("loss", "loss"), ("eval_loss", "eval"))
                     if isinstance(logs.get(key), float)]  # fmt: skip
            if parts:
                self.loss = " ".join(parts)
                self.bar.update(self.task, loss=self.loss)

    return RichProgress()


SCORE_ROWS = (  # (key, label, meaning); {expecting} is filled in
    ("toolNameAccuracy", "tool-name accuracy", "share {expecting} answered with the right tools"),
    ("argumentsExactMatch", "arguments exact match", "those with every argument right too"),
    ("validJsonRate", "valid JSON rate", "share of attempted calls that parse as JSON"),
    ("noCallRate", "no call when one was expected", "share {expecting} answered in text"),
    ("falseCallRate", "call when none was expected", "share of turns expecting text that call a tool"),
)


def _print_run_summary(console: Any, result: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    from tooltune_trainer.recipe import EVALUATION_FILE, LOSS_CURVE_FILE
    from tooltune_trainer.storage import join

    report = result.evaluation
    table = Table(title="Run summary", show_header=False, title_justify="left")
    table.add_column("what", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("meaning")  # the one that wraps in a narrow terminal
    rows = [
        ("backend / device", f"{result.backend} / {result.device}", ""),
        ("tool-call format", report["toolCallFormat"], "how the model writes its calls"),
        ("examples (train / validation)", f"{result.train_examples} / {result.validation_examples}", ""),
        ("steps", str(result.steps), ""),
        ("time", f"{result.seconds:.0f} s", "training and evaluation, without installing"),
        ("final train loss", _fmt(result.train_loss), "last logged; loss covers the assistant's output only"),
        ("eval loss", _fmt(result.eval_loss), "the same loss on the validation split"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(_scores_table(report))
    # Paths on lines of their own, never cropped by the table's width.
    console.print(f"model: {result.output_uri}", soft_wrap=True)
    console.print(f"loss curve: {join(result.output_uri, LOSS_CURVE_FILE)}", soft_wrap=True)
    console.print(f"evaluation report: {join(result.output_uri, EVALUATION_FILE)}", soft_wrap=True)
    errors = ", ".join(f"{count} {kind}" for kind, count in report["errors"].items() if count)
    console.print(f"wrong answers by kind (details under wrongAnswers in the report): {errors or 'none'}")
    for line in _breakdown_lines(report["breakdown"]):
        console.print(line, soft_wrap=True)
    for reference in report.get("references") or []:
        if "error" in reference:
            console.print(f"reference {reference['name']} not scored: {reference['error']}", soft_wrap=True)
    gate = report["gate"]
    if result.promoted:
        console.print(f"promoted ({gate['message']}): {report['promotionUri']}", soft_wrap=True)
    else:
        console.print(f"NOT promoted: {gate['message']}", soft_wrap=True)
    smoke = Table(title="Smoke prompts", title_justify="left")
    smoke.add_column("prompt")
    smoke.add_column("answer")
    for test in report["smokeTests"]:
        smoke.add_row(Text(test["prompt"]), Text(test["answer"]))  # model output is text, never markup
    console.print(smoke)


def _scores_table(report: dict[str, Any]) -> Any:
    """The tuned model's scores beside the base model's and each reference's, on the same turns."""
    from rich.table import Table

    columns = [("tuned", report["metrics"])]
    if report.get("base"):
        columns.insert(0, ("base", report["base"]["metrics"]))
    references = [r for r in report.get("references") or [] if "metrics" in r]
    columns += [(r["name"], r["metrics"]) for r in references]
    expecting = f"of {report['metrics']['expectedCalls']} validation turns that expect a call"
    table = Table(title="Tool calls on the validation split", title_justify="left")
    table.add_column("score", no_wrap=True)
    for name, _ in columns:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("meaning")
    for key, label, meaning in SCORE_ROWS:
        table.add_row(
            label, *(_fmt(scores.get(key)) for _, scores in columns), meaning.format(expecting=expecting)
        )
    if references:
        same = ["", *([""] if report.get("base") else []), *(_fmt(r["agreement"]) for r in references)]
        table.add_row("agreement with tuned", *same, "share of turns with the same calls (or none) as tuned")
    seconds = [report.get("base", {}).get("seconds")] if report.get("base") else []
    seconds += [report.get("seconds"), *(r.get("seconds") for r in references)]
    table.add_row("evaluation time", *("—" if s is None else f"{s:.0f} s" for s in seconds), "")
    return table


def _breakdown_lines(breakdown: dict[str, Any], shown: int = 3) -> list[str]:
    """The tuned model's worst argument fields and most frequent tool confusions, one line each."""
    fields = sorted(
        ((name, c) for name, c in breakdown["perArgument"].items() if c["missing"] + c["wrong"] + c["extra"]),
        key=lambda item: -(item[1]["missing"] + item[1]["wrong"] + item[1]["extra"]),
    )[:shown]
    lines = []
    if fields:
        lines.append("argument fields most often wrong: " + "; ".join(
            f"{name} {c['wrong']} wrong, {c['missing']} missing of {c['expected']}"
            + (f", {c['extra']} extra" if c["extra"] else "")
            for name, c in fields
        ))  # fmt: skip
    confusions = breakdown["confusions"][:shown]
    if confusions:
        lines.append("tool confusions (asked for → called): " + "; ".join(
            f"{c['expected']} → {c['called']} ×{c['count']}" for c in confusions
        ))  # fmt: skip
    return lines


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"
