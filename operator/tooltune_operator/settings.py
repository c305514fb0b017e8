"""Operator settings, read once from the environment at startup."""

from __future__ import annotations

import os
from dataclasses import dataclass

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
        )
