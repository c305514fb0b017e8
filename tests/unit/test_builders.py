"""The operator's child objects, compared with golden YAML files beside this test.

Regenerate after an intended change with: UPDATE_GOLDEN=1 pytest tests/unit/test_builders.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from tooltune_api import ANNOTATION_JOB_NAME, LABEL_JOB
from tooltune_api.models import TrainerContract, parse_spec
from tooltune_operator import builders
from tooltune_operator.settings import Settings
from tooltune_trainer.storage import StorageLimits

from tests.harness.emulator import select_job_pods
from tests.harness.validation import invalid_message, name_problems, object_problems

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings(trainer_image="registry.example/tooltune/trainer:1.2.3")


def resource(spec: dict[str, Any], name: str = "task-api-tools") -> dict[str, Any]:
    return {
        "apiVersion": "tooltune.dev/v1alpha1",
        "kind": "ToolTuneJob",
        "metadata": {"name": name, "namespace": "ml", "uid": "0b6f6d6e-1111-2222-3333-444455556666"},
        "spec": spec,
    }


GPU_JOB = {
    "baseModel": "unsloth/llama-3-8b-Instruct-bnb-4bit",
    "dataset": {"train": "s3://datasets/task_api_tool_calling.jsonl", "validationSplit": 0.1},
    "output": {"uri": "s3://models/task-api-tools/"},
    "storage": {"endpoint": "http://seaweedfs.storage:8333", "credentialsSecret": "s3-credentials"},
    "resources": {
        "gpus": 2,
        "cpu": "8",
        "memory": "64Gi",
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "training",
    },
    "backoffLimit": 4,
    "activeDeadlineSeconds": 86400,
    "ttlSecondsAfterFinished": 3600,
}
QUEUED_JOB = {**GPU_JOB, "queueName": "team-a", "workloadPriorityClassName": "low"}
OPENAI_JOB = {
    "backend": "openai",
    "baseModel": "gpt-4o-mini-2024-07-18",
    "dataset": {"train": "configmap://task-api-data/train.jsonl"},
    "output": {"uri": "s3://models/task-api-openai/"},
    "openai": {"model": "gpt-4o-mini-2024-07-18", "apiKeySecret": {"name": "openai"}, "suffix": "task-api"},
}


GROUP_JOB = {**GPU_JOB, "resources": {**GPU_JOB["resources"], "gpus": 4, "nodes": 2}}


def created(obj: dict[str, Any]) -> dict[str, Any]:
    """obj as the API answers its create: with a uid."""
    return {**obj, "metadata": {**obj["metadata"], "uid": "9d3c1e2a-aaaa-bbbb-cccc-ddddeeeeffff"}}


CASES = {
    "gpu-job": (GPU_JOB, lambda r, s: builders.training_job(r, s, 1, SETTINGS)),
    "gpu-configmap": (
        GPU_JOB,
        lambda r, s: builders.contract_configmap(r, s, 1, SETTINGS),
    ),
    "openai-job": (OPENAI_JOB, lambda r, s: builders.training_job(r, s, 2, SETTINGS)),
    "queued-job": (QUEUED_JOB, lambda r, s: builders.training_job(r, s, 1, SETTINGS)),
    "openai-remote-cancel-job": (
        OPENAI_JOB,
        lambda r, s: builders.remote_cancel_job(r, s, 2, "ftjob-abc123", "deleted", SETTINGS),
    ),
    "group-job": (GROUP_JOB, lambda r, s: builders.training_job(r, s, 3, SETTINGS, group_restarts=1)),
    "group-service": (GROUP_JOB, lambda r, s: builders.group_service(r, s, 3)),
}


def check_golden(name: str, produced: Any) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump(produced, sort_keys=True, width=110)
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1"
    assert yaml.safe_load(path.read_text()) == produced


@pytest.mark.parametrize("name", sorted(CASES))
def test_children_match_golden_files(name: str) -> None:
    spec_dict, build = CASES[name]
    body = resource(spec_dict)
    check_golden(name, build(body, parse_spec(spec_dict)))


def test_trainer_rbac_matches_golden_file() -> None:
    check_golden("trainer-rbac", builders.trainer_rbac("ml", SETTINGS))


def test_a_queued_job_is_labelled_for_kueue_and_created_suspended() -> None:
    queued = builders.training_job(resource(QUEUED_JOB), parse_spec(QUEUED_JOB), 1, SETTINGS)
    assert queued["spec"]["suspend"] is True
    assert {k: v for k, v in queued["metadata"]["labels"].items() if k.startswith("kueue.x-k8s.io/")} == {
        "kueue.x-k8s.io/queue-name": "team-a",
        "kueue.x-k8s.io/priority-class": "low",
    }
    assert not any(k.startswith("kueue") for k in queued["spec"]["template"]["metadata"]["labels"])
    # The Job's controller is the ToolTuneJob, a kind Kueue does not manage: Kueue admits the Job itself.
    (owner,) = queued["metadata"]["ownerReferences"]
    assert (owner["apiVersion"], owner["kind"], owner["controller"]) == (
        "tooltune.dev/v1alpha1",
        "ToolTuneJob",
        True,
    )
    # No queue anywhere: no Kueue label, and not suspended.
    plain = builders.training_job(resource(GPU_JOB), parse_spec(GPU_JOB), 1, SETTINGS)
    assert plain["spec"]["suspend"] is False and not any(
        k.startswith("kueue") for k in plain["metadata"]["labels"]
    )


def test_the_operators_default_queue_and_priority_apply_to_jobs_that_name_none() -> None:
    defaults = Settings(
        kueue_enabled=True, kueue_default_queue="shared", kueue_default_priority_class="batch"
    )
    job = builders.training_job(resource(GPU_JOB), parse_spec(GPU_JOB), 1, defaults)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "shared"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "batch"
    own = builders.training_job(resource(QUEUED_JOB), parse_spec(QUEUED_JOB), 1, defaults)
    assert own["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"  # the job's own wins


@pytest.mark.parametrize("queue", ["Team_A", "a" * 64, "-lead"])
def test_a_queue_name_that_cannot_be_a_label_value_is_refused_naming_the_field(queue: str) -> None:
    with pytest.raises(ValueError, match="queueName"):
        parse_spec({**GPU_JOB, "queueName": queue})


def test_credentials_are_referenced_never_inlined() -> None:
    job = builders.training_job(resource(GPU_JOB), parse_spec(GPU_JOB), 1, SETTINGS)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}},
    }
    assert all("value" not in e for e in env.values() if e["name"].startswith("AWS_"))


def test_each_reference_key_comes_from_its_secret_by_reference() -> None:
    references = [
        {"name": "ft", "model": "ft:gpt-4o-mini-2024-07-18:acme::x1", "baseUrl": "https://api.openai.com/v1",
         "apiKeySecret": {"name": "openai", "key": "OPENAI_API_KEY"}},
        {"name": "vllm", "model": "qwen", "baseUrl": "http://vllm.serving:8000/v1"},  # a server without keys
        {"name": "other", "model": "m", "baseUrl": "https://llm.example/v1", "apiKeySecret": {"name": "llm"}},
    ]  # fmt: skip
    spec = {**GPU_JOB, "evaluation": {"references": references}}
    job = builders.training_job(resource(spec), parse_spec(spec), 1, SETTINGS)
    env = [e for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if "REFERENCE" in e["name"]]
    assert env == [
        {"name": "TOOLTUNE_REFERENCE_0_API_KEY",
         "valueFrom": {"secretKeyRef": {"name": "openai", "key": "OPENAI_API_KEY"}}},
        {"name": "TOOLTUNE_REFERENCE_2_API_KEY",
         "valueFrom": {"secretKeyRef": {"name": "llm", "key": "OPENAI_API_KEY"}}},
    ]  # fmt: skip


def test_invalid_data_fails_the_job_at_once_and_disruptions_do_not_count() -> None:
    job = builders.training_job(resource(GPU_JOB), parse_spec(GPU_JOB), 1, SETTINGS)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]},
    }
    assert rules[1]["action"] == "Ignore"
    assert rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_a_group_is_an_indexed_job_whose_first_failure_or_disruption_fails_it_whole() -> None:
    job = builders.training_job(resource(GROUP_JOB), parse_spec(GROUP_JOB), 3, SETTINGS, group_restarts=1)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 0  # retries are the operator's group restarts, counted per group
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[builders.INVALID_RULE]["onExitCodes"]["values"] == [2]
    assert rules[builders.DISRUPTION_RULE] == {
        "action": "FailJob",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert job["metadata"]["annotations"]["tooltune.dev/group-restarts"] == "1"
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "task-api-tools-3"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert {name: env[name].get("value") for name in env if name.startswith("PET_")} == {
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "4",
        "PET_NODE_RANK": None,
        "PET_MASTER_ADDR": "task-api-tools-3-0.task-api-tools-3",  # index 0's hostname.subdomain
        "PET_MASTER_PORT": "29400",
    }
    assert env["PET_NODE_RANK"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"  # per node


def test_a_group_service_is_headless_selects_the_jobs_pods_and_goes_with_the_job() -> None:
    body, spec = resource(GROUP_JOB), parse_spec(GROUP_JOB)
    job = created(builders.training_job(body, spec, 1, SETTINGS))
    service = builders.group_service(body, spec, 1)
    assert service["metadata"]["name"] == job["spec"]["template"]["spec"]["subdomain"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    select_job_pods(job)  # the labels the API server gives the Job's pods
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [o["kind"] for o in service["metadata"]["ownerReferences"]] == ["ToolTuneJob"]  # until handed over
    assert [o["uid"] for o in builders.owned_by(job)["metadata"]["ownerReferences"]] == [
        job["metadata"]["uid"]
    ]


def test_one_node_keeps_a_plain_job_without_group_variables() -> None:
    job = builders.training_job(resource(GPU_JOB), parse_spec(GPU_JOB), 1, SETTINGS)
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PET_NNODES"] == "1" and not {"PET_NODE_RANK", "PET_MASTER_ADDR"} & set(env)


def test_each_variable_is_set_once_on_a_group_of_several_gpus() -> None:
    job = builders.training_job(resource(GROUP_JOB), parse_spec(GROUP_JOB), 1, SETTINGS)
    names = [e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert len(names) == len(set(names)), names


def test_gpus_are_requested_and_limited_under_the_configured_resource_name() -> None:
    spec = {**GPU_JOB, "resources": {"gpus": 1, "gpuResourceName": "amd.com/gpu"}}
    job = builders.training_job(resource(spec), parse_spec(spec), 1, SETTINGS)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"amd.com/gpu": "1"}, "limits": {"amd.com/gpu": "1"}}


@pytest.mark.parametrize(("gpus", "expected"), [
    (4, {"PET_NNODES": "1", "PET_NPROC_PER_NODE": "4"}),
    (1, {}),
    (0, {}),
])  # fmt: skip
def test_several_gpus_ask_for_one_process_per_gpu_in_kubeflow_trainers_variables(
    gpus: int, expected: dict[str, str]
) -> None:
    spec = {**GPU_JOB, "resources": {"gpus": gpus}}
    job = builders.training_job(resource(spec), parse_spec(spec), 1, SETTINGS)
    env = {
        item["name"]: item.get("value") for item in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert {name: value for name, value in env.items() if name.startswith("PET_")} == expected
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["tooltune", "train"]


def test_cpu_only_job_asks_for_no_gpu_and_no_shared_memory_volume() -> None:
    spec = {**GPU_JOB, "resources": {"gpus": 0}}
    job = builders.training_job(resource(spec), parse_spec(spec), 1, SETTINGS)
    pod = job["spec"]["template"]["spec"]
    assert "resources" not in pod["containers"][0]
    assert "dshm" not in {v["name"] for v in pod["volumes"]}


def test_contract_round_trips_through_the_configmap() -> None:
    body = resource(GPU_JOB)
    configmap = builders.contract_configmap(body, parse_spec(GPU_JOB), 3, SETTINGS)
    contract = TrainerContract.model_validate(json.loads(configmap["data"]["contract.json"]))
    assert (contract.job.name, contract.job.namespace, contract.job.attempt) == ("task-api-tools", "ml", 3)
    assert contract.spec == parse_spec(GPU_JOB)
    assert contract.image == SETTINGS.trainer_image


def test_names_are_deterministic_per_attempt_and_fit_in_a_label() -> None:
    assert builders.child_name("task-api-tools", 2) == "task-api-tools-2"
    long = "x" * 80
    assert builders.child_name(long, 12) == builders.child_name(long, 12)
    assert len(builders.child_name(long, 12, "-contract")) <= 63
    assert builders.child_name(long, 1) != builders.child_name("y" * 80, 1)


def test_configmap_datasets_are_mounted_where_the_trainer_reads_them() -> None:
    job = builders.training_job(resource(OPENAI_JOB), parse_spec(OPENAI_JOB), 1, SETTINGS)
    pod = job["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/etc/tooltune/data/task-api-data"] == "data-0"
    assert {"name": "data-0", "configMap": {"name": "task-api-data"}} in pod["volumes"]
    assert pod["containers"][0]["command"] == ["tooltune", "submit"]


def test_storage_limits_reach_every_trainer_pod_as_the_trainer_reads_them() -> None:
    settings = Settings.from_env(
        {
            "TOOLTUNE_STORAGE_CONNECT_TIMEOUT_SECONDS": "2.5",
            "TOOLTUNE_STORAGE_READ_TIMEOUT_SECONDS": "120",
            "TOOLTUNE_DATASET_MAX_BYTES": "1073741824",
        }
    )
    for spec in (GPU_JOB, OPENAI_JOB):
        job = builders.training_job(resource(spec), parse_spec(spec), 1, settings)
        env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        pod_env = {e["name"]: e["value"] for e in env if "value" in e}
        assert StorageLimits.from_env(pod_env) == StorageLimits(
            connect_timeout_seconds=2.5, read_timeout_seconds=120, dataset_max_bytes=1073741824
        )
    defaults = builders.training_job(resource(GPU_JOB), parse_spec(GPU_JOB), 1, Settings())
    pod_env = {
        e["name"]: e.get("value") for e in defaults["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert StorageLimits.from_env(pod_env) == StorageLimits(), "the operator's defaults are the trainer's"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOOLTUNE_STORAGE_CONNECT_TIMEOUT_SECONDS", "ten"),
        ("TOOLTUNE_STORAGE_READ_TIMEOUT_SECONDS", "-5"),
        ("TOOLTUNE_DATASET_MAX_BYTES", "4G"),
    ],
)
def test_a_bad_storage_limit_stops_the_operator_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(
        ValueError, match=rf"^{name}='{value}': must be a positive .*; unset it for the default"
    ):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    "name",
    [
        "a" * 253,  # the longest name Kubernetes accepts for a ToolTuneJob
        "team.fine-tunes." + "b" * 60,  # dots where a shortened name is cut
        "x" * 62 + "-",
    ],
)
def test_any_name_kubernetes_accepts_gives_children_a_real_api_server_accepts(name: str) -> None:

    name = name.rstrip("-.") or "a"
    assert not name_problems(name)
    body = resource(GPU_JOB, name=name)
    spec = parse_spec(GPU_JOB)
    job = created(builders.training_job(body, spec, 12, SETTINGS))
    configmap = builders.contract_configmap(body, spec, 12, SETTINGS)

    select_job_pods(job)  # what the API server adds: the Job's name as a pod template label
    for child in (job, configmap, *builders.trainer_rbac("ml", SETTINGS)):
        assert object_problems(child) == [], child["metadata"]["name"]
    for child in (job, configmap):
        assert child["metadata"]["labels"][LABEL_JOB] == builders.job_label(name)
        assert child["metadata"]["annotations"][ANNOTATION_JOB_NAME] == name
    assert builders.job_label(name) == builders.job_label(name) and len(builders.job_label(name)) <= 63


def test_the_api_stand_in_refuses_a_label_longer_than_63_bytes() -> None:

    job = created(builders.training_job(resource(GPU_JOB), parse_spec(GPU_JOB), 1, SETTINGS))
    job["metadata"]["labels"]["tooltune.dev/job"] = "j" * 64
    problems = object_problems(job)
    assert invalid_message(job, problems) == (
        f'Job.batch "task-api-tools-1" is invalid: metadata.labels: Invalid value: "{"j" * 64}": '
        "must be no more than 63 bytes"
    )
