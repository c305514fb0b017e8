"""pydantic models of the ToolTuneJob spec and status, and of the operator↔trainer contract.

The CRD's openAPIV3Schema is generated from these models (``tooltune_api.crd``), so admission and
the operator agree on what a valid spec is. Field names are the camelCase ones users write.
Defaults are the lab's recommendations for tool-calling fine-tuning.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from tooltune_api import API_VERSION, KIND, POD_WORKDIR
from tooltune_api.pricing import OPENAI_PRICES_SOURCE, OPENAI_TRAINING_PRICES


class Model(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True
    )

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Backend(StrEnum):
    UNSLOTH = "unsloth"
    OPENAI = "openai"


class Precision(StrEnum):
    AUTO = "auto"  # bf16 where the GPU supports it, else fp16; fp32 on CPU
    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"


class ToolCallFormatName(StrEnum):
    """How the model is shown its tools and writes its calls (tooltune_trainer/tool_formats.py)."""

    AUTO = "auto"  # from the base model's chat template
    HERMES = "hermes"  # <tool_call>{json}</tool_call> (Qwen 2.5/3, Hermes)
    LLAMA3_JSON = "llama3_json"  # {"name": ..., "parameters": {...}} (Llama 3.1+)
    MISTRAL = "mistral"  # [TOOL_CALLS] [{...}] (Mistral templates with tools)
    TOOL_TAGS = "tool_tags"  # the lab's: tools in the system turn, <tool_call> blocks in the text
    # Native formats of the templates TRL ships a response parser for:
    QWEN3_XML = "qwen3_xml"  # Qwen 3.5+: <tool_call><function=...><parameter=...>
    NEMOTRON_3 = "nemotron_3"
    GEMMA4 = "gemma4"  # <|tool_call>call:name{...}<tool_call|>
    GPTOSS = "gptoss"  # harmony channels
    GLM4MOE = "glm4moe"  # <tool_call>name<arg_key>...<arg_value>...
    LFM2 = "lfm2"  # <|tool_call_start|>[name(arg=...)]<|tool_call_end|>


class Scheduler(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant"


LAB_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

LAB_SMOKE_PROMPTS = [
    "Create a task to review the quarterly report",
    "What tasks do I have due this week?",
    "Mark the budget task as complete",
]

# A Kubernetes label value that is also a DNS label (what Kueue's queue and priority class names must be).
LabelValue = Annotated[str, Field(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")]

# What the trainer's storage can read datasets from and write models to (a URI without a scheme is a
# local path). The CRD's CEL rules (tooltune_api.crd) say the same at admission.
DATASET_SCHEMES = ("s3", "https", "http", "configmap", "file")
OUTPUT_SCHEMES = ("s3", "file")


def checked_scheme(uri: str, schemes: tuple[str, ...]) -> str:
    """uri, when it is a local path or its scheme is one of schemes; else a ValueError saying which."""
    scheme, separator, _ = uri.partition("://")
    if separator and scheme.lower() not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ValueError(f"unsupported scheme {scheme}:// (got {uri!r}); use {allowed} or a local path")
    return uri


HTTP_URL = r"^https?://[^/\s]+"  # a service tooltune talks to: http(s), with a host
ServiceUrl = Annotated[str, Field(pattern=HTTP_URL)]  # the pattern is for the CRD; checked_http_url says why


def checked_http_url(url: Any) -> Any:
    if isinstance(url, str) and not re.match(HTTP_URL, url):
        raise ValueError(f"must be an http:// or https:// URL with a host (got {url!r})")
    return url


class Dataset(Model):
    train: str = Field(
        min_length=1,
        description="URI of the training JSONL: s3://, https://, a local path, or configmap://<name>/<key>.",
    )
    validation: str | None = Field(
        None,
        min_length=1,
        description="URI of a validation JSONL. Leave unset to split one off the training file.",
    )
    validation_split: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Share of the training file held out "
        "for validation when no validation file is given (default 0.1).",
    )
    seed: int = Field(42, ge=0, description="Seed of the split and of training, for reproducible runs.")

    @field_validator("train", "validation")
    @classmethod
    def _readable(cls, uri: str | None) -> str | None:
        return uri if uri is None else checked_scheme(uri, DATASET_SCHEMES)

    @field_validator("validation_split")
    @classmethod
    def _one_validation_source(cls, split: float | None, info: ValidationInfo) -> float | None:
        if split is not None and info.data.get("validation") is not None:
            raise ValueError("set dataset.validation or dataset.validationSplit, not both")
        return split

    @property
    def effective_validation_split(self) -> float:
        return 0.1 if self.validation_split is None else self.validation_split


class Lora(Model):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LAB_TARGET_MODULES),
        min_length=1,
        description="Modules that receive LoRA adapters.",
    )


class Hyperparameters(Model):
    epochs: int = Field(3, ge=1, le=100)
    batch_size: int = Field(4, ge=1, le=1024, description="Per-device batch size.")
    gradient_accumulation_steps: int = Field(2, ge=1, le=1024)
    learning_rate: float = Field(2e-5, gt=0, le=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    scheduler: Scheduler = Scheduler.LINEAR
    weight_decay: float = Field(0.0, ge=0, le=1)
    max_seq_length: int = Field(2048, ge=32, le=131072, description="Longest templated example, in tokens.")
    lora: Lora = Field(default_factory=Lora)
    full_fine_tune: bool = Field(
        False,
        description="Train all weights instead of LoRA adapters (for small models trained from scratch).",
    )
    load_in_4bit: bool = Field(
        True, alias="loadIn4bit", description="QLoRA: load the base model in 4 bits (CUDA only)."
    )
    precision: Precision = Precision.AUTO
    logging_steps: int = Field(10, ge=1, le=100000)


class Checkpoints(Model):
    every_steps: int = Field(100, ge=1, le=1000000)
    keep: int = Field(3, ge=1, le=100, description="How many complete checkpoints to keep.")


class Score(StrEnum):
    """The tool-call scores of an evaluation (tooltune_trainer/evaluate.py says how each is counted)."""

    TOOL_NAME_ACCURACY = "toolNameAccuracy"
    ARGUMENTS_EXACT_MATCH = "argumentsExactMatch"
    VALID_JSON_RATE = "validJsonRate"
    NO_CALL_RATE = "noCallRate"  # lower is better
    FALSE_CALL_RATE = "falseCallRate"  # lower is better


LOWER_IS_BETTER = frozenset({Score.NO_CALL_RATE.value, Score.FALSE_CALL_RATE.value})
BASE = "base"  # what spec.evaluation.gate[].noWorseThan calls the base model
REFERENCE_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Reference(Model):
    """A model behind an OpenAI-compatible chat completions endpoint, scored beside the tuned one."""

    name: str = Field(
        min_length=1, max_length=63, pattern=REFERENCE_NAME,
        description="How the reference is shown and named in gate rules (lowercase, digits, '-').",
    )  # fmt: skip
    model: str = Field(min_length=1, description="The model to ask, e.g. ft:gpt-4o-mini-2024-07-18:acme::x1.")
    base_url: ServiceUrl = Field(description="The API's base URL, e.g. https://api.openai.com/v1.")
    api_key_secret: SecretKeyRef | None = Field(
        None, description="Secret holding the API key; unset for a server without keys."
    )
    timeout_seconds: int = Field(60, ge=1, le=600, description="Per request.")

    @field_validator("base_url", mode="before")
    @classmethod
    def _base_url_is_a_url(cls, url: Any) -> Any:
        return checked_http_url(url)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name == BASE:
            raise ValueError(f"{BASE!r} is the base model's name in gate rules; pick another")
        return name


class GateRule(Model):
    """One condition a tuned model must meet to be promoted."""

    metric: Score
    at_least: float | None = Field(None, ge=0, le=1, description="The score must be at least this.")
    at_most: float | None = Field(None, ge=0, le=1, description="The score must be at most this.")
    no_worse_than: str | None = Field(
        None,
        min_length=1,
        description="'base' or a reference's name: the tuned score may be worse than its by tolerance at "
        "most (lower is better for noCallRate and falseCallRate).",
    )
    tolerance: float = Field(0.0, ge=0, le=1, description="How much worse than noWorseThan's score passes.")

    @model_validator(mode="after")
    def _one_condition_at_least(self) -> GateRule:
        if self.at_least is None and self.at_most is None and self.no_worse_than is None:
            raise ValueError("a gate rule needs atLeast, atMost or noWorseThan")
        return self


class Evaluation(Model):
    every_steps: int = Field(50, ge=1, le=1000000)
    max_examples: int | None = Field(
        None,
        ge=1,
        description="Cap on validation examples of the tool-call evaluations (base, tuned, references).",
    )
    smoke_prompts: list[str] = Field(default_factory=lambda: list(LAB_SMOKE_PROMPTS), max_length=20)
    early_stopping: bool = Field(
        False, description="Stop training when the diagnosis says Overfitting or Diverging."
    )
    evaluate_base: bool = Field(
        True, description="Evaluate the base model on the same turns before training: what tuning did."
    )
    references: list[Reference] = Field(
        default_factory=list,
        max_length=5,
        description="Models behind OpenAI-compatible chat endpoints, scored on the same turns.",
    )
    gate: list[GateRule] = Field(
        default_factory=list,
        max_length=20,
        description="Rules a tuned model must pass to be promoted; a miss ends the run EvaluationGateFailed.",
    )

    @field_validator("references")
    @classmethod
    def _unique_names(cls, references: list[Reference]) -> list[Reference]:
        names = [reference.name for reference in references]
        if len(set(names)) != len(names):
            raise ValueError("names must be unique")
        return references

    @field_validator("gate")
    @classmethod
    def _gate_compares_with_what_is_evaluated(
        cls, gate: list[GateRule], info: ValidationInfo
    ) -> list[GateRule]:
        references = [reference.name for reference in info.data.get("references") or []]
        for index, rule in enumerate(gate):
            other = rule.no_worse_than
            if other == BASE and not info.data.get("evaluate_base", True):
                raise ValueError(f"rule {index}: noWorseThan base needs evaluation.evaluateBase: true")
            if other is not None and other != BASE and other not in references:
                known = ", ".join([BASE, *references])
                raise ValueError(f"rule {index}: noWorseThan {other!r} names no evaluated model; use {known}")
        return gate


class Output(Model):
    uri: str = Field(
        min_length=1,
        description="Where checkpoints and the final model go: s3://bucket/prefix/ or a local directory.",
    )
    merged_weights: bool = Field(False, description="Also save the base model merged with the adapter.")
    gguf: bool = Field(False, description="Also export GGUF (needs llama.cpp in the image).")

    @field_validator("uri")
    @classmethod
    def _writable(cls, uri: str) -> str:
        return checked_scheme(uri, OUTPUT_SCHEMES)


class Storage(Model):
    endpoint: ServiceUrl | None = Field(None, description="S3 endpoint URL; unset means AWS.")

    @field_validator("endpoint", mode="before")
    @classmethod
    def _endpoint_is_a_url(cls, url: Any) -> Any:
        return checked_http_url(url)

    region: str = "us-east-1"
    path_style: bool = Field(True, description="Path-style addressing (most S3-compatible servers need it).")
    credentials_secret: str | None = Field(
        None, min_length=1, description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
    )


class SecretKeyRef(Model):
    name: str = Field(min_length=1)
    key: str = Field("OPENAI_API_KEY", min_length=1)


class OpenAI(Model):
    model: str = Field(min_length=1, description="Base model to fine-tune, e.g. gpt-4o-mini-2024-07-18.")
    api_key_secret: SecretKeyRef = Field(description="Secret holding the API key.")
    suffix: str | None = Field(None, max_length=64)
    base_url: ServiceUrl | None = Field(None, description="API base URL, for compatible services.")

    @field_validator("base_url", mode="before")
    @classmethod
    def _base_url_is_a_url(cls, url: Any) -> Any:
        return checked_http_url(url)

    learning_rate_multiplier: float | None = Field(None, gt=0, le=100, description="Unset means 'auto'.")
    poll_seconds: int = Field(30, ge=1, le=3600)


class Toleration(Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Resources(Model):
    gpus: int = Field(1, ge=0, le=64, description="GPUs per node (per pod).")
    nodes: int = Field(
        1,
        ge=1,
        le=256,
        description="Pods (nodes) training together: above 1, an Indexed Job of that many pods runs torchrun "
        "across them (unsloth backend only); any pod's failure restarts the whole group from the newest "
        "checkpoint.",
    )
    gpu_resource_name: str = Field("nvidia.com/gpu", min_length=1)
    cpu: Quantity | None = None
    memory: Quantity | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    priority_class_name: str | None = None
    cost_per_gpu_hour: float | None = Field(
        None,
        ge=0,
        description="US dollars per GPU-hour, for status.cost's estimate; unset: the operator's "
        "pricing.costPerGpuHour.",
    )


class ToolTuneJobSpec(Model):
    backend: Backend = Backend.UNSLOTH
    base_model: str = Field(
        min_length=1,
        description="Hub id or local path of the base model; "
        "'tooltune/tiny-llama' builds a tiny model on the spot.",
    )
    tool_call_format: ToolCallFormatName = Field(
        ToolCallFormatName.AUTO,
        description="How the model writes tool calls: auto (picked from the base model's chat template), "
        "hermes, llama3_json, mistral, a native format TRL parses (qwen3_xml, nemotron_3, gemma4, gptoss, "
        "glm4moe, lfm2), or tool_tags (tools in the system turn, <tool_call> blocks in the text, for "
        "templates without tool support). Set it only when the guess is wrong.",
    )
    dataset: Dataset
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    checkpoints: Checkpoints = Field(default_factory=Checkpoints)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    output: Output
    storage: Storage = Field(default_factory=Storage)
    openai: OpenAI | None = Field(None, validate_default=True)
    resources: Resources = Field(default_factory=Resources)
    image: str | None = Field(None, description="Trainer image; the operator's default when unset.")
    suspend: bool = Field(
        False,
        description="Stop the job's pod (it resumes from the last checkpoint when set back to false). With a "
        "Kueue queue the operator deactivates the Job's Workload instead of touching the Job.",
    )
    queue_name: LabelValue | None = Field(
        None,
        description="Kueue LocalQueue in the job's namespace that admits its Job (label "
        "kueue.x-k8s.io/queue-name); unset: the operator's default queue, if any (Helm kueue.defaultQueue).",
    )
    workload_priority_class_name: LabelValue | None = Field(
        None,
        description="Kueue WorkloadPriorityClass (label kueue.x-k8s.io/priority-class): the job's priority "
        "in its queue and for preemption, without changing the pod's priority; unset: the operator's default "
        "(Helm kueue.defaultPriorityClass), else Kueue uses resources.priorityClassName.",
    )
    backoff_limit: int = Field(3, ge=0, le=100, description="Retries of the training pod.")
    active_deadline_seconds: int | None = Field(None, ge=1)
    ttl_seconds_after_finished: int | None = Field(None, ge=0)

    @field_validator("openai")
    @classmethod
    def _openai_settings_match_backend(cls, openai: OpenAI | None, info: ValidationInfo) -> OpenAI | None:
        backend = info.data.get("backend", Backend.UNSLOTH)
        if backend == Backend.OPENAI and openai is None:
            raise ValueError("is required when backend is openai: set openai.model and openai.apiKeySecret")
        if backend != Backend.OPENAI and openai is not None:
            raise ValueError("is only allowed with backend: openai")
        return openai

    @field_validator("evaluation")
    @classmethod
    def _trainer_evaluates(cls, evaluation: Evaluation, info: ValidationInfo) -> Evaluation:
        if info.data.get("backend") == Backend.OPENAI and (evaluation.references or evaluation.gate):
            raise ValueError(
                "references and gate are evaluated by the unsloth trainer only; with backend: openai remove "
                "them, or train with backend: unsloth and name the OpenAI model as a reference"
            )
        return evaluation


# ---------------------------------------------------------------- status


class Phase(StrEnum):
    PENDING = "Pending"
    VALIDATING = "Validating"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    QUEUED = "Queued"  # Kueue has not admitted the Job (no quota yet, admission checks, or preempted)
    CANCELLED = "Cancelled"


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Progress(Model):
    step: int | None = None
    total_steps: int | None = None
    percent: float | None = None
    epoch: float | None = None
    eta_seconds: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    updated_at: str | None = None


class Diagnosis(Model):
    pattern: str
    advice: str
    step: int | None = None


class CheckpointStatus(Model):
    latest_step: int | None = None
    latest_uri: str | None = None
    count: int = 0
    resumed_from_step: int | None = Field(
        None, description="The checkpoint step the current pod resumed from; unset when it started fresh."
    )
    fresh_start_reason: str | None = Field(
        None,
        description="Why the current pod started fresh although the output held checkpoints: they were made "
        "from another base model, LoRA shape, chat format or tokenizer.",
    )


class Scores(Model):
    examples: int | None = None
    tool_name_accuracy: float | None = None
    arguments_exact_match: float | None = None
    valid_json_rate: float | None = None
    no_call_rate: float | None = None
    false_call_rate: float | None = None


class ReferenceScores(Scores):
    name: str
    model: str | None = None
    agreement: float | None = Field(
        None, description="Share of turns where the tuned model made the same calls (or none) as this one."
    )
    error: str | None = Field(None, description="Why the reference could not be scored.")


class GateStatus(Model):
    passed: bool
    message: str = ""


class EvaluationStatus(Scores):
    """The tuned model's scores, with the base model's and each reference's beside them."""

    report_uri: str | None = None
    base: Scores | None = None
    references: list[ReferenceScores] | None = None
    gate: GateStatus | None = None
    promoted: bool | None = Field(None, description="The gate passed (or there is none): use the model.")


class OpenAIStatus(Model):
    job_id: str | None = None
    status: str | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    shutdown_date: str | None = Field(
        None, description="When spec.openai.model shuts down, as the models endpoint says (YYYY-MM-DD)."
    )


class CostStatus(Model):
    """What the run costs: estimated before it is paid for, then what was billed."""

    training_tokens: int | None = Field(
        None, description="Tokens the run will train on: the training split's tokens times the epochs."
    )
    token_count: str | None = Field(None, description="How trainingTokens was counted.")
    price_per_million_tokens: float | None = None
    price_source: str | None = Field(None, description="The price table the estimate used, with its date.")
    estimated_usd: float | None = Field(
        None, description="trainingTokens at pricePerMillionTokens, or estimatedGpuHours at costPerGpuHour."
    )
    billed_tokens: int | None = Field(None, description="Tokens the provider billed (trained_tokens).")
    billed_usd: float | None = Field(None, description="billedTokens at pricePerMillionTokens.")
    gpus: int | None = None
    gpu_hours: float | None = Field(
        None, description="GPU-hours this attempt has used: wall-clock hours × gpus."
    )
    estimated_gpu_hours: float | None = Field(
        None, description="GPU-hours of the whole attempt: gpuHours plus the measured step rate's ETA."
    )
    cost_per_gpu_hour: float | None = None
    spent_usd: float | None = Field(None, description="gpuHours at costPerGpuHour.")


class OutputStatus(Model):
    uri: str | None = None


class TrainingStatus(Model):
    """How the current attempt trains: which implementation on how many processes, and its batch as a user
    counts it (per-device batch × processes × accumulation)."""

    implementation: str | None = Field(None, description="unsloth or transformers (with peft).")
    implementation_reason: str | None = Field(
        None, description="Why this implementation, when it is not the device's default."
    )
    nodes: int | None = None
    processes_per_node: int | None = None
    world_size: int | None = Field(None, description="Training processes in all: one per GPU.")
    per_device_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    effective_batch_size: int | None = Field(
        None,
        description="Examples per optimizer step: perDeviceBatchSize × worldSize × gradientAccumulationSteps",
    )
    learning_rate: float | None = Field(
        None, description="Per optimizer step, as configured: it is not scaled with worldSize."
    )


class ToolTuneJobStatus(Model):
    model_config = ConfigDict(extra="ignore")  # tolerate what older operators wrote

    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    attempts: int | None = Field(None, description="Attempts so far; attempt N runs as Job <name>-<N>.")
    retries: int | None = Field(
        None,
        description="Pods of the current attempt that failed and were retried; with resources.nodes above 1, "
        "group restarts after a pod failure (evictions and preemption are not counted).",
    )
    job_name: str | None = None
    workers: str | None = Field(
        None, description="What the attempt runs on: nodes x GPUs per node (2x4), or nodes x CPU (2xCPU)."
    )
    spec_generation: int | None = Field(None, description="The metadata.generation the current attempt runs.")
    start_time: str | None = None
    completion_time: str | None = None
    failure_reason: str | None = None
    reason: str | None = Field(None, description="Why the job is in its phase, in one word.")
    message: str | None = None
    progress: Progress | None = None
    diagnosis: Diagnosis | None = None
    checkpoints: CheckpointStatus | None = None
    evaluation: EvaluationStatus | None = None
    openai: OpenAIStatus | None = None
    cost: CostStatus | None = None
    output: OutputStatus | None = None
    training: TrainingStatus | None = None


# ---------------------------------------------------------------- operator ↔ trainer contract

CONTRACT_VERSION: Literal["tooltune.dev/contract-v1"] = "tooltune.dev/contract-v1"


class JobRef(Model):
    namespace: str
    name: str
    uid: str = ""
    attempt: int = Field(1, ge=1)


class PriceTable(Model):
    """The prices cost estimates use: tooltune's dated table unless the operator's Helm values override it."""

    openai_training_per_million_tokens: dict[str, float] = Field(
        default_factory=lambda: dict(OPENAI_TRAINING_PRICES),
        description="US dollars per 1M training tokens by model name prefix (the longest match wins).",
    )
    source: str = Field(
        OPENAI_PRICES_SOURCE, min_length=1, description="Where the prices come from, and when."
    )
    cost_per_gpu_hour: float | None = Field(
        None, ge=0, description="US dollars per GPU-hour of the cluster; spec.resources.costPerGpuHour wins."
    )


class TrainerContract(Model):
    """The one document the operator hands to the trainer pod (mounted from a ConfigMap).

    The trainer never reads the ToolTuneJob: everything it needs is here. Credentials are not:
    they arrive as environment variables from Secrets.
    """

    contract: Literal["tooltune.dev/contract-v1"] = CONTRACT_VERSION
    job: JobRef
    spec: ToolTuneJobSpec
    metrics_port: int = Field(9090, ge=0, le=65535, description="0 disables /metrics.")
    report_progress: bool = Field(True, description="Patch progress into the ToolTuneJob's status.")
    progress_interval_seconds: float = Field(10.0, ge=0)
    image: str | None = None
    prices: PriceTable = Field(default_factory=PriceTable)


class ToolTuneJob(Model):
    model_config = ConfigDict(extra="ignore")

    api_version: Literal["tooltune.dev/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: Literal["ToolTuneJob"] = KIND  # type: ignore[assignment]
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ToolTuneJobSpec
    status: ToolTuneJobStatus | None = None


# ---------------------------------------------------------------- errors users can read


def describe_validation_error(error: ValidationError, prefix: str = "spec") -> list[str]:
    """One line per problem, each naming the field as the user wrote it and saying what to do."""
    lines = []
    for problem in error.errors():
        path = ".".join([prefix, *(str(p) for p in problem["loc"])]) if problem["loc"] else prefix
        kind = problem["type"]
        if kind == "extra_forbidden":
            message = "unknown field; remove it or check its spelling"
        elif kind == "missing":
            message = "is required"
        else:
            message = str(problem["msg"]).removeprefix("Value error, ")
            if "input" in problem and kind not in {"model_type", "value_error"}:
                message += f" (got {problem['input']!r})"
        lines.append(f"{path}: {message}")
    return lines


def parse_spec(spec: dict[str, Any]) -> ToolTuneJobSpec:
    """Parse a spec a cluster is to run; raises InvalidSpec whose lines name each bad field."""
    try:
        parsed = ToolTuneJobSpec.model_validate(spec)
    except ValidationError as error:
        raise InvalidSpec(describe_validation_error(error)) from None
    problems = cluster_problems(parsed)
    if problems:
        raise InvalidSpec(problems)
    return parsed


def cluster_problems(spec: ToolTuneJobSpec) -> list[str]:
    """What a spec valid for `tooltune run` cannot do in a pod: the pod sees its image and its own working
    directory, not the files of the machine the spec was written on; only a trainer spreads over nodes."""
    model = spec.base_model
    if spec.backend == Backend.OPENAI:
        if spec.resources.nodes > 1:
            return [
                f"spec.resources.nodes: {spec.resources.nodes} nodes need backend: unsloth (the OpenAI "
                "backend runs one submitter pod); set resources.nodes to 1"
            ]
        return []
    path = PurePosixPath(model.removeprefix("file://"))
    inside = not path.is_absolute() or path.is_relative_to(POD_WORKDIR)
    if ".." in path.parts or not inside or model.startswith("~"):
        return [
            f"spec.baseModel: {model} is outside the pod's working directory {POD_WORKDIR}; use a hub id "
            f"(org/name) or a path under {POD_WORKDIR}"
        ]
    return []


class InvalidSpec(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def now_iso(moment: datetime | None = None) -> str:
    from datetime import UTC

    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
