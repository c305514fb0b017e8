"""Pure builders of the objects a ToolTuneJob owns: plain dicts, golden-file tested.

Per attempt N the operator creates a ConfigMap ``<job>-<N>-contract`` carrying the operator↔trainer
contract and a batch/v1 Job ``<job>-<N>`` whose pod runs ``tooltune train`` (or ``tooltune submit``
for the OpenAI backend); with a Kueue queue the Job carries Kueue's labels and starts suspended
(``kueue``). To cancel a remote OpenAI job, a Job ``<job>-<N>-cancel-<hash of the remote id>`` whose pod
runs ``tooltune cancel-remote`` with the key from the job's Secret. Per namespace it creates the trainer's
ServiceAccount, Role and RoleBinding.

With ``resources.nodes: M > 1`` the Job is an Indexed Job of M pods (completions = parallelism = M) and
a headless Service ``<job>-<N>`` (created before the Job, then owned by it) gives pod ``<job>-<N>-0`` the
DNS name rank 0 is reached at. Each pod gets the variables Kubeflow Trainer sets (PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK from the completion index, PET_MASTER_ADDR, PET_MASTER_PORT), which
torchrun reads, so the same image runs under Kubeflow Trainer too. The group lives and dies as one, as a
JobSet's replicated Job does: backoffLimit 0 and FailJob on a disruption fail the whole Job at its first
pod failure (the Job controller then stops the other pods), and the operator starts the next attempt from
the newest checkpoint (``status.group_restart``), counting the failure against ``spec.backoffLimit``
unless it was a disruption.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlparse

from tooltune_api import (
    ANNOTATION_GENERATION,
    ANNOTATION_GROUP_RESTARTS,
    ANNOTATION_JOB_NAME,
    API_VERSION,
    CONTRACT_ENV,
    CONTRACT_PATH,
    EXIT_INVALID,
    GROUP,
    KIND,
    LABEL_ATTEMPT,
    LABEL_COMPONENT,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    PLURAL,
    POD_WORKDIR,
    TERMINATION_LOG_PATH,
    WORKDIR_ENV,
    reference_key_env,
)
from tooltune_api.models import Backend, JobRef, ToolTuneJobSpec, TrainerContract

from tooltune_operator import kueue
from tooltune_operator.settings import Settings

CONTAINER = "trainer"
CONTRACT_KEY = "contract.json"
CONTRACT_DIR = CONTRACT_PATH.rsplit("/", 1)[0]
DATA_DIR = "/etc/tooltune/data"  # configmap://<name>/<key> datasets are mounted at DATA_DIR/<name>/<key>
WORKDIR = POD_WORKDIR
MAX_NAME = 63  # Job names end up in a label value
# SIGTERM → SIGKILL: the trainer checkpoints the step it is on and uploads it in this time (spot nodes give
# 30 s to 2 min; a node drain waits for it).
TERMINATION_GRACE_SECONDS = 120
MASTER_PORT = 29400  # rank 0's rendezvous port, Kubeflow Trainer's
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # the Job controller's annotation on each pod
# podFailurePolicy rules by index: the Job's failure message names the index of the rule that matched.
INVALID_RULE, DISRUPTION_RULE = 0, 1


def child_name(name: str, attempt: int, suffix: str = "") -> str:
    """``<name>-<attempt><suffix>``, shortened with a stable hash when it would exceed 63 characters."""
    return fitted(name, f"-{attempt}{suffix}")


def job_label(name: str) -> str:
    """The ToolTuneJob's name as the value of LABEL_JOB: itself, or shortened with a stable hash when it is
    longer than a label value may be (ANNOTATION_JOB_NAME keeps the whole name)."""
    return fitted(name)


def fitted(name: str, tail: str = "") -> str:
    if len(name) + len(tail) <= MAX_NAME:
        return name + tail
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - len(tail) - 9].rstrip('-.')}-{digest}{tail}"


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(name: str, attempt: int, component: str) -> dict[str, str]:
    return {
        LABEL_JOB: job_label(name),
        LABEL_ATTEMPT: str(attempt),
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: "tooltune",
        "app.kubernetes.io/name": "tooltune",
    }


def component(spec: ToolTuneJobSpec) -> str:
    return "submitter" if spec.backend == Backend.OPENAI else "trainer"


def contract(
    body: dict[str, Any], spec: ToolTuneJobSpec, attempt: int, settings: Settings
) -> TrainerContract:
    meta = body["metadata"]
    return TrainerContract(
        job=JobRef(namespace=meta["namespace"], name=meta["name"], uid=meta.get("uid", ""), attempt=attempt),
        spec=spec,
        metrics_port=settings.trainer_metrics_port,
        progress_interval_seconds=settings.progress_interval_seconds,
        image=spec.image or settings.trainer_image,
        prices=settings.prices,
    )


def contract_configmap(
    body: dict[str, Any], spec: ToolTuneJobSpec, attempt: int, settings: Settings
) -> dict[str, Any]:
    """The attempt's contract. Created before its Job (whose pod mounts it) and owned by the ToolTuneJob
    until the Job exists; then handed to the Job (owned_by), so that both go when the Job's TTL expires."""
    name = body["metadata"]["name"]
    document = contract(body, spec, attempt, settings).dump()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": child_name(name, attempt, "-contract"),
            "namespace": body["metadata"]["namespace"],
            "labels": labels(name, attempt, component(spec)),
            "annotations": {ANNOTATION_JOB_NAME: name},
            "ownerReferences": [owner_reference(body)],
        },
        "data": {CONTRACT_KEY: json.dumps(document, indent=2, sort_keys=True)},
    }


def configmap_sources(spec: ToolTuneJobSpec) -> list[str]:
    """Names of ConfigMaps that hold datasets (configmap://<name>/<key>)."""
    uris = [spec.dataset.train, spec.dataset.validation or ""]
    return sorted({urlparse(u).netloc for u in uris if u.startswith("configmap://")})


def secret_env(variable: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def group_environment(spec: ToolTuneJobSpec, job_name: str) -> list[dict[str, Any]]:
    """What Kubeflow Trainer sets for torchrun on each node of a group: torchrun reads PET_<OPTION>."""
    index = {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}
    return [
        {"name": "PET_NNODES", "value": str(spec.resources.nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(max(spec.resources.gpus, 1))},
        {"name": "PET_NODE_RANK", "valueFrom": index},
        {"name": "PET_MASTER_ADDR", "value": f"{job_name}-0.{job_name}"},  # pod hostname.subdomain
        {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)},
    ]


def environment(spec: ToolTuneJobSpec, settings: Settings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": CONTRACT_ENV, "value": CONTRACT_PATH},
        {"name": WORKDIR_ENV, "value": WORKDIR},
        {"name": "HF_HOME", "value": f"{WORKDIR}/hf"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        {"name": "TOOLTUNE_CONFIGMAP_DIR", "value": DATA_DIR},
    ]
    env += [{"name": name, "value": value} for name, value in settings.trainer_storage_env().items()]
    if spec.storage.credentials_secret:  # credentials by reference only: never inlined in the Job
        env += [
            secret_env("AWS_ACCESS_KEY_ID", spec.storage.credentials_secret, "AWS_ACCESS_KEY_ID"),
            secret_env("AWS_SECRET_ACCESS_KEY", spec.storage.credentials_secret, "AWS_SECRET_ACCESS_KEY"),
        ]
    if spec.backend == Backend.UNSLOTH and spec.resources.gpus > 1 and spec.resources.nodes == 1:
        env += distributed_env(spec.resources.gpus)  # a group's: group_environment
    if spec.openai is not None:
        env.append(
            secret_env("OPENAI_API_KEY", spec.openai.api_key_secret.name, spec.openai.api_key_secret.key)
        )
    for index, reference in enumerate(spec.evaluation.references):  # keys by reference, as the one above
        if reference.api_key_secret is not None:
            secret = reference.api_key_secret
            env.append(secret_env(reference_key_env(index), secret.name, secret.key))
    return env


def distributed_env(gpus: int) -> list[dict[str, Any]]:
    """One process per GPU, in the variables Kubeflow Trainer sets and torchrun reads: with them `tooltune
    train` starts torchrun (tooltune_trainer.launcher). One node: torchrun's own rendezvous on loopback."""
    return [{"name": "PET_NNODES", "value": "1"}, {"name": "PET_NPROC_PER_NODE", "value": str(gpus)}]


def resources(spec: ToolTuneJobSpec) -> dict[str, Any]:
    wanted: dict[str, str] = {}
    if spec.resources.cpu:
        wanted["cpu"] = spec.resources.cpu
    if spec.resources.memory:
        wanted["memory"] = spec.resources.memory
    limits = dict(wanted)
    if spec.backend == Backend.UNSLOTH and spec.resources.gpus:
        limits[spec.resources.gpu_resource_name] = str(spec.resources.gpus)
    return {"requests": {**wanted, **limits}, "limits": limits} if limits else {}


def volumes(spec: ToolTuneJobSpec, contract_name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    vols: list[dict[str, Any]] = [
        {"name": "contract", "configMap": {"name": contract_name}},
        {"name": "work", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "contract", "mountPath": CONTRACT_DIR, "readOnly": True},
        {"name": "work", "mountPath": WORKDIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    for index, source in enumerate(configmap_sources(spec)):
        vols.append({"name": f"data-{index}", "configMap": {"name": source}})
        mounts.append({"name": f"data-{index}", "mountPath": f"{DATA_DIR}/{source}", "readOnly": True})
    if spec.backend == Backend.UNSLOTH and spec.resources.gpus:  # PyTorch data loaders need a real /dev/shm
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return vols, mounts


def training_job(
    body: dict[str, Any], spec: ToolTuneJobSpec, attempt: int, settings: Settings, group_restarts: int = 0
) -> dict[str, Any]:
    """The attempt's Job; with resources.nodes > 1 an Indexed Job of that many pods whose failure is the
    group's (group_restarts: the counted restarts before this attempt, kept on the Job)."""
    name = body["metadata"]["name"]
    namespace = body["metadata"]["namespace"]
    job_name = child_name(name, attempt)
    grouped = spec.resources.nodes > 1
    job_labels = labels(name, attempt, component(spec))
    vols, mounts = volumes(spec, child_name(name, attempt, "-contract"))
    command = ["tooltune", "submit" if spec.backend == Backend.OPENAI else "train"]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": environment(spec, settings) + (group_environment(spec, job_name) if grouped else []),
        "ports": [{"name": "metrics", "containerPort": settings.trainer_metrics_port, "protocol": "TCP"}],
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container(),
    }
    if resources(spec):
        container["resources"] = resources(spec)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # retries are the Job's, so podFailurePolicy can see every exit code
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "serviceAccountName": settings.trainer_service_account,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": vols,
    }
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    if spec.resources.tolerations:
        pod_spec["tolerations"] = [t.dump() for t in spec.resources.tolerations]
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    queued = kueue.job_labels(spec, settings.kueue_default_queue, settings.kueue_default_priority_class)
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        # Queued: created suspended, as Kueue's webhook would make it; Kueue unsuspends it on admission.
        "suspend": spec.suspend or bool(queued),
        # A replacement starts only once the old pod has ended: never two trainers writing one output.
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {
            "rules": [
                # Invalid data or config: retrying cannot help, so fail the Job at once.
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INVALID]},
                },
                # Evictions, preemption and node drains are not the trainer's fault: retry, uncounted. A
                # group cannot replace one pod under running peers: the whole Job fails and the operator
                # restarts the group, uncounted (a JobSet's RestartJobSetAndIgnoreMaxRestarts).
                {
                    "action": "FailJob" if grouped else "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
            ]
        },
        "template": {
            "metadata": {"labels": dict(job_labels), "annotations": {ANNOTATION_JOB_NAME: name}},
            "spec": pod_spec,
        },
    }
    generation = str(body["metadata"].get("generation", 1))
    annotations = {ANNOTATION_GENERATION: generation, ANNOTATION_JOB_NAME: name}
    if grouped:
        nodes = spec.resources.nodes
        # Any counted pod failure fails the group's Job: its retries are the operator's group restarts.
        job_spec.update(backoffLimit=0, completionMode="Indexed", completions=nodes, parallelism=nodes)
        pod_spec["subdomain"] = job_name  # the headless Service: <job>-<index>.<job> resolves
        annotations[ANNOTATION_GROUP_RESTARTS] = str(group_restarts)
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name,
            "namespace": namespace,
            "labels": {**job_labels, **queued},
            "annotations": annotations,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": job_spec,
    }


def restricted_container() -> dict[str, Any]:
    """The container securityContext every tooltune pod runs with (Pod Security "restricted")."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def remote_cancel_job(
    body: dict[str, Any], spec: ToolTuneJobSpec, attempt: int, remote_id: str, why: str, settings: Settings
) -> dict[str, Any]:
    """A Job whose pod cancels the remote OpenAI job remote_id with the key from spec.openai.apiKeySecret
    (secretKeyRef: the operator never reads the Secret) and posts the outcome as an Event on the ToolTuneJob.
    Not labelled managed-by: it is not a training attempt, and stays out of the operator's indexes."""
    assert spec.openai is not None
    meta = body["metadata"]
    secret = spec.openai.api_key_secret
    digest = hashlib.sha256(remote_id.encode()).hexdigest()[:8]
    command = ["tooltune", "cancel-remote", remote_id, "--why", why]
    command += ["--tooltunejob", f"{meta['namespace']}/{meta['name']}", "--uid", meta.get("uid", "")]
    command += ["--secret", f"{secret.name}/{secret.key}"]
    if spec.openai.base_url:
        command += ["--base-url", spec.openai.base_url]
    job_labels = {
        LABEL_JOB: job_label(meta["name"]),
        LABEL_ATTEMPT: str(attempt),
        LABEL_COMPONENT: "remote-cancel",
        "app.kubernetes.io/name": "tooltune",
    }
    container = {
        "name": "remote-cancel",
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": [secret_env("OPENAI_API_KEY", secret.name, secret.key)],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
        "terminationMessagePath": TERMINATION_LOG_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_container(),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": child_name(meta["name"], attempt, f"-cancel-{digest}"),
            "namespace": meta["namespace"],
            "labels": job_labels,
            "annotations": {ANNOTATION_JOB_NAME: meta["name"]},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "backoffLimit": 3,  # 429s and outages: the client's own retries, then the Job's
            # the operator holds a deletion until this Job ends: a pod that cannot start must not hold it long
            "activeDeadlineSeconds": settings.remote_cancel_seconds,
            "ttlSecondsAfterFinished": 3600,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "remote-cancel",
                            "operator": "In",
                            "values": [EXIT_INVALID],
                        },
                    }
                ]
            },
            "template": {
                "metadata": {"labels": dict(job_labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": settings.trainer_service_account,  # its Role: Events, nothing more
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": settings.run_as_user,
                        "runAsGroup": settings.run_as_user,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                },
            },
        },
    }


def group_service(body: dict[str, Any], spec: ToolTuneJobSpec, attempt: int) -> dict[str, Any]:
    """The headless Service that gives a group's pods their DNS names (<job>-<index>.<job>). Created before
    the Job, so that the names resolve when its pods start, and handed over to it (owned_by) as the contract
    ConfigMap is. publishNotReadyAddresses: ranks look each other up before any of them is Ready."""
    name = body["metadata"]["name"]
    job_name = child_name(name, attempt)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": job_name,
            "namespace": body["metadata"]["namespace"],
            "labels": labels(name, attempt, component(spec)),
            "annotations": {ANNOTATION_JOB_NAME: name},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": {"batch.kubernetes.io/job-name": job_name},
            "publishNotReadyAddresses": True,
        },
    }


def owned_by(job: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that hands the contract ConfigMap (and a group's Service) over to its Job."""
    meta = job["metadata"]
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}
    return {"metadata": {"ownerReferences": [{**owner, "blockOwnerDeletion": True}]}}


def trainer_rbac(namespace: str, settings: Settings) -> list[dict[str, Any]]:
    """What a trainer pod may do: read its ToolTuneJob, patch its status, post Events. Nothing else."""
    name = settings.trainer_service_account
    meta = {"name": name, "namespace": namespace, "labels": {LABEL_MANAGED_BY: "tooltune"}}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": dict(meta),
            "rules": [
                {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get"]},
                {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "patch"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": dict(meta),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]
