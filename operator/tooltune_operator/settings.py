"""Operator settings, read once from the environment at startup: every knob of the operator is here."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from tooltune_api.models import PriceTable
from tooltune_api.settings import (
    DATASET_MAX_BYTES_ENV,
    STORAGE_CONNECT_TIMEOUT_ENV,
    STORAGE_READ_TIMEOUT_ENV,
    positive,
)

DEFAULT_TRAINER_IMAGE = "ghcr.io/tooltune/trainer:0.1.0"
OPENAI_TRAINING_PRICES_ENV = (
    "TOOLTUNE_OPENAI_TRAINING_PRICES"  # Helm pricing.openaiTrainingPricesPerMillionTokens
)
PRICES_SOURCE_ENV = "TOOLTUNE_PRICES_SOURCE"  # Helm pricing.source
COST_PER_GPU_HOUR_ENV = "TOOLTUNE_COST_PER_GPU_HOUR"  # Helm pricing.costPerGpuHour


@dataclass(frozen=True)
class Settings:
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    namespace: str = ""  # empty: watch every namespace; else only this one
    metrics_port: int = 8080  # the operator's own /metrics; 0 disables it
    trainer_metrics_port: int = 9090  # declared on every trainer pod
    trainer_service_account: str = "tooltune-trainer"
    progress_interval_seconds: float = 10.0  # the trainer patches progress at most this often
    run_as_user: int = 1000  # the trainer image's non-root user
    storage_connect_timeout_seconds: float = 10.0  # a trainer's wait for an S3 connection
    storage_read_timeout_seconds: float = 60.0  # a trainer's wait for the next bytes from S3 or https
    dataset_max_bytes: int = 4 * 1024**3  # the largest dataset a trainer downloads
    prices: PriceTable = field(default_factory=PriceTable)  # what cost estimates use, handed to every pod
    # kopf never retries event handlers: a status patch or a create lost to an API error is repaired by a
    # resync of each unfinished job this often
    resync_seconds: float = 30.0
    # a trainer pod Pending this long has its Events read (FailedMount, FailedScheduling, image pulls), and
    # again as often while it stays Pending
    pod_events_seconds: float = 5.0
    # Kueue support (Helm kueue.*): read the Workloads of queued Jobs; off, the operator never asks for them
    kueue_enabled: bool = False
    kueue_default_queue: str = ""  # LocalQueue of jobs that name none; empty: such jobs bypass Kueue
    kueue_default_priority_class: str = ""  # WorkloadPriorityClass of queued jobs that name none
    # how long the pod that cancels a remote OpenAI job may take (its Job's activeDeadlineSeconds); a deletion
    # waits for it, then goes on with a Warning naming the remote job to cancel by hand
    remote_cancel_seconds: int = 300
    liveness_endpoint: str = "http://0.0.0.0:8081/healthz"  # kopf's probe; empty: none (local runs)
    debug: bool = False  # kopf's verbose logging

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            trainer_image=env.get("TOOLTUNE_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
            namespace=env.get("TOOLTUNE_NAMESPACE", ""),
            metrics_port=int(env.get("TOOLTUNE_METRICS_PORT", "8080")),
            trainer_metrics_port=int(env.get("TOOLTUNE_TRAINER_METRICS_PORT", "9090")),
            trainer_service_account=env.get("TOOLTUNE_TRAINER_SERVICE_ACCOUNT", "tooltune-trainer"),
            progress_interval_seconds=float(env.get("TOOLTUNE_PROGRESS_INTERVAL", "10")),
            storage_connect_timeout_seconds=positive(
                env, STORAGE_CONNECT_TIMEOUT_ENV, float, cls.storage_connect_timeout_seconds
            ),
            storage_read_timeout_seconds=positive(
                env, STORAGE_READ_TIMEOUT_ENV, float, cls.storage_read_timeout_seconds
            ),
            dataset_max_bytes=positive(env, DATASET_MAX_BYTES_ENV, int, cls.dataset_max_bytes),
            prices=price_table(env),
            resync_seconds=positive(env, "TOOLTUNE_RESYNC_SECONDS", float, cls.resync_seconds),
            pod_events_seconds=positive(env, "TOOLTUNE_POD_EVENTS_SECONDS", float, cls.pod_events_seconds),
            kueue_enabled=env.get("TOOLTUNE_KUEUE_ENABLED", "").lower() in {"1", "true"},
            kueue_default_queue=env.get("TOOLTUNE_KUEUE_DEFAULT_QUEUE", ""),
            kueue_default_priority_class=env.get("TOOLTUNE_KUEUE_DEFAULT_PRIORITY_CLASS", ""),
            remote_cancel_seconds=positive(
                env, "TOOLTUNE_REMOTE_CANCEL_SECONDS", int, cls.remote_cancel_seconds
            ),
            liveness_endpoint=env.get("TOOLTUNE_LIVENESS_ENDPOINT", cls.liveness_endpoint),
            debug=env.get("TOOLTUNE_DEBUG") == "1",
        )

    def trainer_storage_env(self) -> dict[str, str]:
        """The storage limits as the variables every trainer pod gets."""
        return {
            STORAGE_CONNECT_TIMEOUT_ENV: _plain(self.storage_connect_timeout_seconds),
            STORAGE_READ_TIMEOUT_ENV: _plain(self.storage_read_timeout_seconds),
            DATASET_MAX_BYTES_ENV: str(self.dataset_max_bytes),
        }


def _plain(seconds: float) -> str:
    """10.0 → '10', 2.5 → '2.5': what a person would write in the variable."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def price_table(env: dict[str, str]) -> PriceTable:
    """tooltune's dated price table with the Helm values' prices merged over it (a model they name gets their
    price, the others keep the table's); the source says which, so no estimate passes off one as the other."""
    builtin = PriceTable(cost_per_gpu_hour=gpu_hour_price(env))
    raw = env.get(OPENAI_TRAINING_PRICES_ENV, "").strip()
    source = env.get(PRICES_SOURCE_ENV, "").strip()
    if not raw:
        return builtin if not source else builtin.model_copy(update={"source": source})
    try:
        overrides = json.loads(raw)
    except ValueError:
        overrides = None
    if not isinstance(overrides, dict) or not all(
        isinstance(price, int | float) and not isinstance(price, bool) and price >= 0
        for price in overrides.values()
    ):
        raise ValueError(
            f"{OPENAI_TRAINING_PRICES_ENV}={raw!r}: must map model names to dollars per 1M training tokens, "
            'e.g. {"gpt-4o-mini": 3.0} (Helm value pricing.openaiTrainingPricesPerMillionTokens)'
        )
    return builtin.model_copy(
        update={
            "openai_training_per_million_tokens": builtin.openai_training_per_million_tokens | overrides,
            "source": source
            or f"Helm values pricing.openaiTrainingPricesPerMillionTokens, over {builtin.source}",
        }
    )


def gpu_hour_price(env: dict[str, str]) -> float | None:
    """Dollars per GPU-hour from the Helm values; unset or empty is None (no GPU cost estimate)."""
    raw = env.get(COST_PER_GPU_HOUR_ENV, "").strip()
    if not raw:
        return None
    try:
        price = float(raw)
    except ValueError:
        price = -1.0
    if not 0 <= price < float("inf"):
        raise ValueError(
            f"{COST_PER_GPU_HOUR_ENV}={raw!r}: must be US dollars per GPU-hour, e.g. 2.5 "
            "(Helm value pricing.costPerGpuHour); unset it for no estimate"
        )
    return price
