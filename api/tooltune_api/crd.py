"""Generate the ToolTuneJob CustomResourceDefinition from the pydantic models.

    python -m tooltune_api.crd > manifests/crds/tooltunejobs.tooltune.dev.yaml

A test regenerates it and compares, so the CRD in git and the models cannot drift. pydantic's
JSON Schema is turned into a Kubernetes structural schema: references inlined, optional fields
unwrapped, exclusive bounds in the OpenAPI v3.0 form, and CEL rules for the cross-field checks
that a schema alone cannot express.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from tooltune_api import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from tooltune_api.models import ToolTuneJobSpec, ToolTuneJobStatus

# Checks across fields, enforced at admission by the API server (CEL) and by the models' validators.
SPEC_RULES = [
    {
        "rule": "(has(self.backend) && self.backend == 'openai') == has(self.openai)",
        "message": "spec.openai (model and apiKeySecret) is required when backend is openai, "
        "and only allowed then",
        "fieldPath": ".openai",
    },
    {
        "rule": "!has(self.resources) || !has(self.resources.nodes) || self.resources.nodes == 1 "
        "|| !has(self.backend) || self.backend == 'unsloth'",
        "message": "spec.resources.nodes above 1 needs backend: unsloth (the OpenAI backend runs one "
        "submitter pod)",
        "fieldPath": ".resources.nodes",
    },
    {
        "rule": "!(has(self.backend) && self.backend == 'openai') || !has(self.evaluation) "
        "|| ((!has(self.evaluation.references) || size(self.evaluation.references) == 0) "
        "&& (!has(self.evaluation.gate) || size(self.evaluation.gate) == 0))",
        "message": "evaluation.references and evaluation.gate are evaluated by the unsloth trainer only",
        "fieldPath": ".evaluation",
    },
]
EVALUATION_RULES = [
    {
        "rule": "!has(self.references) "
        "|| self.references.all(r, self.references.exists_one(x, x.name == r.name))",
        "message": "evaluation.references: names must be unique",
        "fieldPath": ".references",
    },
    {
        "rule": "!has(self.gate) || self.gate.all(g, !has(g.noWorseThan) || g.noWorseThan == 'base' "
        "|| (has(self.references) && self.references.exists(r, r.name == g.noWorseThan)))",
        "message": "evaluation.gate[].noWorseThan: name base or one of evaluation.references",
        "fieldPath": ".gate",
    },
]
GATE_RULE_RULES = [
    {
        "rule": "has(self.atLeast) || has(self.atMost) || has(self.noWorseThan)",
        "message": "a gate rule needs atLeast, atMost or noWorseThan",
    },
]
DATASET_SCHEMES_MESSAGE = "unsupported scheme; use s3://, https://, http://, configmap://, file:// or a path"
DATASET_RULES = [
    {
        "rule": "!(has(self.validation) && has(self.validationSplit))",
        "message": "set dataset.validation or dataset.validationSplit, not both",
    },
    {
        "rule": "!self.train.contains('://') || self.train.matches('^(s3|https?|configmap|file)://')",
        "message": DATASET_SCHEMES_MESSAGE,
        "fieldPath": ".train",
    },
    {
        "rule": "!has(self.validation) || !self.validation.contains('://') "
        "|| self.validation.matches('^(s3|https?|configmap|file)://')",
        "message": DATASET_SCHEMES_MESSAGE,
        "fieldPath": ".validation",
    },
]
OUTPUT_RULES = [
    {
        "rule": "!self.uri.contains('://') || self.uri.matches('^(s3|file)://')",
        "message": "unsupported scheme: tooltune writes models to s3:// or file:// or a local path",
        "fieldPath": ".uri",
    },
]

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason"},
    {"name": "Backend", "type": "string", "jsonPath": ".spec.backend"},
    {"name": "Model", "type": "string", "jsonPath": ".spec.baseModel"},
    {"name": "Workers", "type": "string", "jsonPath": ".status.workers"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.trainLoss"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # `kubectl get ttj -o wide` adds what the reason means, the rest of the progress and the loss diagnosis.
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    {"name": "Percent", "type": "number", "jsonPath": ".status.progress.percent", "priority": 1},
    {"name": "ETA(s)", "type": "integer", "jsonPath": ".status.progress.etaSeconds", "priority": 1},
    {"name": "Eval-Loss", "type": "number", "jsonPath": ".status.progress.evalLoss", "priority": 1},
    {"name": "LR", "type": "number", "jsonPath": ".status.progress.learningRate", "priority": 1},
    {"name": "Diagnosis", "type": "string", "jsonPath": ".status.diagnosis.pattern", "priority": 1},
]

_DROPPED = {"title", "additionalProperties", "discriminator"}


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Turn one pydantic JSON Schema node into a structural OpenAPI v3.0 node."""
    if "$ref" in schema:
        target = structural(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {**target, **{k: v for k, v in schema.items() if k in {"description", "default"}}}
    if "anyOf" in schema:  # Optional[X] is X: absence, not null, means "unset"
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {schema}")
        outer = {k: v for k, v in schema.items() if k in {"description"}}
        default = schema.get("default")
        merged = {**structural(options[0], defs), **outer}
        if default is not None:
            merged["default"] = default
        return merged

    node: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED or key in {"anyOf", "$defs"}:
            continue
        if key == "properties":
            node["properties"] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            node["items"] = structural(value, defs)
        elif key == "const":
            node["enum"] = [value]
        elif key in {"exclusiveMinimum", "exclusiveMaximum"}:
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            node[bound] = value
            node[key] = True
        elif key == "default" and value is None:
            continue
        else:
            node[key] = value
    if node.get("enum") and "type" not in node:
        node["type"] = "string"
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):  # maps such as nodeSelector
        node["additionalProperties"] = structural(additional, defs)
    if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    return node


def model_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[attr-defined]
    return structural(raw, raw.get("$defs", {}))


def open_api_schema() -> dict[str, Any]:
    spec = model_schema(ToolTuneJobSpec)
    spec["x-kubernetes-validations"] = SPEC_RULES
    spec["properties"]["dataset"]["x-kubernetes-validations"] = DATASET_RULES
    spec["properties"]["output"]["x-kubernetes-validations"] = OUTPUT_RULES
    evaluation = spec["properties"]["evaluation"]
    evaluation["x-kubernetes-validations"] = EVALUATION_RULES
    evaluation["properties"]["gate"]["items"]["x-kubernetes-validations"] = GATE_RULE_RULES
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": model_schema(ToolTuneJobStatus),
        },
    }


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all", "tooltune"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `python -m tooltune_api.crd` from tooltune_api.models: do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=110)


if __name__ == "__main__":
    sys.stdout.write(render())
