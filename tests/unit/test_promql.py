"""Every PromQL expression in the Grafana dashboard and the alert rules parses (promtool) and uses only
metrics tooltune exports, so a renamed metric cannot leave a blank panel or a silent alert behind."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from prometheus_client import CollectorRegistry
from tooltune_api import TINY_MODEL
from tooltune_api.diagnosis import PLATEAU
from tooltune_api.models import JobRef, ToolTuneJobSpec, TrainerContract
from tooltune_operator.metrics import OperatorMetrics, reconciled
from tooltune_trainer.telemetry import GAUGES, LAST_PROGRESS_METRIC, TrainingMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts/tooltune/files/tooltune-dashboard.json"
RULES = ROOT / "charts/tooltune/files/tooltune-alerts.yaml"
PROMTOOL_TIMEOUT_SECONDS = 60

# Grafana's variables, replaced by what Grafana would put there so promtool can parse the result.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*", "$job": ".*"}
# Words of PromQL that look like metric names but are not.
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER_NOT_CALLED = re.compile(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b(?!\s*\()")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*\w+\)$")
# The panels the issue asks the dashboard to show, by title.
REQUIRED_PANELS = {
    "Loss (train and eval)",
    "Learning rate",
    "Throughput",
    "Progress",
    "ETA",
    "GPU memory",
    "Jobs by phase",
    "Reconciles",
    "Reconcile duration (p95)",
}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside strings, label matchers, ranges and
    label lists, that are not function calls or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = LABEL_LIST.sub(" ", text)
    return {name for name in IDENTIFIER_NOT_CALLED.findall(text) if name.lower() not in PROMQL_KEYWORDS}


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard_exprs() -> dict[str, str]:
    """Where → PromQL of every panel target and every query variable of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs[f"panel {panel['title']!r} target {target['refId']}"] = grafana_to_promql(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, f"variable {variable['name']}: expected label_values(<selector>, <label>)"
            exprs[f"variable {variable['name']}"] = grafana_to_promql(match["selector"])
    return exprs


def rule_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {f"alert {rule['alert']}": rule["expr"] for group in groups for rule in group["rules"]}


def exported_metric_names() -> set[str]:
    """Names of every sample tooltune's trainer and operator expose, each metric exercised once."""
    contract = TrainerContract(
        job=JobRef(namespace="ml", name="job", uid="uid", attempt=1),
        spec=ToolTuneJobSpec(base_model=TINY_MODEL, dataset={"train": "t.jsonl"}, output={"uri": "/tmp/o"}),
    )
    trainer = TrainingMetrics(contract, registry=CollectorRegistry())
    trainer.observe(**dict.fromkeys(GAUGES, 1.0))
    trainer.set_diagnosis(PLATEAU)

    operator = OperatorMetrics(registry=CollectorRegistry())
    operator.watch_jobs(lambda: {("ml", "job"): "Running"})
    operator.job_finished("unsloth", "Succeeded", 60)
    operator.job_retried("unsloth")

    @reconciled("create")
    def failing_handler(**_: Any) -> None:
        raise kopf.TemporaryError("not yet")

    with pytest.raises(kopf.TemporaryError):
        failing_handler(memo=kopf.Memo(metrics=operator))

    return {
        sample.name
        for registry in (trainer.registry, operator.registry)
        for family in registry.collect()
        for sample in family.samples
    }


def all_exprs() -> dict[str, str]:
    return {**dashboard_exprs(), **rule_exprs()}


def test_metric_name_extraction():
    expr = 'sum by (le, handler) (rate(foo_bucket{handler=~"a|b", x="rate(y)"}[5m])) / on(a) bar > 2 * 60'
    assert metric_names(expr) == {"foo_bucket", "bar"}
    assert metric_names("time() - last_seconds > 15 * 60 and step < total") == {
        "last_seconds",
        "step",
        "total",
    }


def test_every_expression_parses(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    exprs = all_exprs()
    rules = [{"record": f"tooltune:check_{i}", "expr": expr} for i, expr in enumerate(exprs.values())]
    rule_file = tmp_path / "exprs.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-and-alerts", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_SECONDS,
        check=False,
    )
    numbered = "\n".join(f"{i}: {where}: {expr}" for i, (where, expr) in enumerate(exprs.items()))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\nexpressions:\n{numbered}"


def test_every_expression_uses_only_metrics_tooltune_exports():
    exported = exported_metric_names()
    unknown = {where: sorted(metric_names(expr) - exported) for where, expr in all_exprs().items()}
    assert {where: names for where, names in unknown.items() if names} == {}


def test_every_expression_selects_some_metric():
    assert [where for where, expr in all_exprs().items() if not metric_names(expr)] == []


def test_the_dashboard_shows_every_training_metric_and_the_required_panels():
    dashboard = json.loads(DASHBOARD.read_text())
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs().values()))
    trainer_metrics = {name for name, _ in GAUGES.values()} - {"tooltune_train_epoch"}
    assert trainer_metrics - used == set()
    assert REQUIRED_PANELS - {panel["title"] for panel in dashboard["panels"]} == set()
    assert LAST_PROGRESS_METRIC in set().union(*(metric_names(expr) for expr in rule_exprs().values()))


def test_the_dashboard_queries_the_selected_data_source():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])
