"""`tooltune compare`: rows read from what finished runs left in final/, with known answers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from tooltune_api.models import PriceTable
from tooltune_trainer.cli import app
from tooltune_trainer.compare import CompareError, RunFiles, read_run, run_row, score_columns
from tooltune_trainer.storage import open_store
from typer.testing import CliRunner

BOX = re.compile(r"[│┃╭╮╰╯─━┏┓┗┛┡┩└┘┌┐├┤┬┴┼╇╈]+")

LINEAGE = {
    "backend": "unsloth",
    "baseModel": "tooltune/tiny-llama",
    "hyperparameters": {"epochs": 8},
    "metrics": {"toolNameAccuracy": 0.96, "argumentsExactMatch": 0.02, "steps": 240, "trainLoss": 0.3},
}
EVALUATION = {
    "metrics": {
        "examples": 53,  # a count, not a score
        "expectedCalls": 50,
        "toolNameAccuracy": 0.96,
        "argumentsExactMatch": 0.02,
        "validJsonRate": 1.0,
        "noCallRate": 0.0,
    }
}
TRAIN_LOG = [
    {"step": 10, "loss": 2.0, "num_tokens": 20000.0},
    {"step": 240, "loss": 0.3, "num_tokens": 485736.0},
    {"step": 240, "train_runtime": 55.2, "train_loss": 0.9},
]
SMOKE = {
    "jobId": "ftjob-1",
    "fineTunedModel": "ft:gpt-4o-mini-2024-07-18:acme:task-api:abc123",
    "trainedTokens": 48210,
}


def write_run(root: Path, **documents: Any) -> Path:
    final = root / "final"
    final.mkdir(parents=True)
    for name, document in documents.items():
        (final / f"{name}.json").write_text(json.dumps(document))
    return root


def test_a_gpu_run_row_has_steps_time_tokens_and_scores(tmp_path):
    run = write_run(tmp_path / "tiny", lineage=LINEAGE, evaluation=EVALUATION, train_log=TRAIN_LOG)
    row = run_row(read_run(str(run), open_store()), PriceTable())
    assert row == {
        "run": str(run),
        "backend": "unsloth",
        "baseModel": "tooltune/tiny-llama",
        "steps": 240,
        "seconds": 55.2,
        "tokens": 485736.0,
        "costUsd": None,  # a local run records no price
        "scores": {
            "toolNameAccuracy": 0.96,
            "argumentsExactMatch": 0.02,
            "validJsonRate": 1.0,
            "noCallRate": 0.0,
        },
    }
    assert read_run(str(run / "final"), open_store()).documents == read_run(str(run), open_store()).documents


def test_an_openai_run_row_prices_the_billed_tokens(tmp_path):
    run = write_run(tmp_path / "openai", smoke=SMOKE)
    row = run_row(read_run(str(run), open_store()), PriceTable())
    assert (row["backend"], row["baseModel"], row["tokens"]) == ("openai", "gpt-4o-mini-2024-07-18", 48210)
    assert row["costUsd"] == 0.1446  # 48,210 tokens at $3.00 per 1M
    assert row["scores"] == {}


@pytest.mark.parametrize(
    ("evaluation", "lineage", "gate"),
    [
        ({"gate": {"passed": True}}, {}, "passed"),
        ({"gate": {"passed": False}}, {}, "failed"),
        ({}, {"promoted": True}, "passed"),
    ],
)
def test_the_gate_result_comes_from_the_report_or_the_lineage(evaluation, lineage, gate):
    files = RunFiles("r", {"evaluation.json": evaluation, "lineage.json": lineage})
    assert run_row(files, PriceTable())["gate"] == gate
    assert "gate" not in run_row(RunFiles("r", {"lineage.json": {}}), PriceTable())


def test_score_columns_put_the_lab_s_four_first():
    rows = [
        {"scores": {"zetaRate": 1.0, "noCallRate": 0.0}},
        {"scores": {"toolNameAccuracy": 1.0, "alphaMatch": 0.5}},
    ]
    assert score_columns(rows) == ["toolNameAccuracy", "noCallRate", "alphaMatch", "zetaRate"]


def test_a_directory_without_a_finished_run_is_named(tmp_path):
    with pytest.raises(CompareError, match=rf"^{tmp_path}: no finished run here"):
        read_run(str(tmp_path), open_store())
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "lineage.json").write_text("{oops")
    with pytest.raises(CompareError, match=r"lineage\.json is not readable JSON"):
        read_run(str(tmp_path), open_store())


def test_the_command_prints_one_row_per_run_and_exits_1_for_an_unreadable_one(tmp_path):
    gpu = write_run(tmp_path / "tiny", lineage=LINEAGE, evaluation=EVALUATION, train_log=TRAIN_LOG)
    remote = write_run(tmp_path / "openai", smoke=SMOKE)
    result = CliRunner().invoke(app, ["compare", str(gpu), str(remote)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = [" ".join(BOX.sub(" ", line).split()) for line in result.output.splitlines()]
    assert f"{gpu} unsloth tooltune/tiny-llama 240 55 s 485,736 — 0.9600 0.0200 1.0000 0.0000 —" in lines
    assert f"{remote} openai gpt-4o-mini-2024-07-18 — — 48,210 $0.14 — — — — —" in lines

    result = CliRunner().invoke(app, ["compare", str(gpu), str(tmp_path / "nothing"), "--json"])
    assert result.exit_code == 1
    assert [row["run"] for row in json.loads(result.stdout)] == [str(gpu)]
    assert f"{tmp_path / 'nothing'}: no finished run here" in result.stderr
