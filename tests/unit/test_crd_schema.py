"""What admission would accept or refuse: ToolTuneJobs checked against the CRD schema and its CEL rules.

The emulator does not enforce the schema, so these checks stand in for the API server: jsonschema with the
OpenAPI v3.0 differences translated, unknown fields refused (kubectl's strict field validation), and each
CEL rule of the CRD evaluated by its explicit check in tests/harness/crd_schema.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from tooltune_api.models import ToolTuneJobStatus

from tests.harness import crd_schema, tables

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"

MINIMAL = {
    "apiVersion": "tooltune.dev/v1alpha1",
    "kind": "ToolTuneJob",
    "metadata": {"name": "minimal"},
    "spec": {
        "baseModel": "tooltune/tiny-llama",
        "dataset": {"train": "s3://datasets/train.jsonl"},
        "output": {"uri": "s3://models/minimal/"},
    },
}
OPENAI = {
    **MINIMAL,
    "spec": {
        **MINIMAL["spec"],
        "backend": "openai",
        "baseModel": "gpt-4o-mini-2024-07-18",
        "openai": {"model": "gpt-4o-mini-2024-07-18", "apiKeySecret": {"name": "openai"}},
    },
}
FULL = {
    **MINIMAL,
    "spec": {
        **MINIMAL["spec"],
        "dataset": {"train": "configmap://data/train.jsonl", "validationSplit": 0.2, "seed": 7},
        "hyperparameters": {
            "epochs": 3,
            "learningRate": 2.0e-5,
            "warmupRatio": 0.1,
            "lora": {"r": 16, "alpha": 16, "dropout": 0, "targetModules": ["q_proj"]},
            "loadIn4bit": True,
        },
        "checkpoints": {"everySteps": 100, "keep": 3},
        "resources": {"gpus": 0, "cpu": "500m", "memory": "2Gi", "nodeSelector": {"pool": "gpu"}},
        "suspend": False,
        "backoffLimit": 0,
    },
}


def example_jobs() -> list[Any]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc and doc.get("kind") == "ToolTuneJob":
                found.append(pytest.param(doc, id=f"{path.name}#{index}"))
    return found


REFERENCE = {
    "name": "gpt",
    "model": "ft:gpt-4o-mini-2024-07-18:acme::abc",
    "baseUrl": "https://api.openai.com/v1",
}


def with_spec(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `base` with spec.<path> set to `value` (``...`` deletes it)."""
    obj = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = obj["spec"]
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return obj


@pytest.mark.parametrize("job", [MINIMAL, OPENAI, FULL], ids=["minimal", "openai", "full"])
def test_good_jobs_are_admitted(job):
    assert crd_schema.validate(job) == []


@pytest.mark.parametrize("job", example_jobs())
def test_examples_are_admitted(job):
    assert crd_schema.validate(job) == []


def test_there_are_examples_to_check():
    assert example_jobs(), f"no ToolTuneJob in {EXAMPLES}"


@pytest.mark.parametrize(
    ("job", "field", "words"),
    [
        (with_spec(MINIMAL, "baseModel", ...), "spec.baseModel", "Required value"),
        (with_spec(OPENAI, "openai.apiKeySecret", ...), "spec.openai.apiKeySecret", "Required value"),
        (with_spec(MINIMAL, "hyperparameters.learningRate", 0), "spec.hyperparameters.learningRate", "0"),
        (with_spec(MINIMAL, "hyperparameters.lora.r", 0), "spec.hyperparameters.lora.r", "minimum of 1"),
        (with_spec(MINIMAL, "resources.gpus", -1), "spec.resources.gpus", "minimum of 0"),
        (
            with_spec(MINIMAL, "hyperparameters.learningrate", 1e-4),
            "spec.hyperparameters.learningrate",
            'unknown field "learningrate"',
        ),
        (with_spec(MINIMAL, "dataset.validationSplit", 1.5), "spec.dataset.validationSplit", "1.5"),
        (with_spec(MINIMAL, "hyperparameters.lora.dropout", 1), "spec.hyperparameters.lora.dropout", "1"),
        (with_spec(MINIMAL, "backend", "vllm"), "spec.backend", "'vllm' is not one of"),
        (with_spec(MINIMAL, "resources.memory", "2 GB"), "spec.resources.memory", "does not match"),
    ],
    ids=[
        "no-base-model",
        "openai-no-key",
        "lr-0",
        "lora-r-0",
        "gpus-negative",
        "unknown-field",
        "split-1.5",
        "dropout-1",
        "bad-backend",
        "bad-quantity",
    ],
)
def test_bad_jobs_are_refused_naming_the_field(job, field, words):
    problems = crd_schema.validate(job)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: ") and words in problems[0], problems


@pytest.mark.parametrize(
    ("job", "field", "words"),
    [
        (
            with_spec(OPENAI, "evaluation.gate", [{"metric": "toolNameAccuracy", "atLeast": 0.5}]),
            "spec.evaluation",
            "unsloth trainer only",
        ),
        (
            with_spec(MINIMAL, "evaluation.references", [REFERENCE, REFERENCE]),
            "spec.evaluation.references",
            "unique",
        ),
        (
            with_spec(MINIMAL, "evaluation.gate", [{"metric": "noCallRate", "noWorseThan": "gpt"}]),
            "spec.evaluation.gate",
            "name base or one of",
        ),
        (
            with_spec(MINIMAL, "evaluation.gate", [{"metric": "noCallRate"}]),
            "spec.evaluation.gate[0]",
            "needs atLeast, atMost or noWorseThan",
        ),
        (with_spec(MINIMAL, "backend", "openai"), "spec.openai", "required when backend is openai"),
        (with_spec(MINIMAL, "openai", OPENAI["spec"]["openai"]), "spec.openai", "only allowed then"),
        (
            with_spec(
                with_spec(MINIMAL, "dataset.validation", "s3://d/v.jsonl"), "dataset.validationSplit", 0.1
            ),
            "spec.dataset",
            "not both",
        ),
        (with_spec(OPENAI, "resources.nodes", 2), "spec.resources.nodes", "needs backend: unsloth"),
        (with_spec(MINIMAL, "output.uri", "ftp://models/out/"), "spec.output.uri", "unsupported scheme"),
        (with_spec(MINIMAL, "dataset.train", "gs://d/t.jsonl"), "spec.dataset.train", "unsupported scheme"),
        (
            with_spec(MINIMAL, "dataset.validation", "ftp://d/v.jsonl"),
            "spec.dataset.validation",
            "unsupported scheme",
        ),
    ],
    ids=[
        "openai-backend-with-gate",
        "duplicate-reference-names",
        "gate-names-unknown-model",
        "gate-rule-without-condition",
        "openai-backend-without-settings",
        "openai-settings-on-unsloth",
        "two-validation-sources",
        "nodes-on-openai",
        "output-scheme",
        "train-scheme",
        "validation-scheme",
    ],
)
def test_cel_rules_refuse_inconsistent_specs(job, field, words):
    problems = crd_schema.validate(job)
    assert len(problems) == 1 and problems[0].startswith(f"{field}: ") and words in problems[0], problems


def test_exclusive_bounds_keep_openapi_semantics():
    """OpenAPI v3.0's boolean exclusiveMinimum: 0 is refused, anything above it is fine."""
    assert crd_schema.validate(with_spec(MINIMAL, "hyperparameters.learningRate", 1e-9)) == []
    assert crd_schema.validate(with_spec(MINIMAL, "dataset.validationSplit", 0.999)) == []
    assert crd_schema.validate(with_spec(MINIMAL, "dataset.validationSplit", 0))


def test_every_cel_rule_of_the_crd_has_a_check():
    rules = []

    def collect(node: dict[str, Any]) -> None:
        rules.extend(rule["rule"] for rule in node.get("x-kubernetes-validations", []))
        for sub in node.get("properties", {}).values():
            collect(sub)
        if isinstance(node.get("items"), dict):
            collect(node["items"])

    collect(crd_schema.served_schema(crd_schema.load_crd()))
    assert rules and set(rules) <= set(crd_schema.CEL_RULES), set(rules) - set(crd_schema.CEL_RULES)


def test_defaults_and_pruning_as_the_api_server_stores_it():
    schema = crd_schema.served_schema(crd_schema.load_crd())
    stored = crd_schema.default_and_prune(
        with_spec(with_spec(MINIMAL, "hyperparameters.epochs", 1), "typo", True), schema
    )
    assert "typo" not in stored["spec"]
    assert stored["spec"]["backend"] == "unsloth" and stored["spec"]["hyperparameters"]["epochs"] == 1
    assert stored["spec"]["hyperparameters"]["learningRate"] == 2.0e-5
    assert "checkpoints" not in stored["spec"]  # defaults apply inside objects that are present
    assert stored["metadata"] == MINIMAL["metadata"]


def test_printer_columns_read_a_status_written_by_the_status_model():
    """Each column's JSONPath finds its value in a status dumped by the API models (camelCase on the wire)."""
    status = ToolTuneJobStatus.model_validate(
        {
            "phase": "Running",
            "reason": "Training",
            "message": "training",
            "workers": "2x4",
            "progress": {
                "step": 12,
                "trainLoss": 0.53,
                "percent": 40.0,
                "etaSeconds": 90,
                "evalLoss": 0.61,
                "learningRate": 2e-5,
            },
            "diagnosis": {"pattern": "Converging", "advice": "continue"},
        }
    ).dump()
    job = {
        **crd_schema.default_and_prune(MINIMAL, crd_schema.served_schema(crd_schema.load_crd())),
        "status": status,
    }
    job["metadata"] = {**job["metadata"], "creationTimestamp": "2026-01-01T00:00:00Z"}
    columns = tables.crd_printer_columns()["tooltune.dev/v1alpha1/tooltunejobs"]
    values = {column["name"]: tables.evaluate_jsonpath(job, column["jsonPath"]) for column in columns}
    assert values == {
        "Phase": "Running",
        "Reason": "Training",
        "Message": "training",
        "Backend": "unsloth",
        "Model": "tooltune/tiny-llama",
        "Workers": "2x4",
        "Step": 12,
        "Loss": 0.53,
        "Age": "2026-01-01T00:00:00Z",
        "Percent": 40.0,
        "ETA(s)": 90,
        "Eval-Loss": 0.61,
        "LR": 2e-5,
        "Diagnosis": "Converging",
    }
