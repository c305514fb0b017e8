"""The `tooltune` command: run a ToolTuneJob locally, validate and split datasets, and the pod entrypoints."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

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
    from tooltune_trainer.submitter import main

    raise typer.Exit(main(config))


# ---------------------------------------------------------------- datasets: validate and split

DEFAULT_VALIDATION_SPLIT = 0.1  # the lab's 90/10 split, as dataset.validationSplit defaults to
DEFAULT_SEED = 42  # as dataset.seed defaults to


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
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a dataset: every problem as FILE:LINE: reason, then a summary. Exit 1 when there are problems."""
    if max_seq_length is not None and base_model is None:
        raise typer.BadParameter("needs --base-model to count tokens, e.g. --base-model tooltune/tiny-llama",
                                 param_hint="--max-seq-length")  # fmt: skip
    report = _validate_file(file, max_seq_length, base_model)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        _print_findings(file, report)
        if report.summary.lines:
            _print_summary(report)
        _print_verdict(report)
    raise typer.Exit(0 if report.ok else 1)


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


def _validate_file(file: Path, max_seq_length: int | None, base_model: str | None) -> ValidationReport:
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

        tokenizer = load_tokenizer(base_model, report.examples)
    except Exception as error:  # any failure to load a user-named model is reported, not raised
        report.problems.append(
            Problem(None, f"--base-model {base_model}: cannot load its tokenizer: {error}")
        )
        return report
    return validate_examples(
        lines,
        max_seq_length=max_seq_length,
        count_tokens=lambda example: templated_length(tokenizer, example),
    )


def _print_findings(file: Path, report: ValidationReport, warnings: bool = True) -> None:
    for problem in report.problems:
        typer.echo(
            f"{file}:{problem.line}: {problem.reason}" if problem.line else f"{file}: {problem.reason}"
        )
    for warning in report.warnings if warnings else []:
        where = f"{file}:{warning.line}" if warning.line else f"{file}"
        typer.echo(f"{where}: warning: {warning.reason}")


def _print_summary(report: ValidationReport) -> None:
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
