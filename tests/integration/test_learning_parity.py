"""tooltune's trainer learns as fast as a plain training loop on the same rows.

Both start from the same tiny model and train on the same rows of the Task API example with the same
learning rate, schedule, batch size and number of steps; the plain loop draws shuffled batches by hand.
The validation loss after training must match. With length-grouped batches (the default until this test
existed) a batch held examples of one length, which in this data means mostly one kind of request, and
the trainer ended 13% above the plain loop here (validation loss 2.60 vs 2.30 after 150 steps; at the
issue's 5000 examples and 1550 steps, 0.38 vs 0.22).
"""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path
from typing import Any

import pytest
from tooltune_api.models import ToolTuneJobSpec
from tooltune_trainer import backends, recipe
from tooltune_trainer.data import split_examples
from tooltune_trainer.formatting import IGNORE_INDEX, training_rows
from tooltune_trainer.tiny import TinyConfig, ensure_tiny_model
from transformers import PrinterCallback

pytestmark = pytest.mark.integration

GENERATOR = Path(__file__).resolve().parents[2] / "examples" / "task-api" / "generate.py"
SHAPE = TinyConfig(hidden_size=32, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2)
TOLERANCE = 1.05  # measured: 1.008 with random batches, 1.129 with length-grouped ones


def _spec() -> ToolTuneJobSpec:
    return ToolTuneJobSpec.model_validate(
        {
            "baseModel": "tooltune/tiny-llama",
            "dataset": {"train": "unused.jsonl"},
            "hyperparameters": {
                "fullFineTune": True,
                "epochs": 1,
                "batchSize": 8,
                "gradientAccumulationSteps": 1,
                "learningRate": 3e-3,
                "scheduler": "cosine",
                "warmupRatio": 0.05,
                "maxSeqLength": 512,
            },
            "evaluation": {"everySteps": 10_000},
            "checkpoints": {"everySteps": 10_000, "keep": 1},
            "output": {"uri": "unused/"},
            "resources": {"gpus": 0},
        }
    )


def _task_api_examples(count: int) -> list[dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("task_api_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator.generate(seed=1, count=count)


def _padded(rows: list[dict[str, list[int]]], pad: int) -> dict[str, Any]:
    """Right-padded tensors, as the trainer's collator builds them."""
    import torch

    width = max(len(row["input_ids"]) for row in rows)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for row in rows:
        gap = width - len(row["input_ids"])
        batch["input_ids"].append(row["input_ids"] + [pad] * gap)
        batch["attention_mask"].append([1] * len(row["input_ids"]) + [0] * gap)
        batch["labels"].append(row["labels"] + [IGNORE_INDEX] * gap)
    return {key: torch.tensor(value) for key, value in batch.items()}


def _plain_loop(model: Any, pad: int, rows: list[dict[str, list[int]]], spec: ToolTuneJobSpec) -> None:
    """AdamW, warmup + cosine, gradient clipping at 1.0 (the Trainer's defaults), shuffled batches."""
    import torch
    from transformers import get_scheduler

    hp = spec.hyperparameters
    steps = hp.epochs * math.ceil(len(rows) / hp.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
    schedule = get_scheduler(
        hp.scheduler, optimizer, num_warmup_steps=math.ceil(hp.warmup_ratio * steps), num_training_steps=steps
    )
    rng = random.Random(0)
    model.train()
    for _ in range(hp.epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        for start in range(0, len(order), hp.batch_size):
            batch = _padded([rows[i] for i in order[start : start + hp.batch_size]], pad)
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()


def _validation_loss(model: Any, pad: int, rows: list[dict[str, list[int]]]) -> float:
    """Mean loss per label token over all rows."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            batch = _padded(rows[start : start + 16], pad)
            count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += model(**batch).loss.item() * count
            tokens += count
    return total / tokens


def test_trainer_reaches_the_plain_loops_validation_loss_on_the_same_rows(tmp_path):
    import torch

    examples = _task_api_examples(1200)
    train, validation = split_examples(examples, 0.1, seed=42)
    model_dir = ensure_tiny_model(examples, tmp_path, SHAPE)
    spec = _spec()
    losses = {}
    for path in ("tooltune", "plain loop"):
        torch.manual_seed(0)
        model, tokenizer = backends.load_model(spec, "cpu", str(model_dir))
        rows = training_rows(tokenizer, train, spec.hyperparameters.max_seq_length)
        if path == "tooltune":
            trainer = recipe._trainer(spec, model, tokenizer, rows, [], tmp_path / "out", "cpu", [])
            trainer.remove_callback(PrinterCallback)
            trainer.train()
        else:
            _plain_loop(model, tokenizer.pad_token_id, rows, spec)
        validation_rows = training_rows(tokenizer, validation, spec.hyperparameters.max_seq_length)
        losses[path] = _validation_loss(model, tokenizer.pad_token_id, validation_rows)
    assert losses["tooltune"] < TOLERANCE * losses["plain loop"], losses


def _kind(tokenizer: Any, labels: list[int]) -> str:
    """What a row trains the model to answer: the first tool it calls, or text."""
    answer = tokenizer.decode([token for token in labels if token != IGNORE_INDEX])
    return next((name for name in TOOL_NAMES if name in answer), "text")


TOOL_NAMES = ("create_task", "list_tasks", "complete_task")


def test_each_batch_is_a_random_sample_of_the_kinds_of_request(tmp_path):
    examples = _task_api_examples(1200)
    model_dir = ensure_tiny_model(examples, tmp_path, SHAPE)
    spec = _spec()
    model, tokenizer = backends.load_model(spec, "cpu", str(model_dir))
    rows = training_rows(tokenizer, examples, spec.hyperparameters.max_seq_length)
    trainer = recipe._trainer(spec, model, tokenizer, rows, [], tmp_path / "out", "cpu", [])
    loader = trainer.get_train_dataloader()
    batches = [[_kind(tokenizer, row.tolist()) for row in batch["labels"]] for batch in loader]
    one_kind = sum(len(set(kinds)) == 1 for kinds in batches)
    # Random batches of 8 from four kinds are almost never of one kind (p < 0.001 each); length-grouped
    # ones were in 16 of 150 batches.
    assert one_kind <= 2, f"{one_kind} of {len(batches)} batches hold one kind of request"
