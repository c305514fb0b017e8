"""Base vs tuned vs references, and the promotion gate, through the trainer's entrypoints on the tiny model:
`tooltune train` (recipe.main, as the pod runs it) with a gate it cannot pass, and `tooltune run` with one it
passes; references are asked over HTTP from the local server that speaks OpenAI's chat completions."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from tooltune_api import EXIT_INVALID, TERMINATION_LOG_ENV, WORKDIR_ENV
from tooltune_api.models import ToolTuneJobStatus
from typer.testing import CliRunner

from tests.fakes.openai_api import TEST_API_KEY
from tests.fixtures.tiny import tool_calling_dataset, write_jsonl

pytestmark = pytest.mark.integration

FT_MODEL = "ft:gpt-4o-mini-2024-07-18:acme:task-api:abc123"
SCORES = {"examples", "expectedCalls", "toolNameAccuracy", "argumentsExactMatch", "validJsonRate",
          "noCallRate", "falseCallRate"}  # fmt: skip


def spec(train: str, output: str, evaluation: dict[str, Any]) -> dict[str, Any]:
    return {
        "baseModel": "tooltune/tiny-llama",
        "dataset": {"train": train, "validationSplit": 0.2},
        "hyperparameters": {"epochs": 1, "batchSize": 8, "gradientAccumulationSteps": 1, "learningRate": 3e-3,
                            "maxSeqLength": 256, "loggingSteps": 1, "lora": {"r": 8, "alpha": 16}},
        "checkpoints": {"everySteps": 4, "keep": 1},
        "evaluation": {"everySteps": 4, "maxExamples": 4, "smokePrompts": [], **evaluation},
        "output": {"uri": output},
        "resources": {"gpus": 0},
    }  # fmt: skip


class RecordedStatus:
    """Stands in for the Kubernetes status patch: every status the trainer sends, merged."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}

    def reporter(self, contract: Any, patch: Any = None, clock: Any = None) -> Any:
        from tooltune_trainer import telemetry

        def record(body: dict[str, Any]) -> None:
            self.status = telemetry.deep_merge(self.status, body["status"])

        return telemetry.StatusReporter(contract, patch=record)


@pytest.fixture
def recorded(monkeypatch) -> RecordedStatus:
    from tooltune_trainer import recipe

    recorded = RecordedStatus()
    monkeypatch.setattr(recipe, "StatusReporter", recorded.reporter)
    return recorded


def test_a_model_that_misses_its_gate_is_kept_and_ends_gate_failed_with_the_numbers(
    tmp_path, monkeypatch, openai_server, recorded
):
    from tooltune_trainer import recipe

    openai_server.chat_models.add(FT_MODEL)
    data = write_jsonl(tmp_path / "tasks.jsonl", tool_calling_dataset(40))
    output = tmp_path / "out"
    (output).mkdir()
    (output / "promotion.json").write_text('{"promoted": true}')  # an earlier run's marker
    references = [
        {"name": "gpt", "model": FT_MODEL, "baseUrl": openai_server.base_url,
         "apiKeySecret": {"name": "openai"}},
        {"name": "gone", "model": "ft:gpt-4o-mini-2024-07-18:acme::gone", "baseUrl": openai_server.base_url,
         "apiKeySecret": {"name": "openai"}},
    ]  # fmt: skip
    gate = [{"metric": "toolNameAccuracy", "atLeast": 1.0}, {"metric": "noCallRate", "noWorseThan": "gpt"}]
    contract = {"job": {"namespace": "test", "name": "tiny"}, "metricsPort": 0,
                "spec": spec(str(data), str(output), {"references": references, "gate": gate})}  # fmt: skip
    (tmp_path / "contract.json").write_text(json.dumps(contract))
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(tmp_path / "termination-log"))
    monkeypatch.setenv(WORKDIR_ENV, str(tmp_path / "work"))
    monkeypatch.setenv("TOOLTUNE_REFERENCE_0_API_KEY", TEST_API_KEY)
    monkeypatch.setenv("TOOLTUNE_REFERENCE_1_API_KEY", TEST_API_KEY)

    assert recipe.main(tmp_path / "contract.json") == EXIT_INVALID  # the Job fails at once, not retried
    message = (tmp_path / "termination-log").read_text()
    report = json.loads((output / "final" / "evaluation.json").read_text())
    tuned, base = report["metrics"], report["base"]["metrics"]
    assert message.startswith(
        f"gate_failed: evaluation gate failed: toolNameAccuracy {tuned['toolNameAccuracy']:g} < 1 (atLeast 1)"
    ), message
    assert message.endswith(f"; the model is kept at {output / 'final'}")
    assert (output / "final" / "adapter_model.safetensors").is_file()  # kept
    assert not (output / "promotion.json").exists()  # and the old marker no longer vouches for this output
    lineage = json.loads((output / "final" / "lineage.json").read_text())
    assert lineage["promoted"] is False and lineage["gate"] == report["gate"]["message"]

    # base and tuned, on the same 4 turns, scored the same way
    assert set(tuned) == set(base) == SCORES and tuned["examples"] == base["examples"] == 4
    assert set(report["base"]["breakdown"]) == {"perTool", "perArgument", "confusions"}
    gpt, gone = report["references"]
    assert set(gpt["metrics"]) == SCORES and 0 <= gpt["agreement"] <= 1 and gpt["breakdown"]["perTool"]
    assert len(openai_server.chat_requests) >= 4  # every turn asked of gpt, then gone's first 404
    assert gone == {"name": "gone", "model": "ft:gpt-4o-mini-2024-07-18:acme::gone",
                    "baseUrl": openai_server.base_url, "error": gone["error"]}  # fmt: skip
    assert "answered 404: The model `ft:gpt-4o-mini-2024-07-18:acme::gone` does not exist" in gone["error"]

    status = ToolTuneJobStatus.model_validate(recorded.status).evaluation
    assert status is not None and status.promoted is False and status.gate and not status.gate.passed
    assert status.tool_name_accuracy == tuned["toolNameAccuracy"] and status.base
    assert status.base.no_call_rate == base["noCallRate"]
    assert [(r.name, r.error is None) for r in status.references or []] == [("gpt", True), ("gone", False)]
    assert status.references and status.references[0].agreement == gpt["agreement"]


def test_a_model_that_passes_its_gate_is_promoted_and_the_summary_shows_base_beside_tuned(tmp_path, recorded):
    from tooltune_trainer.cli import app

    write_jsonl(tmp_path / "tasks.jsonl", tool_calling_dataset(40))
    gate = [{"metric": "noCallRate", "noWorseThan": "base", "tolerance": 1}]  # reachable by any model
    job = {"apiVersion": "tooltune.dev/v1alpha1", "kind": "ToolTuneJob", "metadata": {"name": "tiny"},
           "spec": spec("tasks.jsonl", "runs/tiny/", {"gate": gate})}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(app, ["run", "job.yaml", "--workdir", "work"], env={"COLUMNS": "200"})
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output + repr(result.exception)
    output = tmp_path / "runs" / "tiny"
    marker = json.loads((output / "promotion.json").read_text())
    assert marker["promoted"] is True and marker["model"] == str(output / "final")
    assert marker["gate"].startswith("evaluation gate passed: noCallRate ")
    assert json.loads((output / "final" / "lineage.json").read_text())["promoted"] is True
    assert json.loads((output / "final" / "evaluation.json").read_text())["promoted"] is True

    lines = [
        " ".join(line.replace("┃", " ").replace("│", " ").split()) for line in result.output.splitlines()
    ]
    assert "score base tuned meaning" in lines
    assert any(line.startswith("tool-name accuracy ") for line in lines)
    assert f"promoted ({marker['gate']}): {output / 'promotion.json'}" in " ".join(lines)
    status = ToolTuneJobStatus.model_validate(recorded.status).evaluation
    assert status is not None and status.promoted and status.gate and status.gate.passed and status.base


def test_the_base_model_is_the_lora_model_with_its_adapters_disabled(tiny_model_dir):
    """Base evaluation runs on the model being trained with its adapters off: the same logits as the base
    model loaded on its own, even after training has moved the adapters."""
    import torch
    from tooltune_api.models import ToolTuneJobSpec
    from tooltune_trainer import backends
    from tooltune_trainer.recipe import base_weights
    from transformers import AutoModelForCausalLM

    spec = ToolTuneJobSpec.model_validate(
        {"baseModel": str(tiny_model_dir), "dataset": {"train": "x"}, "output": {"uri": "y"}}
    )
    model, _ = backends.load_model(spec, "cpu")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    model.eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # as training leaves them: no longer zero
                parameter.copy_(torch.randn_like(parameter))
        ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
        with base_weights(model):
            disabled = model(input_ids=ids).logits
        tuned = model(input_ids=ids).logits
        expected = base(input_ids=ids).logits
    assert torch.equal(disabled, expected)
    assert not torch.allclose(tuned, expected)  # the adapters matter when on: the comparison can fail
