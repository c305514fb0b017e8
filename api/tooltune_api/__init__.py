"""The ToolTuneJob API shared by the operator and the trainer: resource names, spec, status, contract."""

GROUP = "tooltune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ToolTuneJob"
PLURAL = "tooltunejobs"
SINGULAR = "tooltunejob"
SHORT_NAMES = ["ttj"]

# The reserved baseModel name of the built-in tiny model: built on the spot, no hub access needed.
TINY_MODEL = "tooltune/tiny-llama"

__version__ = "0.1.0"

# Trainer exit codes, read by the Job's podFailurePolicy.
EXIT_OK = 0
EXIT_INVALID = 2  # invalid data or config: retrying cannot help, the Job fails at once
# any other non-zero exit is retryable (OOM, lost node, storage hiccup)
# The termination message of a trainer whose model missed spec.evaluation.gate starts with this outcome
# (exit code EXIT_INVALID: retrying would train the same model again); the operator's reason for it.
GATE_FAILED_OUTCOME = "gate_failed"

# Where the operator mounts the contract and where the pod writes its one-line failure reason.
CONTRACT_ENV = "TOOLTUNE_CONFIG"
CONTRACT_PATH = "/etc/tooltune/contract.json"
TERMINATION_LOG_ENV = "TOOLTUNE_TERMINATION_LOG"
TERMINATION_LOG_PATH = "/dev/termination-log"
WORKDIR_ENV = "TOOLTUNE_WORKDIR"  # local scratch space for data, model and checkpoints
POD_WORKDIR = "/work"  # the pod's working directory (an emptyDir): the only place a relative path can name

# Labels on every child object.
LABEL_JOB = f"{GROUP}/job"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_GENERATION = f"{GROUP}/generation"  # on a Job: the ToolTuneJob generation it was built from
ANNOTATION_JOB_NAME = f"{GROUP}/job-name"  # the ToolTuneJob's whole name, when a label had to shorten it
# On a multi-node Job: the counted group restarts of the ToolTuneJob before this attempt (spec.backoffLimit).
ANNOTATION_GROUP_RESTARTS = f"{GROUP}/group-restarts"


def reference_key_env(index: int) -> str:
    """The pod's variable holding spec.evaluation.references[index]'s API key (from its Secret)."""
    return f"TOOLTUNE_REFERENCE_{index}_API_KEY"
