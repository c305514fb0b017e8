"""`tooltune run`'s summary: base, tuned and each reference side by side, the worst argument fields, the
confusions, a failed reference's reason and the gate's verdict."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console
from tooltune_trainer.cli import _print_run_summary

METRICS = {"examples": 53, "expectedCalls": 50, "toolNameAccuracy": 0.96, "argumentsExactMatch": 0.26,
           "validJsonRate": 1.0, "noCallRate": 0.02, "falseCallRate": 0.3333}  # fmt: skip
BASE = METRICS | {"toolNameAccuracy": 0.0, "argumentsExactMatch": 0.0, "validJsonRate": None,
                  "noCallRate": 1.0, "falseCallRate": 0.0}  # fmt: skip
BREAKDOWN = {
    "perTool": {},
    "perArgument": {
        "create_task.title": {"expected": 20, "right": 4, "missing": 0, "wrong": 16, "extra": 0},
        "create_task.due_date": {"expected": 12, "right": 10, "missing": 2, "wrong": 0, "extra": 0},
        "list_tasks.status": {"expected": 0, "right": 0, "missing": 0, "wrong": 0, "extra": 1},
        "complete_task.task_id": {"expected": 10, "right": 10, "missing": 0, "wrong": 0, "extra": 0},
    },
    "confusions": [{"expected": "list_tasks", "called": "complete_task", "count": 2}],
}


def summary(promoted: bool, gate: str) -> list[str]:
    report = {
        "toolCallFormat": "hermes", "metrics": METRICS, "breakdown": BREAKDOWN, "errors": {"wrong_tool": 2},
        "smokeTests": [], "seconds": 21.4,
        "base": {"metrics": BASE, "breakdown": BREAKDOWN, "errors": {}, "seconds": 48.0},
        "references": [
            {"name": "gpt", "model": "ft:x", "metrics": METRICS | {"toolNameAccuracy": 0.98},
             "agreement": 0.88, "seconds": 30.2},
            {"name": "gone", "model": "ft:y",
             "error": "https://api.openai.com/v1 (model ft:y) answered 404: …"},
        ],
        "gate": {"passed": promoted, "message": gate}, "promoted": promoted,
        "promotionUri": "runs/x/promotion.json" if promoted else None,
    }  # fmt: skip
    result = SimpleNamespace(
        evaluation=report, backend="transformers", device="cpu", train_examples=470, validation_examples=53,
        steps=900, seconds=413.0, train_loss=0.1, eval_loss=0.2, output_uri="runs/x/final", promoted=promoted,
    )  # fmt: skip
    out = io.StringIO()
    _print_run_summary(Console(file=out, width=220, highlight=False), result)
    return [
        " ".join(line.replace("│", " ").replace("┃", " ").split()) for line in out.getvalue().splitlines()
    ]


def test_scores_of_base_tuned_and_references_side_by_side():
    lines = summary(True, "evaluation gate passed: toolNameAccuracy 0.96 >= 0.9 (atLeast 0.9)")
    assert "score base tuned gpt meaning" in lines
    assert any(
        line.startswith("tool-name accuracy 0.0000 0.9600 0.9800 share of 50 validation turns")
        for line in lines
    )
    assert any(line.startswith("valid JSON rate — 1.0000 1.0000") for line in lines)
    assert any(
        line.startswith("agreement with tuned 0.8800 share of turns with the same calls") for line in lines
    )
    assert "evaluation time 48 s 21 s 30 s" in lines
    assert (
        "argument fields most often wrong: create_task.title 16 wrong, 0 missing of 20; "
        "create_task.due_date 0 wrong, 2 missing of 12; list_tasks.status 0 wrong, 0 missing of 0, 1 extra"
    ) in lines
    assert "tool confusions (asked for → called): list_tasks → complete_task ×2" in lines
    assert "reference gone not scored: https://api.openai.com/v1 (model ft:y) answered 404: …" in lines
    assert (
        "promoted (evaluation gate passed: toolNameAccuracy 0.96 >= 0.9 (atLeast 0.9)): runs/x/promotion.json"
    ) in lines


def test_a_missed_gate_says_not_promoted_with_the_numbers():
    lines = summary(False, "evaluation gate failed: argumentsExactMatch 0.26 < 0.5 (atLeast 0.5)")
    assert "NOT promoted: evaluation gate failed: argumentsExactMatch 0.26 < 0.5 (atLeast 0.5)" in lines
