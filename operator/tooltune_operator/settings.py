"""Operator settings, read once from the environment at startup: every knob of the operator is here."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tooltune_api.settings import (
    DATASET_MAX_BYTES_ENV,
    STORAGE_CONNECT_TIMEOUT_ENV,
    STORAGE_READ_TIMEOUT_ENV,
    positive,
)

DEFAULT_TRAINER_IMAGE = "ghcr.io/tooltune/trainer:0.1.0"


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
    # kopf never retries event handlers: a status patch or a create lost to an API error is repaired by a
    # resync of each unfinished job this often
    resync_seconds: float = 30.0
    # a trainer pod Pending this long has its Events read (FailedMount, FailedScheduling, image pulls), and
    # again as often while it stays Pending
    pod_events_seconds: float = 5.0
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
            resync_seconds=positive(env, "TOOLTUNE_RESYNC_SECONDS", float, cls.resync_seconds),
            pod_events_seconds=positive(env, "TOOLTUNE_POD_EVENTS_SECONDS", float, cls.pod_events_seconds),
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
