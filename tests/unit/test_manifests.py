"""Plain manifests, examples and chart values: they parse, lint, validate, and grant no more than needed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from tooltune_api import GROUP, PLURAL
from tooltune_api.models import ToolTuneJob
from tooltune_operator.builders import trainer_rbac
from tooltune_operator.settings import Settings
from yamllint import linter
from yamllint.config import YamlLintConfig

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CHART = ROOT / "charts" / "tooltune"
EXAMPLES = sorted((MANIFESTS / "examples").glob("*.yaml"))
PLAIN_YAML = [
    *sorted(MANIFESTS.rglob("*.yaml")),
    CHART / "Chart.yaml",
    CHART / "values.yaml",
    ROOT / "tests" / "e2e" / "seaweedfs.yaml",
    ROOT / ".yamllint",
    ROOT / ".hadolint.yaml",
]
CLUSTER_ROLE = MANIFESTS / "rbac" / "operator-clusterrole.yaml"
DEPLOYMENT = MANIFESTS / "operator" / "deployment.yaml"

# What the operator needs, and so what its role must hold: (API group, resource) -> verbs. No Secrets: the
# pods that need a key (submitter, remote cancel) get it through secretKeyRef.
OPERATOR_NEEDS: dict[tuple[str, str], set[str]] = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
    (GROUP, PLURAL): {"get", "list", "watch", "patch", "update"},
    (GROUP, f"{PLURAL}/status"): {"get", "patch", "update"},
    (GROUP, f"{PLURAL}/finalizers"): {"update"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "configmaps"): {"get", "list", "watch", "create", "delete", "patch"},
    ("", "services"): {"get", "create", "patch"},  # a group's headless Service: create (409: get), hand over
    ("", "events"): {"create", "patch", "list"},  # list: the kubelet's Events of a pod that stays Pending
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "serviceaccounts"): {"get", "create", "patch"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "create", "patch"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "create", "patch"},
}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """Flatten RBAC rules into (group, resource) -> verbs."""
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], f"wildcard in {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


@pytest.mark.parametrize("path", PLAIN_YAML, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses_and_passes_yamllint(path: Path) -> None:
    assert documents(path), f"{path} holds no YAML document"
    config = YamlLintConfig(file=str(ROOT / ".yamllint"))
    problems = [
        f"{path.relative_to(ROOT)}:{p.line}:{p.column} {p.message} ({p.rule})"
        for p in linter.run(path.read_text(), config, str(path.relative_to(ROOT)))
    ]
    assert not problems, "\n".join(problems)


def test_yamllint_config_catches_a_bad_file() -> None:
    config = YamlLintConfig(file=str(ROOT / ".yamllint"))
    bad = "a: 1\na: 2\nflag: yes\n"
    rules = {p.rule for p in linter.run(bad, config, "manifests/bad.yaml")}
    assert {"key-duplicates", "truthy"} <= rules


@pytest.mark.parametrize("path", sorted(MANIFESTS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_manifest_is_a_kubernetes_object(path: Path) -> None:
    for doc in documents(path):
        if doc.get("kind") == "Kustomization":
            continue
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: object without apiVersion/kind"
        assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without metadata.name"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_api_models(path: Path) -> None:
    for doc in documents(path):
        if doc["kind"] != "ToolTuneJob":
            continue
        job = ToolTuneJob.model_validate(doc)
        secrets = example_secrets()
        storage_secret = job.spec.storage.credentials_secret
        if storage_secret:
            assert storage_secret in secrets, (
                f"{path.name} names Secret {storage_secret!r} that no example defines"
            )
        if job.spec.openai:
            key = job.spec.openai.api_key_secret
            assert key.key in secrets.get(key.name, set()), (
                f"{path.name}: no example Secret {key.name} with {key.key}"
            )


def example_secrets() -> dict[str, set[str]]:
    secrets: dict[str, set[str]] = {}
    for path in EXAMPLES:
        for doc in documents(path):
            if doc["kind"] == "Secret":
                secrets[doc["metadata"]["name"]] = set(doc.get("stringData", {})) | set(doc.get("data", {}))
    return secrets


def test_examples_cover_gpu_cpu_and_storage() -> None:
    jobs = {
        doc["metadata"]["name"]: ToolTuneJob.model_validate(doc)
        for path in EXAMPLES
        for doc in documents(path)
        if doc["kind"] == "ToolTuneJob"
    }
    assert jobs["task-api-tools"].spec.resources.gpus >= 1
    assert jobs["tiny-cpu"].spec.resources.gpus == 0
    assert jobs["tiny-cpu"].spec.base_model == "tooltune/tiny-llama"
    assert example_secrets()["s3-credentials"] == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_a_broken_example_would_be_refused() -> None:
    doc = documents(MANIFESTS / "examples" / "tiny-cpu.yaml")[0]
    doc["spec"]["hyperparameters"]["learningRte"] = 0.1
    with pytest.raises(ValueError, match="learningRte"):
        ToolTuneJob.model_validate(doc)


def test_chart_crd_is_an_identical_copy() -> None:
    source = MANIFESTS / "crds" / "tooltunejobs.tooltune.dev.yaml"
    copy = CHART / "crds" / source.name
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}: cp the manifest into the chart"
    )


def test_kustomization_lists_every_installable_manifest() -> None:
    listed = set(documents(MANIFESTS / "kustomization.yaml")[0]["resources"])
    present = {
        str(p.relative_to(MANIFESTS))
        for p in MANIFESTS.rglob("*.yaml")
        if p.parent.name not in {"examples", "kueue"} and p.name != "kustomization.yaml"
    }  # kueue/: opt-in, applied with the operator's Kueue support switched on
    assert listed == present


def test_operator_cluster_role_holds_exactly_what_the_operator_needs() -> None:
    (role,) = documents(CLUSTER_ROLE)
    granted = grants(role["rules"])
    assert granted == OPERATOR_NEEDS


def test_kueue_role_only_reads_workloads_and_sets_their_active_flag() -> None:
    role, binding = documents(MANIFESTS / "kueue" / "operator-kueue-clusterrole.yaml")
    assert grants(role["rules"]) == {("kueue.x-k8s.io", "workloads"): {"get", "list", "watch", "patch"}}
    (operator_binding,) = documents(MANIFESTS / "rbac" / "operator-clusterrolebinding.yaml")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == operator_binding["subjects"]


def test_operator_holds_everything_the_trainer_role_grants() -> None:
    """Kubernetes refuses to let the operator create a Role granting more than the operator holds."""
    (role,) = documents(CLUSTER_ROLE)
    granted = grants(role["rules"])
    trainer_role = next(o for o in trainer_rbac("ns", Settings()) if o["kind"] == "Role")
    for key, verbs in grants(trainer_role["rules"]).items():
        assert verbs <= granted.get(key, set()), f"trainer Role grants {key} {verbs}; the operator lacks them"


def test_trainer_role_only_reports_progress() -> None:
    trainer_role = next(o for o in trainer_rbac("ns", Settings()) if o["kind"] == "Role")
    allowed = {
        (GROUP, PLURAL): {"get"},
        (GROUP, f"{PLURAL}/status"): {"get", "patch"},
        ("", "events"): {"create"},
        ("events.k8s.io", "events"): {"create"},
    }
    for key, verbs in grants(trainer_role["rules"]).items():
        assert verbs <= allowed.get(key, set()), (
            f"trainer Role grants more than progress reporting: {key} {verbs}"
        )


def test_binding_gives_the_role_to_the_deployment_service_account() -> None:
    (binding,) = documents(MANIFESTS / "rbac" / "operator-clusterrolebinding.yaml")
    (account,) = documents(MANIFESTS / "rbac" / "operator-serviceaccount.yaml")
    (deployment,) = documents(DEPLOYMENT)
    (role,) = documents(CLUSTER_ROLE)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    subject = binding["subjects"][0]
    assert (subject["name"], subject["namespace"]) == (
        account["metadata"]["name"],
        account["metadata"]["namespace"],
    )
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert deployment["metadata"]["namespace"] == account["metadata"]["namespace"]


def operator_pod(deployment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_operator_deployment_meets_the_restricted_pod_security_standard() -> None:
    (deployment,) = documents(DEPLOYMENT)
    pod, container = operator_pod(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["readOnlyRootFilesystem"] is True
    # With a read-only root, the operator image's HOME (/tmp) must be a writable volume.
    assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


def test_operator_deployment_probes_kopf_and_exposes_metrics() -> None:
    (deployment,) = documents(DEPLOYMENT)
    _, container = operator_pod(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    served = urlparse(Settings().liveness_endpoint)
    assert (probe["path"], ports[probe["port"]]) == (served.path, served.port)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert ports["metrics"] == int(env["TOOLTUNE_METRICS_PORT"]) == Settings().metrics_port
    (service,) = documents(MANIFESTS / "operator" / "metrics-service.yaml")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_operator_environment_names_are_the_ones_the_operator_reads() -> None:
    # the storage-limit names are shared with the trainer, in tooltune_api
    sources = ("operator/tooltune_operator", "api/tooltune_api")
    settings_source = "".join((ROOT / part / "settings.py").read_text() for part in sources)
    (deployment,) = documents(DEPLOYMENT)
    _, container = operator_pod(deployment)
    for variable in container["env"]:
        assert f'"{variable["name"]}"' in settings_source, f"the operator never reads {variable['name']}"
    read = {e["name"]: e["value"] for e in container["env"]}
    assert Settings.from_env(read).namespace == ""  # the plain manifests install cluster-wide


def test_namespace_enforces_restricted_pod_security() -> None:
    (namespace,) = documents(MANIFESTS / "namespace.yaml")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# ---------------------------------------------------------------- chart values


# Values whose content is the user's own map (labels, resources, ...): named as a whole, not key by key.
FREE_FORM_VALUES = {
    "resources",
    "labels",
    "annotations",
    "nodeSelector",
    "affinity",
    "podAnnotations",
    "podLabels",
}


def value_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        yield prefix + key
        if isinstance(value, dict) and value and key not in FREE_FORM_VALUES:
            yield from value_paths(value, f"{prefix}{key}.")


def schema_paths(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, node in schema.get("properties", {}).items():
        yield prefix + key
        if node.get("additionalProperties") is False and key not in FREE_FORM_VALUES:
            yield from schema_paths(node, f"{prefix}{key}.")


def test_values_schema_names_every_value_and_no_other() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(value_paths(values)) == set(schema_paths(schema))


def test_values_schema_refuses_unknown_keys_at_every_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def closed(node: dict[str, Any], where: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{where or 'values'} accepts unknown keys"
            for key, child in node["properties"].items():
                closed(child, f"{where}.{key}".lstrip("."))

    closed(schema, "")


def test_every_value_has_a_comment() -> None:
    """A comment on the line above (or at the end of the line) of every value that is not a section."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    named = set(value_paths(yaml.safe_load("\n".join(lines))))
    key_line = re.compile(r"^( *)([A-Za-z_][\w-]*):(.*)$")
    parents: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    uncommented = []
    for number, line in enumerate(lines):
        match = key_line.match(line)
        if not match:
            continue
        indent, key, rest = len(match[1]), match[2], match[3].strip()
        parents = [(i, k) for i, k in parents if i < indent]
        path = ".".join([k for _, k in parents] + [key])
        parents.append((indent, key))
        is_section = rest == ""  # a mapping of further values, each commented itself
        previous = lines[number - 1].strip() if number else ""
        if path in named and not is_section and not previous.startswith("#") and "#" not in rest:
            uncommented.append(f"values.yaml:{number + 1}: {path}")
    assert not uncommented, "values without a comment:\n" + "\n".join(uncommented)


# ---------------------------------------------------------------- install guide


def test_troubleshooting_covers_every_diagnosis_and_failure_reason() -> None:
    from tooltune_api.diagnosis import CONVERGING, PATTERNS
    from tooltune_operator import conditions

    guide = (ROOT / "docs" / "install.md").read_text()
    table = guide.split("## Troubleshooting", 1)[1]
    failure_reasons = [
        conditions.VALIDATION_FAILED,
        conditions.INVALID_DATA,
        conditions.BACKOFF_LIMIT_EXCEEDED,
        conditions.DEADLINE_EXCEEDED,
        conditions.POD_PENDING,
    ]
    for name in [*(p for p in PATTERNS if p != CONVERGING), *failure_reasons]:
        assert re.search(rf"\b{name}\b", table), f"troubleshooting does not mention {name}"


def test_install_guide_names_real_values_and_files() -> None:
    guide = (ROOT / "docs" / "install.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    blocks = [block for block in guide.split("```")[1::2] if "charts/tooltune" in block]
    settings = [setting for block in blocks for setting in re.findall(r"--set ([\w.]+)=", block)]
    assert settings, "the guide shows no chart settings"
    for setting in settings:
        node: Any = values
        for part in setting.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, dict) and not node:  # a free-form map such as labels
                break
            else:
                pytest.fail(f"docs/install.md sets {setting}, which values.yaml does not have")
    for path in re.findall(r"`((?:manifests|charts|tests|scripts)/[\w./-]+)`", guide):
        assert (ROOT / path.rstrip("/")).exists(), f"docs/install.md names {path}, which does not exist"
