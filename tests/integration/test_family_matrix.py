"""The CPU matrix: every model family, as a local model directory, through `tooltune run` end to end.

Each family is a tiny random model of its own architecture with a tokenizer carrying the family's real
template and special tokens (tests/fixtures/families.py). `tooltune run` validates, picks the tool-call
format, formats, trains a few LoRA steps, evaluates and saves; the test then reloads the saved adapter,
generates, and parses the answer with the family's format: it must reproduce the run's own evaluation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.fixtures.families import FAMILIES, build_family_model
from tests.fixtures.tiny import tool_calling_dataset, write_jsonl

pytestmark = pytest.mark.integration

PARSERS = {"hermes": "hermes", "llama3_json": "llama3_json", "tool_tags": "hermes"}


@pytest.fixture(scope="module")
def family_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    examples = tool_calling_dataset(24)
    return write_jsonl(tmp_path_factory.mktemp("family-data") / "tasks.jsonl", examples), examples


def _job(base_model: Path, train: Path) -> dict:
    return {
        "apiVersion": "tooltune.dev/v1alpha1",
        "kind": "ToolTuneJob",
        "metadata": {"name": "family"},
        "spec": {
            "baseModel": str(base_model),
            "dataset": {"train": str(train), "validationSplit": 0.25},
            "hyperparameters": {
                "epochs": 1,
                "batchSize": 6,
                "gradientAccumulationSteps": 1,
                "learningRate": 1e-3,
                "maxSeqLength": 2048,
                "loggingSteps": 1,
                "lora": {"r": 4, "alpha": 8},
            },
            "checkpoints": {"everySteps": 2, "keep": 1},
            "evaluation": {"everySteps": 2, "maxExamples": 3},
            "output": {"uri": "out/"},
            "resources": {"gpus": 0},
        },
    }


@pytest.mark.parametrize("name", FAMILIES)
def test_family_trains_evaluates_saves_and_serves_through_tooltune_run(tmp_path, family_data, name):
    from tooltune_trainer.cli import app

    family = FAMILIES[name]
    train, examples = family_data
    model_dir = build_family_model(family, examples, tmp_path / name)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(_job(model_dir, train)))
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(app, ["run", "job.yaml", "--workdir", str(tmp_path / "work")])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output + repr(result.exception)

    final = tmp_path / "out" / "final"
    report = json.loads((final / "evaluation.json").read_text())
    assert report["toolCallFormat"] == family.expected_format
    assert report["metrics"]["examples"] == 3
    lineage = json.loads((final / "lineage.json").read_text())
    assert lineage["toolCallFormat"] == family.expected_format and lineage["metrics"]["steps"] == 3
    card = (final / "README.md").read_text()
    assert f"--tool-call-parser {PARSERS[family.expected_format]}" in card and "chat_template.jinja" in card
    template = (final / "chat_template.jinja").read_text()
    assert ("tooltune tool_tags" in template) == (family.expected_format == "tool_tags")

    # Reload what was saved, generate the first evaluated answer again, parse it with the family's format.
    from peft import AutoPeftModelForCausalLM
    from tooltune_trainer.evaluate import generate_answers
    from tooltune_trainer.tool_formats import FORMATS
    from transformers import AutoTokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer.chat_template == template
    smoke = report["smokeTests"][0]
    system = [m for m in examples[0]["messages"] if m["role"] == "system"]
    answer = generate_answers(
        model, tokenizer, [([*system, {"role": "user", "content": smoke["prompt"]}], examples[0]["tools"])]
    )[0]
    assert answer == smoke["answer"]
    parsed = FORMATS[family.expected_format].parse(answer)
    assert [{"name": c.name, "arguments": c.arguments} for c in parsed.calls] == smoke["toolCalls"]


def _run_pod(tmp_path: Path, monkeypatch, base_model: Path, data: Path) -> tuple[int, str]:
    from tooltune_api import TERMINATION_LOG_ENV, WORKDIR_ENV
    from tooltune_trainer import recipe

    spec = _job(base_model, data)["spec"] | {"output": {"uri": str(tmp_path / "out")}}
    config = tmp_path / "contract.json"
    config.write_text(json.dumps({"job": {"namespace": "t", "name": "f"}, "spec": spec, "metricsPort": 0,
                                  "reportProgress": False}))  # fmt: skip
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(tmp_path / "termination-log"))
    monkeypatch.setenv(WORKDIR_ENV, str(tmp_path / "work"))
    code = recipe.main(config)
    return code, (tmp_path / "termination-log").read_text()


def test_a_template_that_refuses_an_example_fails_the_pod_with_exit_2_and_the_line(
    tmp_path, monkeypatch, family_data
):
    from tooltune_api import EXIT_INVALID

    from tests.fixtures.tiny import call_message

    _, examples = family_data
    model_dir = build_family_model(FAMILIES["llama3.1"], examples, tmp_path / "llama3.1")
    parallel = call_message("complete_task", {"task_id": "a"})
    parallel["tool_calls"].append(call_message("complete_task", {"task_id": "b"}, "call_2")["tool_calls"][0])
    refused = {"messages": [{"role": "user", "content": "Close a and b"}, parallel]}
    rows = [*examples[:2], refused, *examples[3:]]
    data = write_jsonl(tmp_path / "tasks.jsonl", [dict(row, tools=examples[0]["tools"]) for row in rows])
    code, message = _run_pod(tmp_path, monkeypatch, model_dir, data)
    assert code == EXIT_INVALID and "\n" not in message
    assert message.startswith("invalid: line 3: could not be templated: the chat template cannot render it")
    assert "only supports single tool-calls" in message
    assert not (tmp_path / "out").exists()  # stopped before any training


def test_a_broken_chat_template_fails_the_pod_with_exit_2_not_a_retry(tmp_path, monkeypatch, family_data):
    from tooltune_api import EXIT_INVALID

    train, examples = family_data
    model_dir = build_family_model(FAMILIES["phi3"], examples, tmp_path / "phi3")
    assert (model_dir / "chat_template.jinja").is_file()
    (model_dir / "chat_template.jinja").write_text("{{ messages[0].content + messages[0].missing.field }}")
    code, message = _run_pod(tmp_path, monkeypatch, model_dir, train)
    assert code == EXIT_INVALID, message
    assert message.startswith("invalid: line 1: could not be templated: the chat template cannot render it:")
