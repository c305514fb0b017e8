"""What the API server does with a ToolTuneJob's body before storing it, from the CRD's openAPIV3Schema.

- `default_and_prune`: structural defaulting and pruning of unknown fields (always done by the server;
  with ``kubectl --validate=strict``, the default, unknown fields are refused instead: see `validate`).
- `validate`: the openAPIV3Schema checked with jsonschema, with the OpenAPI v3.0 → JSON Schema differences
  handled (boolean ``exclusiveMinimum``/``exclusiveMaximum``, ``nullable``; objects with ``properties``
  refuse unknown fields), plus the CRD's CEL rules (``x-kubernetes-validations``), each evaluated by an
  explicit Python check below. A CRD rule without such a check is reported, never silently skipped.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
from tooltune_api.crd import EVALUATION_RULES, GATE_RULE_RULES, SPEC_RULES

from tests.harness import tables
from tests.harness.tables import CRD_PATH

# Each CEL rule of the CRD, as written there, and the same check in Python on the object it applies to.
CEL_RULES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "(has(self.backend) && self.backend == 'openai') == has(self.openai)": lambda spec: (
        (spec.get("backend") == "openai") == ("openai" in spec)
    ),
    "!has(self.resources) || !has(self.resources.nodes) || self.resources.nodes == 1 "
    "|| !has(self.backend) || self.backend == 'unsloth'": lambda spec: (
        (spec.get("resources") or {}).get("nodes", 1) == 1 or spec.get("backend", "unsloth") == "unsloth"
    ),
    "!(has(self.validation) && has(self.validationSplit))": lambda dataset: (
        not ("validation" in dataset and "validationSplit" in dataset)
    ),
    "!self.train.contains('://') || self.train.matches('^(s3|https?|configmap|file)://')": lambda dataset: (
        _scheme_in(dataset["train"], r"(s3|https?|configmap|file)")
    ),
    "!has(self.validation) || !self.validation.contains('://') "
    "|| self.validation.matches('^(s3|https?|configmap|file)://')": lambda dataset: (
        "validation" not in dataset or _scheme_in(dataset["validation"], r"(s3|https?|configmap|file)")
    ),
    "!self.uri.contains('://') || self.uri.matches('^(s3|file)://')": lambda output: _scheme_in(
        output["uri"], r"(s3|file)"
    ),
    SPEC_RULES[2]["rule"]: lambda spec: (
        spec.get("backend") != "openai"
        or not (spec.get("evaluation", {}).get("references") or spec.get("evaluation", {}).get("gate"))
    ),
    EVALUATION_RULES[0]["rule"]: lambda evaluation: (
        len({r["name"] for r in evaluation.get("references", [])}) == len(evaluation.get("references", []))
    ),
    EVALUATION_RULES[1]["rule"]: lambda evaluation: all(
        rule.get("noWorseThan") in {None, "base", *(r["name"] for r in evaluation.get("references", []))}
        for rule in evaluation.get("gate", [])
    ),
    GATE_RULE_RULES[0]["rule"]: lambda rule: bool({"atLeast", "atMost", "noWorseThan"} & set(rule)),
}


def _scheme_in(uri: str, schemes: str) -> bool:
    """CEL's `!u.contains('://') || u.matches('^<schemes>://')` (matches is RE2, search semantics)."""
    return "://" not in uri or re.search(f"^{schemes}://", uri) is not None


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    return tables.load_crd(path)


def served_schema(crd: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    chosen = next(v for v in versions if version in (None, v["name"]) and v.get("served", True))
    return chosen["schema"]["openAPIV3Schema"]


def to_jsonschema(node: dict[str, Any]) -> dict[str, Any]:
    """Translate one OpenAPI v3.0 structural schema node into JSON Schema (draft 2020-12)."""
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in {"nullable", "exclusiveMinimum", "exclusiveMaximum"}:
            continue
        if key == "properties":
            result["properties"] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key == "items":
            result["items"] = to_jsonschema(value)
        elif key == "additionalProperties" and isinstance(value, dict):
            result["additionalProperties"] = to_jsonschema(value)
        else:
            result[key] = value
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(exclusive) is True and bound in node:
            result[exclusive] = result.pop(bound)
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False  # strict field validation: unknown fields are refused
    if node.get("nullable") and "type" in result:
        result["type"] = [result["type"], "null"]
    return result


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


def validate(obj: dict[str, Any], crd: dict[str, Any] | None = None) -> list[str]:
    """Problems admission would report for this object, one line each, naming the field."""
    schema = served_schema(crd or load_crd())
    validator = jsonschema.Draft202012Validator(to_jsonschema(schema))
    problems = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        if error.validator == "additionalProperties" and error.validator_value is False:
            known = set(error.schema.get("properties", {}))
            for name in sorted(set(error.instance) - known):
                where = _path([*error.absolute_path, name])
                problems.append(f'{where}: unknown field "{name}"; remove it or check its spelling')
        elif error.validator == "required":
            missing = error.message.split("'")[1]
            problems.append(f"{_path([*error.absolute_path, missing])}: Required value")
        else:
            problems.append(f"{_path(error.absolute_path)}: Invalid value: {error.message}")
    if problems:
        return problems  # like the API server: CEL rules run only on schema-valid objects
    problems += _cel_problems(default_and_prune(obj, schema), schema, [])
    return problems


def _cel_problems(value: Any, node: dict[str, Any], path: list[Any]) -> list[str]:
    problems = []
    if isinstance(value, dict):
        for rule in node.get("x-kubernetes-validations", []):
            check = CEL_RULES.get(rule["rule"])
            where = _path([*path, rule["fieldPath"].lstrip(".")] if rule.get("fieldPath") else path)
            if check is None:
                problems.append(
                    f"{where}: CEL rule {rule['rule']!r} has no check in the test harness; "
                    "add one to CEL_RULES"
                )
            elif not check(value):
                problems.append(f"{where}: Invalid value: {rule.get('message', rule['rule'])}")
        for name, sub in node.get("properties", {}).items():
            if name in value:
                problems += _cel_problems(value[name], sub, [*path, name])
    elif isinstance(value, list) and "items" in node:
        for index, item in enumerate(value):
            problems += _cel_problems(item, node["items"], [*path, index])
    return problems


def default_and_prune(obj: Any, schema: dict[str, Any]) -> Any:
    """Fill defaults and drop unknown fields, as the API server does for structural schemas."""
    obj = copy.deepcopy(obj)
    _default_and_prune(obj, schema, top=True)
    return obj


def _default_and_prune(value: Any, node: dict[str, Any], top: bool = False) -> None:
    if isinstance(value, dict):
        properties = node.get("properties")
        if properties is not None and not node.get("x-kubernetes-preserve-unknown-fields"):
            for name in list(value):
                if name not in properties and not (top and name in {"apiVersion", "kind", "metadata"}):
                    del value[name]
            for name, sub in properties.items():
                if name not in value and "default" in sub:
                    value[name] = copy.deepcopy(sub["default"])
                if name in value and name != "metadata":
                    _default_and_prune(value[name], sub)
        elif isinstance(node.get("additionalProperties"), dict):
            for item in value.values():
                _default_and_prune(item, node["additionalProperties"])
    elif isinstance(value, list) and "items" in node:
        for item in value:
            _default_and_prune(item, node["items"])
