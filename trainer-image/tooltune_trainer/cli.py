"""The `tooltune` command: run a ToolTuneJob locally, validate and split datasets, and the pod entrypoints."""

from __future__ import annotations

import typer

app = typer.Typer(help="Fine-tune models for tool calling.", no_args_is_help=True, add_completion=False)
