"""`python -m tooltune_trainer` is the `tooltune` command (how the launcher starts each worker)."""

from tooltune_trainer.cli import app

app(prog_name="tooltune")
