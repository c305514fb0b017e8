"""The Helm chart through the real helm binary, and its output applied to the emulator with kubectl."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml
from tooltune_api import GROUP, PLURAL
from tooltune_api.models import PriceTable, ToolTuneJob, parse_spec
from tooltune_operator import builders
from tooltune_operator.settings import Settings

from tests.fixtures.cluster import K8s
from tests.harness import emulator

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tooltune"
MANIFESTS = ROOT / "manifests"
TELEMETRY_FILES = ("files/tooltune-alerts.yaml", "files/tooltune-dashboard.json")
EVERY_SWITCH = [
    "metrics.serviceMonitor.enabled=true",
    "metrics.podMonitor.enabled=true",
    "prometheusRule.enabled=true",
    "grafanaDashboard.enabled=true",
]
RELEASE, NAMESPACE = "tt", "ml-platform"
LONGEST_RELEASE = "a-release-name-as-long-as-helm-allows-it-to-be-000053"  # helm allows 53
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}


def find_tool(name: str) -> str | None:
    local = ROOT / ".tools" / "bin" / name
    return str(local) if local.exists() else shutil.which(name)


@pytest.fixture(scope="module")
def helm() -> str:
    found = find_tool("helm")
    if found is None:
        pytest.skip("helm not installed (make tools puts it in .tools/bin)")
    return found


@pytest.fixture(scope="module")
def kubectl() -> str:
    found = find_tool("kubectl")
    if found is None:
        pytest.skip("kubectl not installed (make tools puts it in .tools/bin)")
    return found


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart; where the telemetry files have not landed yet, a copy with small stand-ins for them."""
    if all((CHART / name).exists() for name in TELEMETRY_FILES):
        return CHART
    copy = tmp_path_factory.mktemp("chart") / "tooltune"
    shutil.copytree(CHART, copy)
    (copy / "files").mkdir(exist_ok=True)
    alerts = {
        "groups": [{"name": "tooltune", "rules": [{"alert": "TooltuneJobFailed", "expr": "vector(0) > 0"}]}]
    }
    if not (copy / TELEMETRY_FILES[0]).exists():
        (copy / TELEMETRY_FILES[0]).write_text(yaml.safe_dump(alerts))
    if not (copy / TELEMETRY_FILES[1]).exists():
        (copy / TELEMETRY_FILES[1]).write_text(json.dumps({"title": "tooltune", "panels": []}))
    return copy


def run(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def render(
    helm: str, chart: Path, *settings: str, crds: bool = False, json_settings: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    command = [helm, "template", RELEASE, str(chart), "--namespace", NAMESPACE]
    command += ["--include-crds"] if crds else []
    for setting in settings:
        command += ["--set", setting]
    for setting in json_settings:  # typed values: --set makes 2.5 a string
        command += ["--set-json", setting]
    result = run(command)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def manifest(path: str) -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / path).read_text())


# ---------------------------------------------------------------- helm lint and template


@pytest.mark.parametrize(
    "settings",
    [[], EVERY_SWITCH, ["namespaceScoped=true", *EVERY_SWITCH]],
    ids=["defaults", "every-switch", "namespace-scoped"],
)
def test_helm_lint_is_clean(helm: str, chart: Path, settings: list[str]) -> None:
    command = [helm, "lint", "--strict", str(chart)]
    for setting in settings:
        command += ["--set", setting]
    result = run(command)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_chart_ships_the_telemetry_files() -> None:
    missing = [name for name in TELEMETRY_FILES if not (CHART / name).exists()]
    assert not missing, (
        f"charts/tooltune/{missing} missing: the PrometheusRule and dashboard switches need them"
    )


def test_defaults_render_the_operator_and_cluster_rbac_only(helm: str, chart: Path) -> None:
    kinds = by_kind(render(helm, chart))
    assert set(kinds) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"}
    (deployment,) = kinds["Deployment"]
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TOOLTUNE_NAMESPACE"] == ""
    assert env["TOOLTUNE_TRAINER_IMAGE"] == "ghcr.io/tooltune/trainer:0.1.0"


def test_every_switch_renders_monitoring_objects(helm: str, chart: Path) -> None:
    kinds = by_kind(render(helm, chart, *EVERY_SWITCH))
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"):
        assert kind in kinds, f"{kind} not rendered with every switch on"
    (service_monitor,) = kinds["ServiceMonitor"]
    (service,) = kinds["Service"]
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # The operator's series name the job's namespace: Prometheus must not overwrite it with the pod's.
    assert service_monitor["spec"]["endpoints"][0]["honorLabels"] is True

    (pod_monitor,) = kinds["PodMonitor"]
    for backend_spec in (
        {"baseModel": "org/model", "dataset": {"train": "s3://b/t.jsonl"}, "output": {"uri": "s3://b/o/"}},
        {
            "backend": "openai",
            "baseModel": "gpt-4o-mini-2024-07-18",
            "dataset": {"train": "s3://b/t.jsonl"},
            "output": {"uri": "s3://b/o/"},
            "openai": {"model": "gpt-4o-mini-2024-07-18", "apiKeySecret": {"name": "openai"}},
        },
    ):
        body = {"metadata": {"name": "demo", "namespace": "ml", "uid": "u", "generation": 1}}
        job = builders.training_job(body, parse_spec(backend_spec), 1, Settings())
        pod_labels = job["spec"]["template"]["metadata"]["labels"]
        assert labels_match(pod_labels, pod_monitor["spec"]["selector"]), backend_spec.get("backend")
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True

    (rule,) = kinds["PrometheusRule"]
    alerts = yaml.safe_load((chart / TELEMETRY_FILES[0]).read_text())
    assert rule["spec"]["groups"] == alerts["groups"]

    (dashboard,) = kinds["ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = dashboard["data"].values()
    assert json.loads(content) == json.loads((chart / TELEMETRY_FILES[1]).read_text())


def labels_match(labels: dict[str, str], selector: dict[str, Any]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) as the Prometheus operator applies it."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        value, operator = labels.get(expression["key"]), expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
    return True


def test_namespace_scoped_mode_uses_a_role_and_watches_one_namespace(helm: str, chart: Path) -> None:
    objects = render(helm, chart, "namespaceScoped=true", *EVERY_SWITCH)
    kinds = by_kind(objects)
    assert not {"ClusterRole", "ClusterRoleBinding"} & set(kinds)
    (role,) = kinds["Role"]
    (binding,) = kinds["RoleBinding"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    cluster_only = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
    expected = {
        k: v
        for k, v in grants(manifest("rbac/operator-clusterrole.yaml")["rules"]).items()
        if k not in cluster_only
    }
    assert grants(role["rules"]) == expected
    (deployment,) = kinds["Deployment"]
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TOOLTUNE_NAMESPACE"] == NAMESPACE
    (pod_monitor,) = kinds["PodMonitor"]
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_chart_and_plain_manifests_grant_the_same(helm: str, chart: Path) -> None:
    (role,) = by_kind(render(helm, chart))["ClusterRole"]
    assert grants(role["rules"]) == grants(manifest("rbac/operator-clusterrole.yaml")["rules"])
    # With Kueue support on: the plain manifests plus manifests/kueue/, and the switch reaches the operator.
    (role,) = by_kind(render(helm, chart, "kueue.enabled=true"))["ClusterRole"]
    kueue_role = next(
        yaml.safe_load_all((MANIFESTS / "kueue" / "operator-kueue-clusterrole.yaml").read_text())
    )
    plain = manifest("rbac/operator-clusterrole.yaml")["rules"] + kueue_role["rules"]
    assert grants(role["rules"]) == grants(plain)


def test_kueue_values_reach_the_operator_and_default_off(helm: str, chart: Path) -> None:
    def env(*settings: str) -> dict[str, str]:
        (deployment,) = by_kind(render(helm, chart, *settings))["Deployment"]
        return {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert not {name for name in env() if "KUEUE" in name}
    values = ["kueue.enabled=true", "kueue.defaultQueue=team-a", "kueue.defaultPriorityClass=low"]
    settings = Settings.from_env(env(*values))
    assert (settings.kueue_enabled, settings.kueue_default_queue, settings.kueue_default_priority_class) == (
        True, "team-a", "low",
    )  # fmt: skip
    (role,) = by_kind(render(helm, chart, "namespaceScoped=true", "kueue.enabled=true"))["Role"]
    assert grants(role["rules"])[("kueue.x-k8s.io", "workloads")] == {"get", "list", "watch", "patch"}
    refused = run([helm, "template", RELEASE, str(chart), "--set", "kueue.defaultQueue=Team_A"])
    assert refused.returncode != 0 and "defaultQueue" in refused.stderr


def test_chart_and_plain_manifests_run_the_operator_the_same_way(helm: str, chart: Path) -> None:
    (deployment,) = by_kind(render(helm, chart))["Deployment"]
    plain = manifest("operator/deployment.yaml")
    ours, theirs = (d["spec"]["template"]["spec"] for d in (deployment, plain))
    assert ours["securityContext"] == theirs["securityContext"]
    for key in ("image", "securityContext", "livenessProbe", "ports", "resources", "volumeMounts"):
        assert ours["containers"][0][key] == theirs["containers"][0][key], key
    assert {e["name"] for e in theirs["containers"][0]["env"]} <= {
        e["name"] for e in ours["containers"][0]["env"]
    }


def test_pricing_values_reach_the_price_table_every_pod_gets(helm: str, chart: Path) -> None:
    (deployment,) = by_kind(
        render(
            helm,
            chart,
            "pricing.source=our OpenAI contract 2026-11",
            json_settings=(
                'pricing.openaiTrainingPricesPerMillionTokens={"gpt-4o-mini": 2.5, "ft:my-base": 9}',
                "pricing.costPerGpuHour=1.75",
            ),
        )
    )["Deployment"]
    env = {
        e["name"]: e.get("value", "") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }

    prices = Settings.from_env(env).prices

    assert prices.source == "our OpenAI contract 2026-11"
    assert prices.openai_training_per_million_tokens["gpt-4o-mini"] == 2.5
    assert prices.openai_training_per_million_tokens["ft:my-base"] == 9
    assert prices.openai_training_per_million_tokens["gpt-4o"] == 25.0  # the built-in table's, kept
    assert prices.cost_per_gpu_hour == 1.75
    (default,) = by_kind(render(helm, chart))["Deployment"]
    default_env = {
        e["name"]: e.get("value", "") for e in default["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert Settings.from_env(default_env).prices == PriceTable()


def test_a_negative_price_is_refused_by_the_values_schema(helm: str, chart: Path) -> None:
    result = run(
        [
            helm,
            "template",
            RELEASE,
            str(chart),
            "--set-json",
            'pricing.openaiTrainingPricesPerMillionTokens={"gpt-4o": -1}',
        ]
    )
    assert result.returncode != 0
    assert "openaiTrainingPricesPerMillionTokens" in result.stderr


def test_values_schema_refuses_a_typo(helm: str, chart: Path) -> None:
    result = run([helm, "template", RELEASE, str(chart), "--set", "metrics.serviceMonitor.enabeld=true"])
    assert result.returncode != 0
    assert "enabeld" in result.stderr


def test_missing_service_account_name_is_explained(helm: str, chart: Path) -> None:
    result = run([helm, "template", RELEASE, str(chart), "--set", "serviceAccount.create=false"])
    assert result.returncode != 0
    assert "serviceAccount.name is required" in result.stderr


def structural_problems(obj: dict[str, Any]) -> Iterator[str]:
    """Offline checks in the spirit of kubeconform: what an API server would refuse or what breaks wiring."""
    kind, meta = obj.get("kind"), obj.get("metadata", {})
    if not obj.get("apiVersion") or not kind:
        yield f"object without apiVersion/kind: {meta}"
    name = meta.get("name", "")
    limit = (
        253 if kind in {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "ConfigMap"} else 63
    )
    if not name or len(name) > limit or not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name):
        yield f"{kind}: invalid name {name!r}"
    if (kind in CLUSTER_SCOPED) == bool(meta.get("namespace")):
        yield f"{kind} {name}: namespace {meta.get('namespace')!r} does not fit its scope"
    for key, value in meta.get("labels", {}).items():
        if not isinstance(value, str) or len(value) > 63:
            yield f"{kind} {name}: label {key}={value!r} is not a short string"
    if kind == "Deployment":
        template = obj["spec"]["template"]
        if not obj["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items():
            yield "Deployment selector does not match its pod labels"
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if "value" in env and not isinstance(env["value"], str):
                    yield f"env {env['name']} is not a string"
            for port in container.get("ports", []):
                if not DNS_LABEL.match(port["name"]) or len(port["name"]) > 15:
                    yield f"port name {port['name']!r} is invalid"


@pytest.mark.parametrize("release", [RELEASE, LONGEST_RELEASE])
@pytest.mark.parametrize("settings", [[], EVERY_SWITCH, ["namespaceScoped=true", *EVERY_SWITCH]])
def test_rendered_objects_are_structurally_valid(
    helm: str, chart: Path, release: str, settings: list[str]
) -> None:
    command = [helm, "template", release, str(chart), "--namespace", NAMESPACE, "--include-crds"]
    for setting in settings:
        command += ["--set", setting]
    result = run(command)
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    problems = [problem for obj in objects for problem in structural_problems(obj)]
    assert not problems, "\n".join(problems)
    accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    for binding in (o for o in objects if o["kind"].endswith("Binding")):
        assert {s["name"] for s in binding["subjects"]} <= accounts


def test_notes_say_what_to_do_next(helm: str, chart: Path) -> None:
    result = run([helm, "install", RELEASE, str(chart), "--namespace", NAMESPACE, "--dry-run=client"])
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{RELEASE}-tooltune" in notes
    assert "create secret generic s3-credentials" in notes
    assert "kubectl get ttj" in notes
    named = re.findall(r"\b((?:manifests|docs)/[\w./-]+\.(?:yaml|md))", notes)
    assert named and all((ROOT / path).exists() for path in named), named


# ---------------------------------------------------------------- applied to the emulator

# The Prometheus Operator's kinds, which the chart renders behind its switches and the emulator lacks.
MONITORING_KINDS = {
    "monitoring.coreos.com/v1/servicemonitors": "ServiceMonitor",
    "monitoring.coreos.com/v1/podmonitors": "PodMonitor",
    "monitoring.coreos.com/v1/prometheusrules": "PrometheusRule",
}
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


@pytest.fixture(scope="module")
def monitoring_kinds() -> Iterator[None]:
    """Emulators started in this module (by the k8s fixture) also serve the monitoring kinds."""
    with pytest.MonkeyPatch.context() as patch:
        for key, kind in MONITORING_KINDS.items():
            info = kmock.ResourceInfo(kind=kind, singular=kind.lower(), namespaced=True, verbs=VERBS)
            patch.setitem(emulator.RESOURCES, key, info)
        yield


def kubectl_apply(k8s: K8s, tmp_path: Path, objects: list[dict[str, Any]]) -> str:
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    # A cache of this test's own: another emulator may have served different kinds on the same port.
    cache = tmp_path / "kubectl-cache"
    return k8s.kubectl("--cache-dir", str(cache), "apply", "--validate=false", "-f", str(path)).stdout


@pytest.mark.parametrize(
    "settings", [EVERY_SWITCH, ["namespaceScoped=true", *EVERY_SWITCH]], ids=["cluster", "ns"]
)
def test_rendered_chart_applies_with_kubectl(
    helm: str, chart: Path, monitoring_kinds: None, k8s: K8s, tmp_path: Path, settings: list[str]
) -> None:
    cluster = k8s.cluster
    objects = render(helm, chart, *settings, crds=True)
    output = kubectl_apply(k8s, tmp_path, objects)
    for obj in objects:
        assert f"/{obj['metadata']['name']} " in output, (
            f"{obj['kind']} {obj['metadata']['name']} not applied"
        )

    crd = cluster.get("apiextensions.k8s.io/v1/customresourcedefinitions", None, f"{PLURAL}.{GROUP}")
    assert crd is not None and crd["spec"]["names"]["shortNames"] == ["ttj"]
    if "namespaceScoped=true" in settings:
        role = cluster.get("rbac.authorization.k8s.io/v1/roles", NAMESPACE, f"{RELEASE}-tooltune")
    else:
        role = cluster.get("rbac.authorization.k8s.io/v1/clusterroles", None, f"{RELEASE}-tooltune")
    assert role is not None and grants(role["rules"])[(GROUP, PLURAL)] >= {"get", "list", "watch", "patch"}
    deployment = cluster.get("apps/v1/deployments", NAMESPACE, f"{RELEASE}-tooltune")
    assert deployment is not None


def test_plain_manifests_and_example_jobs_apply_with_kubectl(kubectl: str, k8s: K8s, tmp_path: Path) -> None:
    cluster = k8s.cluster
    kustomized = run([kubectl, "kustomize", str(MANIFESTS)])
    assert kustomized.returncode == 0, kustomized.stderr
    installed = [doc for doc in yaml.safe_load_all(kustomized.stdout) if doc]
    kinds = {o["kind"] for o in installed}
    assert {"Namespace", "CustomResourceDefinition", "ClusterRole", "Deployment"} <= kinds
    kubectl_apply(k8s, tmp_path, installed)
    assert cluster.get("v1/namespaces", None, "tooltune-system") is not None
    assert cluster.get("apps/v1/deployments", "tooltune-system", "tooltune-operator") is not None

    examples = [
        doc
        for path in sorted((MANIFESTS / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    for doc in examples:
        doc["metadata"]["namespace"] = "default"
    kubectl_apply(k8s, tmp_path, examples)
    for doc in (d for d in examples if d["kind"] == "ToolTuneJob"):
        stored = cluster.get(f"{GROUP}/v1alpha1/{PLURAL}", "default", doc["metadata"]["name"])
        assert stored is not None
        assert ToolTuneJob.model_validate(stored).spec == ToolTuneJob.model_validate(doc).spec
    secret = cluster.get("v1/secrets", "default", "s3-credentials")
    assert secret is not None and set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
