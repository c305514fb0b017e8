"""The promotion gate: whether the tuned model's scores meet spec.evaluation.gate.

Each rule names a score and one or more conditions: `atLeast`, `atMost`, and `noWorseThan` the base model
or a reference, within `tolerance` (for noCallRate and falseCallRate lower is better, so "worse" is higher).
Every condition is checked and reported with its numbers. A condition fails when the tuned score is not
measured (no turn to count it on) while the bound is, or when the model it compares with has no scores
(its evaluation failed): promotion needs evidence. No rules: nothing to fail, the model is promoted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tooltune_api.models import LOWER_IS_BETTER, GateRule

# Scores are rounded to 4 places; a bound met to within this counts as met.
EPSILON = 1e-9


FAILED_SIGN = {">=": "<", "<=": ">"}


def check(metric: str, tuned: float | None, need: str, bound: float | None, condition: str) -> dict[str, Any]:
    """One condition: tuned `need` (">=" or "<=") bound; both unmeasured passes, one of them fails."""
    if tuned is None or bound is None:
        passed = tuned is None and bound is None
    else:
        passed = tuned >= bound - EPSILON if need == ">=" else tuned <= bound + EPSILON
    return {"metric": metric, "condition": condition, "tuned": tuned, "need": need, "bound": bound,
            "passed": passed}  # fmt: skip


def evaluate_gate(
    rules: list[GateRule], tuned: Mapping[str, Any], others: Mapping[str, Mapping[str, Any] | None]
) -> dict[str, Any]:
    """{passed, checks, message} of the tuned metrics against the rules; others maps "base" and each
    reference's name to its metrics (None when it could not be scored)."""
    checks = []
    for rule in rules:
        metric = str(rule.metric)
        value = tuned.get(metric)
        if rule.at_least is not None:
            checks.append(check(metric, value, ">=", rule.at_least, f"atLeast {rule.at_least:g}"))
        if rule.at_most is not None:
            checks.append(check(metric, value, "<=", rule.at_most, f"atMost {rule.at_most:g}"))
        if rule.no_worse_than is not None:
            lower = metric in LOWER_IS_BETTER
            condition = f"noWorseThan {rule.no_worse_than}" + (
                f" with tolerance {rule.tolerance:g}" if rule.tolerance else ""
            )
            scores = others.get(rule.no_worse_than)
            theirs = None if scores is None else scores.get(metric)
            slack = rule.tolerance if lower else -rule.tolerance
            bound = None if theirs is None else round(theirs + slack, 4)
            result = check(metric, value, "<=" if lower else ">=", bound, condition)
            if scores is None:
                result |= {"passed": False, "why": f"{rule.no_worse_than} has no scores"}
            checks.append(result)
    failed = [c for c in checks if not c["passed"]]
    if not checks:
        message = "no gate rules: promoted"
    elif failed:
        message = "evaluation gate failed: " + "; ".join(describe(c) for c in failed)
    else:
        message = "evaluation gate passed: " + "; ".join(describe(c) for c in checks)
    return {"passed": not failed, "checks": checks, "message": message}


def describe(check: dict[str, Any]) -> str:
    """e.g. `argumentsExactMatch 0.26 < 0.9 (atLeast 0.9)`."""
    if "why" in check:
        return f"{check['metric']} ({check['condition']}): {check['why']}"
    sign = check["need"] if check["passed"] else FAILED_SIGN[check["need"]]
    tuned, bound = _number(check["tuned"]), _number(check["bound"])
    return f"{check['metric']} {tuned} {sign} {bound} ({check['condition']})"


def _number(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:g}"
