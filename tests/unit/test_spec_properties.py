"""Property-based checks of ToolTuneJob specs: parse_spec and the CRD's schema, on valid and broken specs.

Valid specs are drawn from strategies over the model's fields and bounds; broken ones mutate a valid
spec (a wrong type, a number out of bounds, an unknown field, a missing required field). parse_spec must
accept every valid spec and refuse every broken one with InvalidSpec only, each line naming a ``spec.``
field; the CRD schema (as admission checks it) must agree with parse_spec on accept/refuse.
docs/bad-specs.md lists example bad specs and what the user sees; the last test checks each row.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tooltune_api.models import InvalidSpec, parse_spec

from tests.harness import crd_schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-specs.md"
CRD = crd_schema.load_crd()
EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=20)
unit_open = st.floats(min_value=0.01, max_value=0.99)  # (0, 1), away from float-rounding edges

# (path, strategy, bad values out of bounds) for numeric fields, so mutations know where the bounds are.
NUMBERS: list[tuple[tuple[str, ...], st.SearchStrategy[Any], list[Any]]] = [
    (("hyperparameters", "epochs"), st.integers(1, 100), [0, 101, -1]),
    (("hyperparameters", "batchSize"), st.integers(1, 1024), [0, 1025]),
    (("hyperparameters", "gradientAccumulationSteps"), st.integers(1, 1024), [0]),
    (("hyperparameters", "learningRate"), st.floats(1e-8, 1.0), [0, -0.1, 1.5]),
    (("hyperparameters", "warmupRatio"), st.floats(0.0, 0.99), [1, -0.5]),
    (("hyperparameters", "maxSeqLength"), st.integers(32, 131072), [31, 131073]),
    (("hyperparameters", "lora", "r"), st.integers(1, 1024), [0, 1025]),
    (("hyperparameters", "lora", "dropout"), st.floats(0.0, 0.99), [1, -0.1]),
    (("checkpoints", "everySteps"), st.integers(1, 1000000), [0]),
    (("checkpoints", "keep"), st.integers(1, 100), [0, 101]),
    (("dataset", "validationSplit"), unit_open, [0, 1, 1.5]),
    (("dataset", "seed"), st.integers(0, 2**31), [-1]),
    (("resources", "gpus"), st.integers(0, 64), [-1, 65]),
    (("backoffLimit",), st.integers(0, 100), [-1, 101]),
]
STRINGS = [("baseModel",), ("dataset", "train"), ("output", "uri")]
BOOLEANS = [("suspend",), ("hyperparameters", "fullFineTune"), ("output", "mergedWeights")]
REQUIRED = [("baseModel",), ("dataset",), ("output",), ("dataset", "train"), ("output", "uri")]


def put(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        spec = spec.setdefault(part, {})
    spec[path[-1]] = value


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": draw(names),
        "dataset": {"train": draw(names)},
        "output": {"uri": draw(names)},
    }
    for path, values, _ in NUMBERS:
        if draw(st.booleans()):
            put(spec, path, draw(values))
    for path in BOOLEANS:
        if draw(st.booleans()):
            put(spec, path, draw(st.booleans()))
    if draw(st.booleans()):
        put(spec, ("hyperparameters", "scheduler"), draw(st.sampled_from(["linear", "cosine", "constant"])))
    if draw(st.booleans()):
        put(spec, ("hyperparameters", "precision"), draw(st.sampled_from(["auto", "fp16", "bf16", "fp32"])))
    if draw(st.booleans()):
        put(spec, ("resources", "memory"), draw(st.sampled_from(["16Gi", "512Mi", "1.5G", "1000"])))
    if "validationSplit" not in spec["dataset"] and draw(st.booleans()):
        spec["dataset"]["validation"] = draw(names)
    if draw(st.booleans()):
        spec["backend"] = "openai"
        spec["openai"] = {"model": draw(names), "apiKeySecret": {"name": draw(names)}}
    return spec


@st.composite
def broken_specs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid spec with one mutation; returns (the mutated field's path, the spec)."""
    spec = copy.deepcopy(draw(valid_specs()))
    kind = draw(st.sampled_from(["type", "bounds", "unknown", "missing"]))
    if kind == "bounds":
        path, _, bad = draw(st.sampled_from(NUMBERS))
        if path == ("dataset", "validationSplit"):
            spec["dataset"].pop("validation", None)
        put(spec, path, draw(st.sampled_from(bad)))
    elif kind == "type":
        path, value = draw(
            st.one_of(
                st.tuples(st.sampled_from([p for p, _, _ in NUMBERS]), st.just("many")),
                st.tuples(st.sampled_from(STRINGS), st.sampled_from([[1], {"a": 1}, 7])),
                st.tuples(st.sampled_from(BOOLEANS), st.sampled_from(["maybe", [True]])),
                st.tuples(st.sampled_from([("dataset",), ("output",)]), st.just("s3://x")),
            )
        )
        if path == ("dataset", "validationSplit"):
            spec["dataset"].pop("validation", None)
        put(spec, path, value)
    elif kind == "unknown":
        parent = draw(st.sampled_from([(), ("dataset",), ("output",), ("hyperparameters",)]))
        field = draw(st.sampled_from(["learningrate", "epoch", "extra", "bucket"]))
        path = (*parent, field)
        put(spec, path, 1)
    else:
        path = draw(st.sampled_from(REQUIRED))
        target = spec
        for part in path[:-1]:
            target = target[part]
        target.pop(path[-1])
    return ".".join(("spec", *path)), spec


def admission(spec: dict[str, Any]) -> list[str]:
    body = {
        "apiVersion": "tooltune.dev/v1alpha1",
        "kind": "ToolTuneJob",
        "metadata": {"name": "x"},
        "spec": spec,
    }
    return crd_schema.validate(body, CRD)


@EXAMPLES
@given(valid_specs())
def test_valid_specs_always_parse_and_pass_admission(spec: dict[str, Any]) -> None:
    parsed = parse_spec(spec)
    assert parsed.base_model == spec["baseModel"]
    assert admission(spec) == []


@EXAMPLES
@given(broken_specs())
def test_broken_specs_are_refused_with_lines_naming_the_field(case: tuple[str, dict[str, Any]]) -> None:
    field, spec = case
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(spec)
    problems = refused.value.problems
    assert problems and all(re.match(r"^spec\.[A-Za-z]", line) for line in problems), problems
    assert any(line.startswith(field) for line in problems), (field, problems)
    assert admission(spec), f"admission accepts a spec parse_spec refuses: {problems}"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 200) | st.floats(-2, 2) | names,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=8,
)


@EXAMPLES
@given(valid_specs(), st.sampled_from([p for p, _, _ in NUMBERS] + STRINGS + BOOLEANS), json_values)
def test_admission_and_parse_spec_agree_on_any_value(
    spec: dict[str, Any], path: tuple[str, ...], value: Any
) -> None:
    if path == ("dataset", "validationSplit"):
        spec["dataset"].pop("validation", None)
    put(spec, path, value)
    try:
        parse_spec(spec)
        accepted = True
    except InvalidSpec as error:
        accepted = False
        assert all(line.startswith("spec.") for line in error.problems)
    if _lax_coercion(value):
        return  # pydantic's lax mode takes "3" for 3 and 1.0 for 1, which admission refuses
    assert accepted == (admission(spec) == []), (path, value, admission(spec))


def _lax_coercion(value: Any) -> bool:
    return isinstance(value, str | float | bool) or value is None


# ------------------------------------------------------------------ the documented table


def documented_rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("`{"):
            rows.append((cells[0], cells[1].strip("`"), cells[2].strip("`")))
    return rows


BASE = {
    "baseModel": "tooltune/tiny-llama",
    "dataset": {"train": "s3://b/t.jsonl"},
    "output": {"uri": "s3://b/o/"},
}


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in change.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def test_the_bad_specs_table_says_what_parse_spec_says() -> None:
    rows = documented_rows()
    assert len(rows) >= 8, "docs/bad-specs.md lost its table"
    for what, change, message in rows:
        with pytest.raises(InvalidSpec) as refused:
            parse_spec(merged(BASE, json.loads(change)))
        assert "; ".join(refused.value.problems) == message, what
