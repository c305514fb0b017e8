"""The API models: the lab's defaults, the bounds, readable errors, and the CRD generated from them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from tooltune_api import crd
from tooltune_api.models import InvalidSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {
    "baseModel": "tooltune/tiny-llama",
    "dataset": {"train": "data.jsonl"},
    "output": {"uri": "runs/x"},
}


def test_defaults_are_the_labs_recommendations() -> None:
    spec = parse_spec(MINIMAL)
    h = spec.hyperparameters
    assert (h.epochs, h.batch_size, h.gradient_accumulation_steps, h.learning_rate, h.warmup_ratio) == (
        3,
        4,
        2,
        2e-5,
        0.1,
    )
    assert (h.lora.r, h.lora.alpha, h.lora.dropout) == (16, 16, 0.0)
    assert (spec.checkpoints.every_steps, spec.evaluation.every_steps, h.logging_steps) == (100, 50, 10)
    assert spec.dataset.effective_validation_split == 0.1
    assert spec.resources.gpu_resource_name == "nvidia.com/gpu"


REFUSED = [
    ("baseModel missing", lambda s: s.pop("baseModel"), "spec.baseModel"),
    (
        "openai without apiKeySecret",
        lambda s: s.update(backend="openai", openai={"model": "gpt-4o-mini"}),
        "spec.openai.apiKeySecret",
    ),
    ("openai backend without settings", lambda s: s.update(backend="openai"), "spec.openai"),
    (
        "learningRate 0",
        lambda s: s.update(hyperparameters={"learningRate": 0}),
        "spec.hyperparameters.learningRate",
    ),
    ("lora.r 0", lambda s: s.update(hyperparameters={"lora": {"r": 0}}), "spec.hyperparameters.lora.r"),
    ("gpus -1", lambda s: s.update(resources={"gpus": -1}), "spec.resources.gpus"),
    ("unknown field", lambda s: s.update(learningrate=1e-4), "spec.learningrate"),
    (
        "validationSplit 1.5",
        lambda s: s["dataset"].update(validationSplit=1.5),
        "spec.dataset.validationSplit",
    ),
    (
        "both validation sources",
        lambda s: s["dataset"].update(validation="v.jsonl", validationSplit=0.2),
        "spec.dataset.validationSplit",
    ),
    ("bad backend", lambda s: s.update(backend="axolotl"), "spec.backend"),
]


@pytest.mark.parametrize(("case", "mutate", "field"), REFUSED, ids=[r[0] for r in REFUSED])
def test_invalid_specs_are_refused_naming_the_field(case: str, mutate: Any, field: str) -> None:
    spec = copy.deepcopy(MINIMAL)
    mutate(spec)
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(spec)
    assert any(problem.startswith(f"{field}:") for problem in caught.value.problems), caught.value.problems


def test_committed_crd_is_generated_from_the_models() -> None:
    committed = (ROOT / "manifests/crds/tooltunejobs.tooltune.dev.yaml").read_text()
    assert committed == crd.render(), "run: make crd"


def test_crd_is_structural_with_status_subresource_and_columns() -> None:
    version = crd.crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Reason", "Backend", "Model", "Workers", "Step", "Loss", "Age"]

    def walk(node: dict[str, Any], where: str) -> None:
        assert "$ref" not in node and "anyOf" not in node, where
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{where} has no type"
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{where}.{name}")
        if "items" in node:
            walk(node["items"], f"{where}[]")

    walk(version["schema"]["openAPIV3Schema"]["properties"]["spec"], "spec")
    walk(version["schema"]["openAPIV3Schema"]["properties"]["status"], "status")
