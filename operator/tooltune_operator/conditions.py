"""Condition types and reasons on a ToolTuneJob's status, each with what it tells the user."""

# Condition types.
VALIDATED = "Validated"  # the spec parsed and passed every check
RUNNING = "Running"  # a trainer or submitter pod is working on the job
SUCCEEDED = "Succeeded"  # the model (or the remote fine-tune) is done
FAILED = "Failed"  # the job stopped for good; the reason says why
SUSPENDED = "Suspended"  # spec.suspend is true: no pod runs
QUEUED = "Queued"  # Kueue holds the Job: the reason and message are the Workload's (kueue.queue_state)
BLOCKED = "Blocked"  # the pod cannot start: the reason says why (a Secret, an image, no node) and what to do

# Reasons.
SPEC_VALID = "SpecValid"
VALIDATION_FAILED = "ValidationFailed"  # the spec is invalid: the message names the field
JOB_CREATED = "JobCreated"  # the Job exists, no pod has started yet
JOB_REFUSED = "JobRefused"  # the API server refused to create the Job or its ConfigMap: the message says why
POD_PENDING = "PodPending"  # the pod waits to start, for no reason the kubelet or scheduler has given yet
CONFIG_MISSING = "ConfigMissing"  # a Secret, ConfigMap or key the pod needs does not exist: create it
IMAGE_PULL_FAILED = "ImagePullFailed"  # the node cannot pull the image: its name or the pull secret is wrong
OUTPUT_IN_USE = "OutputInUse"  # an older unfinished job writes to the same output.uri: this one waits for it
UNSCHEDULABLE = "Unschedulable"  # no node has the GPUs, labels or tolerations the pod asks for
OOM_KILLED = "OOMKilled"  # a pod ran out of memory (the Job retries it): an Event on the ToolTuneJob
POD_EVICTED = "Evicted"  # the node evicted a pod (the Job retries it, uncounted): an Event
GROUP_STARTING = "GroupStarting"  # some of a multi-node group's pods run; training waits for all of them
GROUP_RESTARTING = "GroupRestarting"  # a pod of a multi-node group failed: the group reruns as a new attempt
VALIDATING_DATA = "ValidatingData"  # the pod runs and has not reported a training step yet
TRAINING = "Training"  # the trainer reports steps
COMPLETED = "Completed"
INVALID_DATA = "InvalidData"  # the trainer exited 2: retrying cannot help
EVALUATION_GATE_FAILED = "EvaluationGateFailed"  # the model missed spec.evaluation.gate: kept, not promoted
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"  # every retry failed
DEADLINE_EXCEEDED = "DeadlineExceeded"  # activeDeadlineSeconds ran out
CANCELLED = "Cancelled"  # the remote fine-tuning job was cancelled
JOB_LOST = "JobLost"  # the Job vanished before finishing (deleted by hand)
SUSPENDED_BY_USER = "SuspendedByUser"
SUSPEND_IGNORED = "SuspendIgnored"  # spec.suspend of a Kueue Job, Kueue support off
SPEC_CHANGE_DEFERRED = "SpecChangeDeferred"  # spec edited mid-run: the running attempt keeps its spec
