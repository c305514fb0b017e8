"""A test kubelet, Job controller and garbage collector for the emulated cluster.

It plays the controllers the emulator lacks, on the emulator's event loop, reading and writing the store
directly:

- Job controller: one pod at a time per batch/v1 Job (parallelism and completions of 1), named
  ``<job>-<5 random characters>``, owned by the Job, labelled with the template's labels plus
  ``job-name``/``batch.kubernetes.io/job-name`` and the controller uid. An Indexed Job
  (``completionMode: Indexed``) runs one pod per index not yet completed, up to ``parallelism``, made as the
  real controller makes them: named ``<job>-<index>-<suffix>``, the index in the
  ``batch.kubernetes.io/job-completion-index`` annotation and label and in ``JOB_COMPLETION_INDEX``,
  ``hostname`` ``<job>-<index>`` (the template's ``subdomain`` kept); ``completedIndexes`` in its status.
  A decided Job gets ``FailureTarget`` (or ``SuccessCriteriaMet``) at once, its pods are stopped, and
  ``Failed`` (or ``Complete``) with the same reason only once no pod process of it still runs.
  Honours ``backoffLimit``,
  ``podFailurePolicy`` (``FailJob``/``Ignore``/``Count`` on exit codes and on pod conditions),
  ``activeDeadlineSeconds``, ``suspend`` (pods are deleted; resuming starts a new pod),
  ``ttlSecondsAfterFinished`` and ``podReplacementPolicy: Failed`` (the default with a podFailurePolicy: no
  new pod while a deleted one's process still runs; with ``TerminatingOrFailed`` the replacement starts at
  once). Conditions are
  the API's: ``FailureTarget`` then ``Failed`` (reasons ``BackoffLimitExceeded``, ``PodFailurePolicy``,
  ``DeadlineExceeded``), ``SuccessCriteriaMet`` then ``Complete`` (each terminal one once the pods have
  stopped), ``Suspended``. Retries start at once
  (the real controller backs off from 10 s).
- Kubelet: runs the first container of each pod as a local process: ``command`` + ``args`` (``$(VAR)``
  expanded from the container's env), the image is ignored. Env: plain values, ``valueFrom``
  ``secretKeyRef``/``configMapKeyRef``/``fieldRef`` and ``envFrom``; a missing Secret/ConfigMap/key keeps
  the pod Pending with reason ``CreateContainerConfigError`` until it appears. Volumes: ConfigMap and
  Secret volumes are written into ``<pod dir>/volumes/<volume>``, emptyDir volumes are empty directories
  there, persistentVolumeClaim volumes are ``<root>/pvc/<namespace>/<claim>`` (shared by the pods that
  mount the claim, so data survives a retry). **Mount paths are rewritten**: every occurrence of a
  ``mountPath`` (and of ``terminationMessagePath``) in command, args, env values and workingDir is
  replaced by the local directory (file), because a local process cannot see ``/etc/...``.
  **Cluster DNS**: a pod's name under a headless Service of its namespace (``<hostname>.<service>``, short
  or with ``.<namespace>.svc.cluster.local``) in env values, command and args becomes ``127.0.0.1``, where
  every pod process listens; a name under a Service that does not exist stays as it is (unresolvable).
  ``TOOLTUNE_TERMINATION_LOG`` is the local termination-message file, ``KUBECONFIG`` points at the
  emulator with the token of the pod's ServiceAccount (its requests get that account's RBAC, as a real
  pod's mounted token does: the trainer's Role, or nothing for ``default``), ``HOSTNAME`` is the pod's
  ``hostname`` or its name, ``TMPDIR`` the local directory of a volume mounted at ``/tmp`` (if any);
  ``python``/``python3``/``tooltune`` run with this interpreter (`DEFAULT_EXECUTABLES`);
  stdout and stderr go to ``<pod dir>/container.log`` and are kept. An argv[0] in ``scripts`` runs in the
  kubelet's own process instead, as a coroutine on its loop (`Script`, given argv and the env the process
  would get; its return value is the exit code, a signal cancels it): a benchmark's thousand pods then cost
  no interpreter each.
  Pod status: Pending → Running → Succeeded/Failed with ``containerStatuses[0].state.terminated``
  (``exitCode``, ``reason`` Completed/Error/OOMKilled, ``message`` from the termination file, or the log
  tail with ``FallbackToLogsOnError``), ``startTime``, conditions. A deleted pod's process gets SIGTERM,
  then SIGKILL after its grace period (capped at ``max_grace_seconds``, default `MAX_GRACE_SECONDS`).
  ``node`` (a `Node`) is the one node's allocatable resources, labels and taints; by default one GPU node
  as a GPU node pool makes it (`DEFAULT_ALLOCATABLE`: 8 CPUs, 32Gi, 1 ``nvidia.com/gpu``, 110 pods, no
  taints). A pod whose requests (or limits) do not fit beside the running pods', or that a taint or its
  nodeSelector keeps off the node, stays Pending with ``PodScheduled=False``/``Unschedulable`` and the
  scheduler's ``FailedScheduling`` Event (``0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1
  nodes are available: 1 No preemption victims found for incoming pod.``) until it fits; ``capacity``
  (optional) further caps how many pod processes run at once (``Too many pods``). `evict_pod` is the
  Eviction API: the pod gets the ``DisruptionTarget`` condition, then a graceful deletion (SIGTERM
  first), and its Job counts it Failed with that condition once the process has ended (the real
  controller's tracking finalizer lets it); `evict_for_node_pressure` is the kubelet's own eviction
  (phase Failed, reason ``Evicted``, an ``Evicted`` Event); `oom_kill` ends the process as the OOM killer
  does (``OOMKilled``, exit code 137).
  Failures to start are reported as a real kubelet reports them (its messages, checked against
  kubelet output): a missing ConfigMap or Secret volume leaves the container waiting in
  ``ContainerCreating`` with **no** message and posts ``FailedMount`` Events (``MountVolume.SetUp failed
  for volume "x" : configmap "y" not found``); a missing Secret or key in env is
  ``CreateContainerConfigError`` (``secret "y" not found``) with a ``Failed`` Event (``Error: secret "y"
  not found``); an image in ``unpullable_images`` is ``ErrImagePull`` then ``ImagePullBackOff``, with
  ``Failed``/``BackOff`` Events. Events go to the emulator, involving the pod, once per reason and
  message.
- Garbage collector: an object whose owner references all name uids that no longer exist is deleted
  (so deleting a ToolTuneJob removes its Job, whose pods are then removed and their processes killed).

Not emulated: several containers, init containers, restartPolicy OnFailure restarts in place (treated as
Never), resource limits at run time, probes, parallelism of a non-indexed Job, backoffLimitPerIndex
and successPolicy, more than one node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import os
import random
import re
import signal
import string
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from kubernetes.utils import parse_quantity

from tests.harness import rbac
from tests.harness.emulator import (
    CONFIGMAPS,
    EVENTS,
    JOBS,
    PODS,
    RESOURCES,
    SECRETS,
    SERVICES,
    RunningCluster,
    clone,
    now_iso,
)

NODE_NAME = "test-node"
TICK_SECONDS = 0.5  # the longest the loop sleeps without a change (deadlines and TTLs are checked per tick)
MAX_GRACE_SECONDS = 2.0
STOP_TIMEOUT = 10.0
TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
SIGKILL_EXIT = 128 + signal.SIGKILL
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
TERMINATION_LOG_ENV = "TOOLTUNE_TERMINATION_LOG"
REPO = Path(__file__).resolve().parents[2]
PYTHONPATH_DIRS = [REPO / "api", REPO / "operator", REPO / "trainer-image", REPO]

# A container's argv[0] → what runs locally: this interpreter, and the tooltune CLI (its console script is
# not installed in the development environment).
DEFAULT_EXECUTABLES = {
    "python": [sys.executable],
    "python3": [sys.executable],
    "tooltune": [sys.executable, "-c", "from tooltune_trainer.cli import app; app()"],
}
# A container run in the kubelet's process: (argv, env) → exit code. It must not block the loop.
Script = Callable[[Sequence[str], Mapping[str, str]], Awaitable[int]]
FINISHED = {"Complete", "Failed"}
TARGETS = {"SuccessCriteriaMet": "Complete", "FailureTarget": "Failed"}  # decided → concluded once pods stop
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
MAX_GENERATED_NAME = 58  # names.MaxGeneratedNameLength: 63 minus the 5 random characters
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_ENV_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ContainerConfigError(Exception):
    """The pod cannot start yet: the container's waiting reason and message as the kubelet reports them
    in the pod's status (a real kubelet leaves the message empty while volumes fail to mount), and the
    Events it posts about the pod meanwhile: (type, reason, message)."""

    def __init__(self, reason: str, message: str, events: list[tuple[str, str, str]] | None = None):
        super().__init__(message)
        self.reason, self.message = reason, message
        self.events = events if events is not None else [("Warning", "Failed", f"Error: {message}")]


def mount_failed(message: str) -> ContainerConfigError:
    """A volume that cannot be set up: ``ContainerCreating`` without a message, and a FailedMount Event."""
    return ContainerConfigError("ContainerCreating", "", [("Warning", "FailedMount", message)])


# The node a test gets unless it declares its own: one GPU node as a cloud GPU node pool makes it (no taints
# unless the pool sets them), with the kubelet's default of 110 pods.
DEFAULT_ALLOCATABLE: dict[str, str | int] = {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 1, "pods": 110}


@dataclass
class Node:
    """The one node, as the scheduler sees it: what it can allocate (a resource it does not list, it has
    none of), its labels and taints."""

    allocatable: dict[str, str | int] = field(default_factory=lambda: dict(DEFAULT_ALLOCATABLE))
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)  # {key, value, effect}

    def misfits(self, pod: dict[str, Any], used: dict[str, Decimal]) -> list[tuple[str, bool]]:
        """Why the pod does not fit beside the pods that use `used` (their requests, and "pods"), as the
        scheduler's filter plugins say it, each with whether preempting other pods could help."""
        spec = pod["spec"]
        problems: list[tuple[str, bool]] = []
        selector = spec.get("nodeSelector") or {}
        if any(self.labels.get(key) != value for key, value in selector.items()):
            problems.append(("node(s) didn't match Pod's node affinity/selector", False))
        for taint in self.taints:
            if taint.get("effect") in {"NoSchedule", "NoExecute"} and not _tolerated(taint, spec):
                value = f"{taint['key']}: {taint.get('value', '')}"
                problems.append((f"node(s) had untolerated taint {{{value}}}", False))
        if used.get("pods", 0) + 1 > parse_quantity(self.allocatable.get("pods", 0)):
            problems.append(("Too many pods", True))
        for resource, quantity in requests_of(pod).items():
            if used.get(resource, 0) + quantity > parse_quantity(self.allocatable.get(resource, 0)):
                problems.append((f"Insufficient {resource}", True))
        return problems


def requests_of(pod: dict[str, Any]) -> dict[str, Decimal]:
    """What the pod's containers request, summed (a limit without a request requests the limit)."""
    total: dict[str, Decimal] = {}
    for container in pod["spec"].get("containers") or []:
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for resource, quantity in wanted.items():
            total[resource] = total.get(resource, Decimal(0)) + parse_quantity(quantity)
    return total


def _tolerated(taint: dict[str, str], spec: dict[str, Any]) -> bool:
    for toleration in spec.get("tolerations") or []:
        if toleration.get("effect") not in (None, "", taint.get("effect")):
            continue
        if toleration.get("operator") == "Exists" and toleration.get("key") in (None, "", taint["key"]):
            return True
        if toleration.get("key") == taint["key"] and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def unschedulable_message(problems: list[tuple[str, bool]]) -> str:
    """The scheduler's FailedScheduling message for a one-node cluster."""
    reasons = ", ".join(sorted(f"1 {problem}" for problem, _ in problems))
    helpful = all(preemptable for _, preemptable in problems)  # a taint or selector: no eviction helps
    preemption = (
        "No preemption victims found for incoming pod"
        if helpful
        else ("Preemption is not helpful for scheduling")
    )
    return f"0/1 nodes are available: {reasons}. preemption: 0/1 nodes are available: 1 {preemption}."


class ScriptProcess:
    """A `Script` running as a pod's container, with what the kubelet uses of a process: ``pid``, ``wait()``
    (the exit code, ``-N`` after signal N, as asyncio's processes say it) and ``send_signal``. A script
    has no handlers: any signal ends it at once, as it ends a process that installs none. An exception
    is exit code 1, its traceback in the log."""

    pid = 0

    def __init__(self, script: Script, argv: Sequence[str], env: Mapping[str, str], log_path: Path):
        self._signal: int | None = None
        self._task = asyncio.create_task(self._run(script, argv, env, log_path))

    @staticmethod
    async def _run(script: Script, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> int:
        try:
            return await script(argv, env)
        except Exception:
            with log_path.open("a") as log:
                traceback.print_exc(file=log)
            return 1

    def send_signal(self, signum: int) -> None:
        if not self._task.done():
            self._signal = signum
            self._task.cancel()

    async def wait(self) -> int:
        await asyncio.wait([self._task])
        return -(self._signal or signal.SIGKILL) if self._task.cancelled() else self._task.result()


@dataclass
class PodRun:
    """A pod's local process and the files kept for assertions."""

    namespace: str
    name: str
    uid: str
    directory: Path
    log_path: Path
    termination_path: Path
    fallback_to_logs: bool
    started_at: str
    process: asyncio.subprocess.Process | ScriptProcess
    owner: str = ""  # the uid of the Job that owns the pod
    grace_seconds: float = MAX_GRACE_SECONDS
    exit_code: int | None = None
    finished_at: str | None = None
    killed: bool = False  # killed by the harness (deletion, suspension, kill_pod), not by the system
    reported: bool = False
    requests: dict[str, Decimal] = field(default_factory=dict)  # what the scheduler counts as used


@dataclass
class JobMemory:
    accounted: set[str] = field(default_factory=set)  # uids of terminated pods already counted
    completed: set[int] = field(default_factory=set)  # an Indexed Job's succeeded indexes
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid → an active pod as last seen


def _owner_uids(obj: dict[str, Any]) -> list[str]:
    return [owner["uid"] for owner in obj["metadata"].get("ownerReferences") or [] if owner.get("uid")]


def _condition(kind: str, reason: str, message: str, status: str = "True") -> dict[str, Any]:
    now = now_iso()
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


def _has_condition(status: dict[str, Any], kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in status.get("conditions", []))


def _seconds_since(timestamp: str) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds()


def _random_suffix() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=5))


def expand_references(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known variables are replaced, ``$$`` is a literal ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _ENV_REFERENCE.sub(replace, text)


def rewrite_paths(text: str, mounts: list[tuple[str, Path]]) -> str:
    """Replace container paths (mount paths, the termination path) by their local counterparts.

    One pass over the text, longest path first, so a replacement is never rewritten again (a local path
    under /tmp must survive a volume mounted at /tmp).
    """
    if not mounts:
        return text
    ordered = sorted(mounts, key=lambda m: -len(m[0]))
    locals_by_path = {container_path.rstrip("/"): str(local) for container_path, local in ordered}
    alternatives = "|".join(re.escape(container_path.rstrip("/")) for container_path, _ in ordered)
    pattern = r"(?<![\w.-])(" + alternatives + r")(?=/|$|[^\w.-])"
    return re.sub(pattern, lambda match: locals_by_path[match.group(1)], text)


def resolve_service_names(text: str, namespace: str, services: list[str]) -> str:
    """Pod DNS names under a headless Service (``<hostname>.<service>``, with or without
    ``.<namespace>.svc.cluster.local``) replaced by the loopback address every pod process shares here."""
    if not services:
        return text
    names = "|".join(re.escape(service) for service in sorted(services, key=len, reverse=True))
    suffix = rf"(?:\.{re.escape(namespace)}(?:\.svc(?:\.cluster\.local)?)?)?"
    pattern = rf"(?<![\w.-]){_DNS_LABEL}\.(?:{names}){suffix}(?![\w.-])"
    return re.sub(pattern, "127.0.0.1", text)


def pod_failure_action(job: dict[str, Any], pod: dict[str, Any]) -> tuple[str, str]:
    """The podFailurePolicy action for a failed pod (``Count`` when no rule matches) and its message."""
    rules = job["spec"].get("podFailurePolicy", {}).get("rules", [])
    meta = pod["metadata"]
    terminated = [
        (status["name"], status["state"]["terminated"]["exitCode"])
        for status in pod.get("status", {}).get("containerStatuses", [])
        if "terminated" in status.get("state", {})
    ]
    for index, rule in enumerate(rules):
        on_codes = rule.get("onExitCodes")
        if on_codes:
            values = set(on_codes.get("values", []))
            for container, code in terminated:
                if on_codes.get("containerName") not in (None, container) or code == 0:
                    continue
                if (code in values) == (on_codes.get("operator", "In") == "In"):
                    return rule["action"], (
                        f"Container {container} for pod {meta['namespace']}/{meta['name']} "
                        f"failed with exit code {code} matching {rule['action']} rule "
                        f"at index {index}"
                    )
        for pattern in rule.get("onPodConditions") or []:
            for condition in pod.get("status", {}).get("conditions", []):
                if condition["type"] == pattern["type"] and condition["status"] == pattern.get(
                    "status", "True"
                ):
                    return rule["action"], (
                        f"Pod {meta['namespace']}/{meta['name']} has condition "
                        f"{pattern['type']} matching {rule['action']} rule at index {index}"
                    )
    return "Count", ""


class Kubelet:
    """Start with `start()`, stop with `stop()`; the other public methods are safe from any thread."""

    def __init__(
        self,
        cluster: RunningCluster,
        root: Path,
        *,
        env: dict[str, str] | None = None,
        executables: dict[str, list[str]] | None = None,
        scripts: dict[str, Script] | None = None,
        capacity: int | None = None,
        max_grace_seconds: float = MAX_GRACE_SECONDS,
        node: Node | None = None,
        unpullable_images: set[str] | frozenset[str] = frozenset(),
    ):
        self.cluster = cluster
        self.emulator = cluster.emulator
        self.root = root
        self.env = env or {}
        self.executables = {**DEFAULT_EXECUTABLES, **(executables or {})}
        self.scripts = scripts or {}
        self.capacity = capacity
        self.max_grace_seconds = max_grace_seconds
        self.node = node or Node()
        self.unpullable_images = set(unpullable_images)
        self._posted: set[tuple[str, str, str]] = set()  # (pod uid, reason, message) of Events posted
        self._pull_attempts: dict[str, int] = {}  # pod uid → failed image pulls
        self._runs: dict[str, PodRun] = {}
        self._jobs: dict[str, JobMemory] = {}
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Future[None] | None = None
        self._stopping = False
        self.errors: list[BaseException] = []

    # ------------------------------------------------------------ public, thread-safe

    def start(self) -> Kubelet:
        async def launch() -> asyncio.Task[None]:
            self._wake = asyncio.Event()
            return asyncio.create_task(self._main(), name="test-kubelet")

        self._task = self.cluster.call(launch())
        self.emulator.pod_logs = self.logs
        return self

    def stop(self) -> None:
        if self._task is None:
            return

        async def shutdown() -> None:
            self._stopping = True
            assert self._wake is not None and self._task is not None
            self._wake.set()
            await asyncio.wait([self._task], timeout=STOP_TIMEOUT)
            for run in list(self._runs.values()):
                if run.exit_code is None:
                    self._signal(run, signal.SIGKILL)
            for run in list(self._runs.values()):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.process.wait(), STOP_TIMEOUT)

        self.cluster.call(shutdown(), timeout=2 * STOP_TIMEOUT + 1)
        self._task = None
        if self.errors:
            raise RuntimeError(f"the test kubelet failed: {self.errors[0]!r}") from self.errors[0]

    def kill_pod(self, name: str, namespace: str = "default", *, disruption: bool = True) -> None:
        """SIGKILL the pod's process; with `disruption`, first mark the pod as an eviction would."""

        def kill() -> None:
            run = next((r for r in self._runs.values() if (r.namespace, r.name) == (namespace, name)), None)
            if run is None or run.exit_code is not None:
                raise LookupError(f"pod {namespace}/{name} has no running process")
            if disruption:
                self._mark_disrupted(self.emulator.get_object(PODS, namespace, name) or {}, namespace, name)
            self._signal(run, signal.SIGKILL)
            run.killed = True

        self.cluster.call(kill)

    def evict_pod(self, name: str, namespace: str = "default") -> None:
        """What the Eviction API does: mark the pod DisruptionTarget, then delete it gracefully."""

        def evict() -> None:
            pod = self.emulator.get_object(PODS, namespace, name)
            if pod is None:
                raise LookupError(f"pod {namespace}/{name} does not exist")
            self._mark_disrupted(pod, namespace, name)
            marked = self.emulator.get_object(PODS, namespace, name) or pod
            owner = marked["metadata"].get("labels", {}).get("controller-uid")
            if owner:  # what the Job controller's finalizer would let it see after the deletion
                self._jobs.setdefault(owner, JobMemory()).seen[marked["metadata"]["uid"]] = clone(marked)
            self.emulator.delete_object(PODS, namespace, name)

        self.cluster.call(evict)

    def oom_kill(self, name: str, namespace: str = "default") -> None:
        """The kernel's OOM killer ends the pod's process: terminated with reason OOMKilled, exit code 137."""

        def kill() -> None:
            run = next((r for r in self._runs.values() if (r.namespace, r.name) == (namespace, name)), None)
            if run is None or run.exit_code is not None:
                raise LookupError(f"pod {namespace}/{name} has no running process")
            self._signal(run, signal.SIGKILL)

        self.cluster.call(kill)

    def evict_for_node_pressure(self, name: str, namespace: str = "default", used: str = "1538Mi") -> None:
        """The kubelet's own eviction when the node runs out of memory: the pod fails with reason Evicted
        and a DisruptionTarget condition (TerminationByKubelet), its process is killed, an Evicted Event."""

        def evict() -> None:
            pod = self.emulator.get_object(PODS, namespace, name)
            run = next((r for r in self._runs.values() if (r.namespace, r.name) == (namespace, name)), None)
            if pod is None or run is None:
                raise LookupError(f"pod {namespace}/{name} has no running process")
            container = pod["spec"]["containers"][0]["name"]
            message = (
                "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51Mi. "
                f"Container {container} was using {used}, request is 0, has larger consumption of memory. "
            )
            conditions = [c for c in pod["status"].get("conditions", []) if c["type"] != "DisruptionTarget"]
            conditions.append(_condition("DisruptionTarget", "TerminationByKubelet", message))
            self.emulator.patch_object(
                PODS,
                namespace,
                name,
                {"status": {"reason": "Evicted", "message": message, "conditions": conditions}},
                subresource="status",
            )
            self._post_event(pod, "Warning", "Evicted", message)
            self._signal(run, signal.SIGKILL)
            run.killed = True

        self.cluster.call(evict)

    def _mark_disrupted(self, pod: dict[str, Any], namespace: str, name: str) -> None:
        conditions = [
            c for c in pod.get("status", {}).get("conditions", []) if c["type"] != "DisruptionTarget"
        ]
        conditions.append(_condition("DisruptionTarget", "EvictionByEvictionAPI", "Eviction API: evicting"))
        self.emulator.patch_object(
            PODS, namespace, name, {"status": {"conditions": conditions}}, subresource="status"
        )

    def exit_code(self, name: str, namespace: str = "default") -> int | None:
        """The exit code of the pod's process (128 + N for signal N), None while it runs or never ran."""
        return self.cluster.call(
            lambda: next(
                (
                    run.exit_code
                    for run in self._runs.values()
                    if (run.namespace, run.name) == (namespace, name)
                ),
                None,
            )
        )

    def pod_directory(self, name: str, namespace: str = "default") -> Path:
        return self.root / "pods" / f"{namespace}-{name}"

    def logs(self, name: str, namespace: str = "default") -> str:
        path = self.pod_directory(name, namespace) / "container.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------ the loop

    async def _main(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            try:
                await self._reconcile()
            except Exception as error:  # a harness bug: keep it for stop() to raise, keep serving
                self.errors.append(error)
            change = asyncio.ensure_future(self.emulator.next_change(TICK_SECONDS))
            wake = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait([change, wake], return_when=asyncio.FIRST_COMPLETED)
            for waiter in (change, wake):
                waiter.cancel()
            self._wake.clear()

    async def _reconcile(self) -> None:
        self._collect_garbage()
        pods_of: dict[str, list[dict[str, Any]]] = {}
        for pod in self.emulator.peek_objects(PODS):
            for uid in _owner_uids(pod):
                pods_of.setdefault(uid, []).append(pod)
        for job in self.emulator.peek_objects(JOBS):
            self._sync_job(job, pods_of.get(job["metadata"]["uid"], []))
        live = set()
        pending = []
        for pod in self.emulator.peek_objects(PODS):
            live.add(pod["metadata"]["uid"])
            if self._needs_sync(pod):
                pending.append(clone(pod))
        for pod in pending:
            await self._sync_pod(pod)
        for uid, run in list(self._runs.items()):
            if uid not in live and run.exit_code is None and not run.killed:
                run.killed = True
                self._spawn(self._terminate(run))

    def _collect_garbage(self) -> None:
        objects = [(resource, obj) for resource in RESOURCES for obj in self.emulator.peek_objects(resource)]
        uids = {obj["metadata"]["uid"] for _, obj in objects}
        for resource, obj in objects:
            owners = _owner_uids(obj)
            if (
                owners
                and not any(uid in uids for uid in owners)
                and not obj["metadata"].get("deletionTimestamp")
            ):
                meta = obj["metadata"]
                with contextlib.suppress(Exception):
                    self.emulator.delete_object(
                        resource, meta.get("namespace"), meta["name"], propagation="Background"
                    )

    # ------------------------------------------------------------ Job controller

    def _sync_job(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        meta, spec = job["metadata"], job["spec"]
        status = copy.deepcopy(job.get("status", {}))
        memory = self._jobs.setdefault(meta["uid"], JobMemory())
        if _has_condition(status, "Complete") or _has_condition(status, "Failed"):
            self._expire(job, status)
            self._delete_pods(p for p in pods if self._is_active(p))
            return
        if any(_has_condition(status, target) for target in TARGETS):
            self._conclude(job, status, pods)
            return
        active = [p for p in pods if self._is_active(p)]
        indexed = spec.get("completionMode") == "Indexed"
        verdict: tuple[str, str, str] | None = None  # (condition, reason, message)
        for pod in pods + self._evicted(memory, pods):
            phase = pod.get("status", {}).get("phase")
            if phase not in ("Succeeded", "Failed") or pod["metadata"]["uid"] in memory.accounted:
                continue
            memory.accounted.add(pod["metadata"]["uid"])
            if phase == "Succeeded":
                status["succeeded"] = status.get("succeeded", 0) + 1
                if indexed:
                    memory.completed.add(int(pod["metadata"]["annotations"][COMPLETION_INDEX]))
                    status["completedIndexes"] = ",".join(map(str, sorted(memory.completed)))
                continue
            action, message = pod_failure_action(job, pod)
            if action == "FailJob":
                verdict = verdict or ("Failed", "PodFailurePolicy", message)
            if action != "Ignore":
                status["failed"] = status.get("failed", 0) + 1
        if verdict is None:
            verdict = self._verdict(spec, status)
        if verdict is not None:
            self._finish(status, *verdict)
            self._conclude(job, status, pods)
            return
        elif spec.get("suspend"):
            if not _has_condition(status, "Suspended"):
                status["conditions"] = [c for c in status.get("conditions", []) if c["type"] != "Suspended"]
                status["conditions"].append(_condition("Suspended", "JobSuspended", "Job suspended"))
                status.pop("startTime", None)
            self._delete_pods(active)
            status["active"], status["ready"] = 0, 0
        else:
            if _has_condition(status, "Suspended"):
                status["conditions"] = [c for c in status["conditions"] if c["type"] != "Suspended"]
                status["conditions"].append(_condition("Suspended", "JobResumed", "Job resumed", "False"))
            status.setdefault("startTime", now_iso())
            existing = {pod["metadata"]["uid"] for pod in pods}
            # The API allows only Failed (and defaults to it) when a podFailurePolicy is set.
            policy = spec.get("podReplacementPolicy") or (
                "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed"
            )
            waits_for_termination = policy == "Failed" and any(
                run.owner == meta["uid"] and run.exit_code is None and run.uid not in existing
                for run in self._runs.values()
            )
            if indexed and not waits_for_termination:  # one pod per index not yet completed
                running = {int(p["metadata"]["annotations"][COMPLETION_INDEX]) for p in active}
                missing = set(range(spec["completions"])) - memory.completed - running
                room = spec.get("parallelism", 1) - len(active)
                active += [self._create_pod(job, index) for index in sorted(missing)[: max(room, 0)]]
            elif not active and not waits_for_termination:
                active = [self._create_pod(job)]
            status["active"] = len(active)
            status["ready"] = sum(p.get("status", {}).get("phase") == "Running" for p in active)
        if status != job.get("status", {}):
            self.emulator.patch_object(
                JOBS,
                meta["namespace"],
                meta["name"],
                [{"op": "add", "path": "/status", "value": status}],
                subresource="status",
            )

    def _evicted(self, memory: JobMemory, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Evicted pods of the Job whose process has ended, as Failed pods with their DisruptionTarget
        condition. The real controller's finalizer keeps a deleted pod until it has counted its end (and
        applied its podFailurePolicy); here deletion is immediate, so the pod is remembered as last seen."""
        present = {pod["metadata"]["uid"] for pod in pods}
        ended = []
        for uid, pod in list(memory.seen.items()):
            run = self._runs.get(uid)
            if uid in present or uid in memory.accounted or (run is not None and run.exit_code is None):
                continue
            memory.seen.pop(uid)
            if not _has_condition(pod.get("status") or {}, "DisruptionTarget"):
                continue  # deleted by the controller itself (suspend, cleanup): not a failure
            terminated = {"exitCode": run.exit_code if run else 137, "reason": "Error"}
            container = pod["spec"]["containers"][0]["name"]
            ended.append(
                {
                    **pod,
                    "status": {
                        **pod["status"],
                        "phase": "Failed",
                        "containerStatuses": [{"name": container, "state": {"terminated": terminated}}],
                    },
                }
            )
        memory.seen.update((pod["metadata"]["uid"], clone(pod)) for pod in pods if self._is_active(pod))
        return ended

    @staticmethod
    def _verdict(spec: dict[str, Any], status: dict[str, Any]) -> tuple[str, str, str] | None:
        if status.get("succeeded", 0) >= spec.get("completions", 1):
            return "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
        if status.get("failed", 0) > spec.get("backoffLimit", 6):
            return "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        deadline = spec.get("activeDeadlineSeconds")
        if (
            deadline is not None
            and status.get("startTime")
            and _seconds_since(status["startTime"]) >= deadline
        ):
            return "Failed", "DeadlineExceeded", "Job was active longer than specified deadline"
        return None

    @staticmethod
    def _finish(status: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """The verdict as the Job controller first records it: FailureTarget or SuccessCriteriaMet."""
        target = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
        status.setdefault("conditions", [])
        status["conditions"].append(_condition(target, reason, message))

    def _conclude(self, job: dict[str, Any], status: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        """A decided Job's pods are stopped; its terminal condition (Failed or Complete, with the verdict's
        reason and message) comes once none of them runs any more, as the real controller does since
        Kubernetes 1.31: a new Job started after it never runs beside its pods."""
        self._delete_pods(p for p in pods if self._is_active(p))
        status["active"], status["ready"] = 0, 0
        stopping = sum(
            run.owner == job["metadata"]["uid"] and run.exit_code is None for run in self._runs.values()
        )
        status["terminating"] = stopping
        if not stopping:
            target = next(c for c in status["conditions"] if c["type"] in TARGETS and c["status"] == "True")
            status["conditions"].append(
                _condition(TARGETS[target["type"]], target["reason"], target["message"])
            )
            if target["type"] == "SuccessCriteriaMet":
                status["completionTime"] = now_iso()
            status.pop("terminating")
        if status != job.get("status", {}):
            meta = job["metadata"]
            self.emulator.patch_object(
                JOBS, meta["namespace"], meta["name"], [{"op": "add", "path": "/status", "value": status}],
                subresource="status",
            )  # fmt: skip

    def _expire(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        finished = next(
            (
                c["lastTransitionTime"]
                for c in status.get("conditions", [])
                if c["type"] in FINISHED and c["status"] == "True"
            ),
            None,
        )
        if ttl is not None and finished and _seconds_since(finished) >= ttl:
            meta = job["metadata"]
            self.emulator.delete_object(JOBS, meta["namespace"], meta["name"], propagation="Background")

    @staticmethod
    def _is_active(pod: dict[str, Any]) -> bool:
        return pod.get("status", {}).get("phase", "Pending") in ("Pending", "Running") and not pod[
            "metadata"
        ].get("deletionTimestamp")

    def _delete_pods(self, pods: Any) -> None:
        for pod in pods:
            with contextlib.suppress(Exception):
                self.emulator.delete_object(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])

    def _create_pod(self, job: dict[str, Any], index: int | None = None) -> dict[str, Any]:
        """A pod of the Job; of an Indexed Job's index, as the Job controller makes it: named
        <job>-<index>-<suffix>, the index in an annotation, a label and JOB_COMPLETION_INDEX, hostname
        <job>-<index>."""
        meta, template = job["metadata"], job["spec"]["template"]
        labels = {
            **(template.get("metadata", {}).get("labels") or {}),
            "job-name": meta["name"],
            "batch.kubernetes.io/job-name": meta["name"],
            "controller-uid": meta["uid"],
            "batch.kubernetes.io/controller-uid": meta["uid"],
        }
        annotations = dict(template.get("metadata", {}).get("annotations") or {})
        spec, prefix = copy.deepcopy(template["spec"]), f"{meta['name']}-"
        if index is not None:
            labels[COMPLETION_INDEX] = annotations[COMPLETION_INDEX] = str(index)
            spec["hostname"] = f"{meta['name']}-{index}"
            prefix = f"{meta['name']}-{index}-"
            if len(prefix) > MAX_GENERATED_NAME:
                prefix = prefix[: MAX_GENERATED_NAME - len(f"-{index}-")] + f"-{index}-"
            variable = {"fieldRef": {"fieldPath": f"metadata.labels['{COMPLETION_INDEX}']"}}
            for container in spec["containers"]:
                if not any(e["name"] == "JOB_COMPLETION_INDEX" for e in container.get("env") or []):
                    container["env"] = [
                        *(container.get("env") or []),
                        {"name": "JOB_COMPLETION_INDEX", "valueFrom": variable},
                    ]
        pod = {
            "metadata": {
                "name": f"{prefix}{_random_suffix()}",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
        }
        created = self.emulator.create_object(PODS, pod)
        return self.emulator.patch_object(
            PODS,
            meta["namespace"],
            created["metadata"]["name"],
            {"status": {"phase": "Pending"}},
            subresource="status",
        )

    # ------------------------------------------------------------ kubelet

    def _needs_sync(self, pod: dict[str, Any]) -> bool:
        meta = pod["metadata"]
        phase = pod.get("status", {}).get("phase", "Pending")
        if phase in ("Succeeded", "Failed") or meta.get("deletionTimestamp"):
            return False
        run = self._runs.get(meta["uid"])
        return run is None or (run.exit_code is not None and not run.reported)

    async def _sync_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        phase = pod.get("status", {}).get("phase", "Pending")
        run = self._runs.get(meta["uid"])
        if phase in ("Succeeded", "Failed") or meta.get("deletionTimestamp"):
            return
        if run is None:
            misfits = self.node.misfits(pod, self._used())
            if self.capacity is not None and self._running() >= self.capacity:
                misfits.append(("Too many pods", True))
            if misfits:
                self._report_unschedulable(pod, unschedulable_message(misfits))
                return
            try:
                self._pull_image(pod)
                run = await self._launch(pod)
            except ContainerConfigError as error:
                self._report_waiting(pod, error)
                return
            run.requests = requests_of(pod)
            self._runs[meta["uid"]] = run
            self._report_running(pod, run)
        elif run.exit_code is not None and not run.reported:
            self._report_terminated(pod, run)

    def _container_status(self, pod: dict[str, Any], state: dict[str, Any], ready: bool) -> dict[str, Any]:
        container = pod["spec"]["containers"][0]
        return {
            "name": container["name"],
            "image": container.get("image", ""),
            "ready": ready,
            "started": ready,
            "restartCount": 0,
            "state": state,
        }

    def _patch_pod_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        merged = {**pod.get("status", {}), **status}
        if merged != pod.get("status"):
            with contextlib.suppress(Exception):  # the pod may be gone already
                self.emulator.patch_object(
                    PODS,
                    meta["namespace"],
                    meta["name"],
                    [{"op": "add", "path": "/status", "value": merged}],
                    subresource="status",
                )

    def _report_waiting(self, pod: dict[str, Any], error: ContainerConfigError) -> None:
        waiting = {"reason": error.reason, **({"message": error.message} if error.message else {})}
        scheduled = [_condition("PodScheduled", "", "")]
        self._patch_pod_status(
            pod,
            {
                "phase": "Pending",
                "conditions": scheduled,
                "containerStatuses": [self._container_status(pod, {"waiting": waiting}, False)],
            },
        )
        for kind, reason, message in error.events:
            self._post_event(pod, kind, reason, message)

    def _used(self) -> dict[str, Decimal]:
        """The requests of the pods whose processes run, and their number ("pods")."""
        used: dict[str, Decimal] = {"pods": Decimal(self._running())}
        for run in self._runs.values():
            if run.exit_code is None:
                for resource, quantity in run.requests.items():
                    used[resource] = used.get(resource, Decimal(0)) + quantity
        return used

    def _running(self) -> int:
        return sum(run.exit_code is None for run in self._runs.values())

    def _report_unschedulable(self, pod: dict[str, Any], message: str) -> None:
        self._patch_pod_status(
            pod,
            {
                "phase": "Pending",
                "conditions": [_condition("PodScheduled", "Unschedulable", message, "False")],
            },
        )
        self._post_event(pod, "Warning", "FailedScheduling", message, component="default-scheduler")

    def _pull_image(self, pod: dict[str, Any]) -> None:
        """An image in unpullable_images fails as a registry without it does: ErrImagePull, then
        ImagePullBackOff on every later try."""
        image = pod["spec"]["containers"][0].get("image", "")
        if image not in self.unpullable_images:
            return
        uid = pod["metadata"]["uid"]
        self._pull_attempts[uid] = self._pull_attempts.get(uid, 0) + 1
        if self._pull_attempts[uid] > 1:
            message = f'Back-off pulling image "{image}"'
            raise ContainerConfigError(
                "ImagePullBackOff",
                message,
                [("Normal", "BackOff", message), ("Warning", "Failed", "Error: ImagePullBackOff")],
            )
        cause = (
            f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
            f'failed to resolve reference "{image}": {image}: not found'
        )
        raise ContainerConfigError(
            "ErrImagePull",
            cause,
            [
                ("Normal", "Pulling", f'Pulling image "{image}"'),
                ("Warning", "Failed", f'Failed to pull image "{image}": {cause}'),
                ("Warning", "Failed", "Error: ErrImagePull"),
            ],
        )

    def _post_event(
        self, pod: dict[str, Any], kind: str, reason: str, message: str, component: str = "kubelet"
    ) -> None:
        """An Event about the pod, as the kubelet or the scheduler posts it (once per reason and message:
        a real one counts repeats on the same Event)."""
        meta = pod["metadata"]
        if (meta["uid"], reason, message) in self._posted:
            return
        self._posted.add((meta["uid"], reason, message))
        now = now_iso()
        with contextlib.suppress(Exception):
            self.emulator.create_object(
                EVENTS,
                {
                    "metadata": {
                        "name": f"{meta['name']}.{_random_suffix()}",
                        "namespace": meta["namespace"],
                    },
                    "involvedObject": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": meta["name"],
                        "namespace": meta["namespace"],
                        "uid": meta["uid"],
                    },
                    "reason": reason,
                    "message": message,
                    "type": kind,
                    "source": {
                        "component": component,
                        **({"host": NODE_NAME} if component == "kubelet" else {}),
                    },
                    "reportingComponent": component,
                    "reportingInstance": NODE_NAME if component == "kubelet" else "",
                    "count": 1,
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                },
            )

    def _report_running(self, pod: dict[str, Any], run: PodRun) -> None:
        conditions = [
            c for c in pod.get("status", {}).get("conditions", []) if c["type"] == "DisruptionTarget"
        ]
        conditions += [
            _condition(kind, "", "") for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        state = {"running": {"startedAt": run.started_at}}
        self._patch_pod_status(
            pod,
            {
                "phase": "Running",
                "startTime": run.started_at,
                "conditions": conditions,
                "containerStatuses": [self._container_status(pod, state, True)],
            },
        )

    def _report_terminated(self, pod: dict[str, Any], run: PodRun) -> None:
        run.reported = True
        code = run.exit_code or 0
        reason = (
            "Completed"
            if code == 0
            else ("OOMKilled" if code == SIGKILL_EXIT and not run.killed else "Error")
        )
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": run.started_at,
            "finishedAt": run.finished_at,
            "containerID": f"local://{run.process.pid}",
        }
        message = self._termination_message(run, code)
        if message:
            terminated["message"] = message
        conditions = [
            c for c in pod.get("status", {}).get("conditions", []) if c["type"] == "DisruptionTarget"
        ]
        conditions += [
            _condition(kind, "PodCompleted" if code == 0 else "PodFailed", "", "False")
            for kind in ("Ready", "ContainersReady")
        ]
        self._patch_pod_status(
            pod,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": conditions,
                "containerStatuses": [self._container_status(pod, {"terminated": terminated}, False)],
            },
        )

    @staticmethod
    def _termination_message(run: PodRun, code: int) -> str:
        if run.termination_path.exists():
            message = run.termination_path.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
            if message.strip():
                return message
        if code != 0 and run.fallback_to_logs and run.log_path.exists():
            lines = run.log_path.read_text(errors="replace").splitlines()[-FALLBACK_LOG_LINES:]
            return "\n".join(lines)[-FALLBACK_LOG_BYTES:]
        return ""

    # ------------------------------------------------------------ starting a container

    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.emulator.get_object(SECRETS if kind == "Secret" else CONFIGMAPS, namespace, name)

    def _values(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        obj = self._lookup(kind, namespace, name)
        if obj is None:
            return None
        if kind == "Secret":
            return {
                k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()
            }
        return dict(obj.get("data") or {})

    def _resolve_env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            kind, ref = (
                ("Secret", source["secretRef"])
                if "secretRef" in source
                else ("ConfigMap", source["configMapRef"])
            )
            values = self._values(kind, namespace, ref["name"])
            if values is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(
                    "CreateContainerConfigError", f'{kind.lower()} "{ref["name"]}" not found'
                )
            env.update({source.get("prefix", "") + k: v for k, v in values.items()})
        for item in container.get("env") or []:
            if "valueFrom" not in item:
                env[item["name"]] = expand_references(str(item.get("value", "")), env)
                continue
            source = item["valueFrom"]
            if "fieldRef" in source:
                env[item["name"]] = self._field(pod, source["fieldRef"]["fieldPath"])
                continue
            kind, ref = (
                ("Secret", source["secretKeyRef"])
                if "secretKeyRef" in source
                else ("ConfigMap", source.get("configMapKeyRef"))
            )
            if ref is None:
                raise ContainerConfigError(
                    "CreateContainerConfigError",
                    f"env {item['name']}: valueFrom {sorted(source)} is not emulated",
                )
            values = self._values(kind, namespace, ref["name"])
            if values is None or ref["key"] not in values:
                if ref.get("optional"):
                    continue
                problem = (
                    f'{kind.lower()} "{ref["name"]}" not found'
                    if values is None
                    else f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}"
                )
                raise ContainerConfigError("CreateContainerConfigError", problem)
            env[item["name"]] = values[ref["key"]]
        return env

    @staticmethod
    def _field(pod: dict[str, Any], path: str) -> str:
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": "test-node",
            "status.podIP": "127.0.0.1",
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        }
        if path in simple:
            return simple[path]
        label = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if label:
            return (meta.get(label.group(1)) or {}).get(label.group(2), "")
        raise ContainerConfigError("CreateContainerConfigError", f"fieldRef {path} is not emulated")

    def _materialise_volumes(self, pod: dict[str, Any], directory: Path) -> dict[str, Path]:
        namespace = pod["metadata"]["namespace"]
        local: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes") or []:
            target = directory / "volumes" / volume["name"]
            if "configMap" in volume or "secret" in volume:
                kind = "ConfigMap" if "configMap" in volume else "Secret"
                ref = volume["configMap"] if kind == "ConfigMap" else volume["secret"]
                name = ref.get("name") or ref.get("secretName")
                values = self._values(kind, namespace, name)
                if kind == "ConfigMap" and values is not None:
                    binary = (self._lookup(kind, namespace, name) or {}).get("binaryData") or {}
                    values.update(
                        {k: base64.b64decode(v).decode(errors="replace") for k, v in binary.items()}
                    )
                if values is None:
                    if not ref.get("optional"):
                        raise mount_failed(
                            f'MountVolume.SetUp failed for volume "{volume["name"]}" : '
                            f'{kind.lower()} "{name}" not found'
                        )
                    values = {}
                items = ref.get("items") or [{"key": key, "path": key} for key in values]
                target.mkdir(parents=True, exist_ok=True)
                for item in items:
                    if item["key"] not in values:
                        raise mount_failed(
                            f'MountVolume.SetUp failed for volume "{volume["name"]}" : '
                            f"configmap references non-existent config key: {item['key']}"
                        )
                    path = target / item["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(values[item["key"]])
            elif "emptyDir" in volume:
                target.mkdir(parents=True, exist_ok=True)
            elif "persistentVolumeClaim" in volume:
                target = self.root / "pvc" / namespace / volume["persistentVolumeClaim"]["claimName"]
                target.mkdir(parents=True, exist_ok=True)
            else:
                kinds = sorted(set(volume) - {"name"})
                raise ContainerConfigError(
                    "ContainerCreating",
                    f'volume "{volume["name"]}": {kinds} volumes are '
                    "not emulated by the test kubelet (use configMap, secret, emptyDir "
                    "or persistentVolumeClaim)",
                )
            local[volume["name"]] = target
        return local

    async def _launch(self, pod: dict[str, Any]) -> PodRun:
        meta = pod["metadata"]
        container = pod["spec"]["containers"][0]
        directory = self.pod_directory(meta["name"], meta["namespace"])
        directory.mkdir(parents=True, exist_ok=True)
        volumes = self._materialise_volumes(pod, directory)  # a real kubelet mounts before it builds env
        env = self._resolve_env(pod, container)
        termination_path = directory / "termination-log"
        termination_path.write_text("")
        mounts: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in volumes:
                raise ContainerConfigError(
                    "CreateContainerConfigError", f'volumeMount "{mount["name"]}" names no volume of the pod'
                )
            mounts.append((mount["mountPath"], volumes[mount["name"]] / mount.get("subPath", "")))
        mounts.append((container.get("terminationMessagePath", DEFAULT_TERMINATION_PATH), termination_path))
        services = self._headless_services(pod)
        env = {
            name: resolve_service_names(rewrite_paths(value, mounts), meta["namespace"], services)
            for name, value in env.items()
        }
        argv = [
            resolve_service_names(
                rewrite_paths(expand_references(part, env), mounts), meta["namespace"], services
            )
            for part in [*(container.get("command") or []), *(container.get("args") or [])]
        ]
        if not container.get("command"):
            raise ContainerConfigError(
                "CreateContainerError",
                f"container {container['name']} has no command: "
                "the test kubelet ignores images, so the pod spec must set command",
            )
        script = self.scripts.get(argv[0])
        argv = argv if script else [*self.executables.get(argv[0], [argv[0]]), *argv[1:]]
        workdir = (
            Path(rewrite_paths(container["workingDir"], mounts))
            if container.get("workingDir")
            else (directory / "cwd")
        )
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = directory / "container.log"
        process_env = self._process_env(pod, env, termination_path, dict(mounts).get("/tmp"))
        log_path.touch()
        process: asyncio.subprocess.Process | ScriptProcess
        if script:
            process = ScriptProcess(script, argv, process_env, log_path)
        else:
            process = await self._start_process(argv, workdir, process_env, log_path)
        run = PodRun(
            meta["namespace"],
            meta["name"],
            meta["uid"],
            directory,
            log_path,
            termination_path,
            container.get("terminationMessagePolicy") == "FallbackToLogsOnError",
            now_iso(),
            process,
            pod["metadata"]["labels"].get("controller-uid", ""),
            min(self.max_grace_seconds, pod["spec"].get("terminationGracePeriodSeconds", 30)),
        )
        self._spawn(self._reap(run))
        return run

    @staticmethod
    async def _start_process(
        argv: list[str], workdir: Path, env: dict[str, str], log_path: Path
    ) -> asyncio.subprocess.Process:
        with log_path.open("ab") as log:
            try:
                return await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=workdir,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                raise ContainerConfigError(
                    "CreateContainerError", f"cannot start {argv[0]!r}: {error}"
                ) from None

    def _headless_services(self, pod: dict[str, Any]) -> list[str]:
        """Names of the headless Services in the pod's namespace: what cluster DNS answers pod names under
        (a name under a Service that does not exist stays unresolvable, as in a cluster)."""
        return [
            service["metadata"]["name"]
            for service in self.emulator.peek_objects(SERVICES)
            if service["metadata"]["namespace"] == pod["metadata"]["namespace"]
            and (service.get("spec") or {}).get("clusterIP") == "None"
        ]

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _process_env(
        self, pod: dict[str, Any], env: dict[str, str], termination: Path, tmp: Path | None
    ) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k in {"HOME", "LANG", "LC_ALL", "TMPDIR", "USER"}}
        if tmp is not None:  # a volume mounted at /tmp: where the process's temporary files go
            inherited["TMPDIR"] = str(tmp)
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
        pythonpath = os.pathsep.join(map(str, PYTHONPATH_DIRS))
        return {
            **inherited,
            "PATH": path,
            "PYTHONPATH": pythonpath,
            "PYTHONUNBUFFERED": "1",
            "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"],
            "KUBECONFIG": str(self._serviceaccount_kubeconfig(pod)),
            TERMINATION_LOG_ENV: str(termination),
            **self.env,
            **env,
        }

    def _serviceaccount_kubeconfig(self, pod: dict[str, Any]) -> Path:
        """What the mounted ServiceAccount token is to a real pod: its requests are made as the pod's
        ServiceAccount (``default`` unless the spec names one), under that account's RBAC."""
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        path = self.pod_directory(meta["name"], meta["namespace"]) / "kubeconfig"
        return rbac.serviceaccount_kubeconfig(path, self.cluster.url, meta["namespace"], account)

    async def _reap(self, run: PodRun) -> None:
        code = await run.process.wait()
        run.exit_code = 128 - code if code < 0 else code  # a signal N is reported as 128 + N
        run.finished_at = now_iso()
        if self._wake is not None:
            self._wake.set()

    def _signal(self, run: PodRun, signum: int) -> None:
        if isinstance(run.process, ScriptProcess):
            run.process.send_signal(signum)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.process.pid, signum)

    async def _terminate(self, run: PodRun) -> None:
        self._signal(run, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(run.process.wait()), run.grace_seconds)
        except TimeoutError:
            self._signal(run, signal.SIGKILL)
