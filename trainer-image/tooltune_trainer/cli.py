"""The `tooltune` command: run a ToolTuneJob locally, validate and split datasets, and the pod entrypoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
