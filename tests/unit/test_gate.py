"""The promotion gate with known answers: each condition's numbers, the direction of each score, tolerance,
and what fails for want of evidence."""

from __future__ import annotations

from typing import Any

import pytest
from tooltune_api.models import GateRule
from tooltune_trainer.gate import evaluate_gate

TUNED = {"toolNameAccuracy": 0.9, "argumentsExactMatch": 0.26, "noCallRate": 0.04, "falseCallRate": None}
BASE = {"toolNameAccuracy": 0.1, "argumentsExactMatch": 0.0, "noCallRate": 0.9, "falseCallRate": None}
GPT = {"toolNameAccuracy": 0.94, "argumentsExactMatch": 0.3, "noCallRate": 0.02, "falseCallRate": 0.0}


def rules(*specs: dict[str, Any]) -> list[GateRule]:
    return [GateRule.model_validate(spec) for spec in specs]


def test_minimums_and_maximums():
    gate = evaluate_gate(
        rules(
            {"metric": "toolNameAccuracy", "atLeast": 0.9},  # 0.9 >= 0.9: a bound met exactly passes
            {"metric": "argumentsExactMatch", "atLeast": 0.5},  # 0.26 < 0.5
            {"metric": "noCallRate", "atMost": 0.05},  # 0.04 <= 0.05
        ),
        TUNED,
        {"base": BASE},
    )
    assert [check["passed"] for check in gate["checks"]] == [True, False, True]
    assert not gate["passed"]
    assert gate["message"] == "evaluation gate failed: argumentsExactMatch 0.26 < 0.5 (atLeast 0.5)"


def test_no_worse_than_reads_each_score_in_its_direction_with_tolerance():
    gate = evaluate_gate(
        rules(
            {"metric": "toolNameAccuracy", "noWorseThan": "gpt", "tolerance": 0.05},  # 0.9 >= 0.94 - 0.05
            {"metric": "argumentsExactMatch", "noWorseThan": "gpt", "tolerance": 0.02},  # 0.26 < 0.3 - 0.02
            {"metric": "noCallRate", "noWorseThan": "gpt", "tolerance": 0.01},  # 0.04 > 0.02 + 0.01: worse
            {"metric": "noCallRate", "noWorseThan": "base"},  # 0.04 <= 0.9
        ),
        TUNED,
        {"base": BASE, "gpt": GPT},
    )
    assert [(c["bound"], c["need"], c["passed"]) for c in gate["checks"]] == [
        (0.89, ">=", True),
        (0.28, ">=", False),
        (0.03, "<=", False),
        (0.9, "<=", True),
    ]
    assert gate["message"] == (
        "evaluation gate failed: argumentsExactMatch 0.26 < 0.28 (noWorseThan gpt with tolerance 0.02); "
        "noCallRate 0.04 > 0.03 (noWorseThan gpt with tolerance 0.01)"
    )


def test_passing_lists_every_check():
    gate = evaluate_gate(rules({"metric": "toolNameAccuracy", "atLeast": 0.5, "noWorseThan": "base"}), TUNED,
                         {"base": BASE})  # fmt: skip
    assert gate["passed"]
    assert gate["message"] == (
        "evaluation gate passed: toolNameAccuracy 0.9 >= 0.5 (atLeast 0.5); "
        "toolNameAccuracy 0.9 >= 0.1 (noWorseThan base)"
    )


@pytest.mark.parametrize(
    ("rule", "others", "passed", "words"),
    [
        # falseCallRate unmeasured (no turn expects text) on both sides: nothing to be worse at
        (
            {"metric": "falseCallRate", "noWorseThan": "base"},
            {"base": BASE},
            True,
            "unmeasured <= unmeasured",
        ),
        # unmeasured on the tuned model, measured on the reference: no evidence, no promotion
        ({"metric": "falseCallRate", "noWorseThan": "gpt"}, {"gpt": GPT}, False, "unmeasured > 0"),
        ({"metric": "falseCallRate", "atMost": 0.1}, {}, False, "unmeasured > 0.1"),
        # the reference could not be scored (its endpoint failed)
        ({"metric": "toolNameAccuracy", "noWorseThan": "gpt"}, {"gpt": None}, False, "gpt has no scores"),
    ],
)
def test_what_cannot_be_measured(rule, others, passed, words):
    gate = evaluate_gate(rules(rule), TUNED, others)
    assert gate["passed"] is passed and words in gate["message"], gate["message"]


def test_no_rules_promote():
    assert evaluate_gate([], TUNED, {}) == {
        "passed": True,
        "checks": [],
        "message": "no gate rules: promoted",
    }
