"""Condition types and reasons on a ToolTuneJob's status, each with what it tells the user."""

# Condition types.
VALIDATED = "Validated"  # the spec parsed and passed every check
RUNNING = "Running"  # a trainer or submitter pod is working on the job
SUCCEEDED = "Succeeded"  # the model (or the remote fine-tune) is done
FAILED = "Failed"  # the job stopped for good; the reason says why
SUSPENDED = "Suspended"  # spec.suspend is true: no pod runs

# Reasons.
SPEC_VALID = "SpecValid"
VALIDATION_FAILED = "ValidationFailed"  # the spec is invalid: the message names the field
JOB_CREATED = "JobCreated"  # the Job exists, no pod has started yet
JOB_REFUSED = "JobRefused"  # the API server refused to create the Job or its ConfigMap: the message says why
POD_PENDING = "PodPending"  # the pod waits for a node, an image or a Secret
VALIDATING_DATA = "ValidatingData"  # the pod runs and has not reported a training step yet
TRAINING = "Training"  # the trainer reports steps
COMPLETED = "Completed"
INVALID_DATA = "InvalidData"  # the trainer exited 2: retrying cannot help
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"  # every retry failed
DEADLINE_EXCEEDED = "DeadlineExceeded"  # activeDeadlineSeconds ran out
CANCELLED = "Cancelled"  # the remote fine-tuning job was cancelled
JOB_LOST = "JobLost"  # the Job vanished before finishing (deleted by hand)
SUSPENDED_BY_USER = "SuspendedByUser"
SPEC_CHANGE_DEFERRED = "SpecChangeDeferred"  # spec edited mid-run: the running attempt keeps its spec
