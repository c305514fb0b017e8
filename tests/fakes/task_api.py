"""A small Task API tool-calling dataset in OpenAI fine-tuning JSONL (one call per example), and contracts.

The tools and system prompt are the ones the tiny-model fixtures use (tests/fixtures/tiny.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.fixtures.tiny import SYSTEM, TOOLS, call_message

_TITLES = ["buy groceries", "review the budget", "call the dentist", "write the report", "plan the offsite"]


def _example(user: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    return {"messages": [*messages, call_message(tool, arguments)], "tools": TOOLS}


def task_api_examples(count: int = 30) -> list[dict[str, Any]]:
    examples = []
    for i in range(count):
        title = _TITLES[i % len(_TITLES)]
        kind = i % 3
        if kind == 0:
            examples.append(
                _example(f"Create a task to {title}", "create_task", {"title": title.capitalize()})
            )
        elif kind == 1:
            examples.append(
                _example(
                    f"What is due before day {i}?", "list_tasks", {"due_before": f"2026-12-{i % 28 + 1:02d}"}
                )
            )
        else:
            examples.append(_example(f"Mark task {i} as complete", "complete_task", {"task_id": f"task_{i}"}))
    return examples


def write_dataset(
    path: Path, examples: list[dict[str, Any]] | None = None, extra_lines: Sequence[str] = ()
) -> Path:
    """Write examples (default: 30 valid ones) as JSONL, followed by any raw extra lines."""
    lines = [json.dumps(example) for example in (examples if examples is not None else task_api_examples())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


def openai_contract(
    tmp_path: Path, base_url: str, *, train: Path | None = None, **openai: Any
) -> dict[str, Any]:
    """A contract (JSON-ready) for the OpenAI backend with data and output under tmp_path."""
    train = train or write_dataset(tmp_path / "data" / "train.jsonl")
    return {
        "job": {"namespace": "tuning", "name": "task-api-tools", "uid": "5f1c-uid", "attempt": 1},
        "spec": {
            "backend": "openai",
            "baseModel": "gpt-4o-mini-2024-07-18",
            "dataset": {"train": str(train)},
            "output": {"uri": str(tmp_path / "models" / "task-api-tools")},
            "openai": {
                "model": "gpt-4o-mini-2024-07-18",
                "apiKeySecret": {"name": "openai-api-key", "key": "OPENAI_API_KEY"},
                "baseUrl": base_url,
                "suffix": "task-api-tools",
                "pollSeconds": 1,
                **openai,
            },
        },
        "metricsPort": 0,
        "progressIntervalSeconds": 0,
    }
