"""Settings that both the operator and the trainer read from the environment.

The storage limits of trainer pods: the operator reads them from its own environment (Helm values
`trainer.storage.*`) and sets the same variables on every trainer pod, where
tooltune_trainer.storage.StorageLimits reads them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeVar

STORAGE_CONNECT_TIMEOUT_ENV = "TOOLTUNE_STORAGE_CONNECT_TIMEOUT_SECONDS"
STORAGE_READ_TIMEOUT_ENV = "TOOLTUNE_STORAGE_READ_TIMEOUT_SECONDS"
DATASET_MAX_BYTES_ENV = "TOOLTUNE_DATASET_MAX_BYTES"

Number = TypeVar("Number", int, float)


def positive(env: Mapping[str, str], name: str, kind: type[Number], default: Number) -> Number:
    """A positive finite setting; unset or empty is the default; anything else is a ValueError that names
    the variable and says what it takes."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = kind(0)
    if not 0 < value < math.inf:
        what = "whole number of bytes" if kind is int else "number of seconds"
        raise ValueError(f"{name}={raw!r}: must be a positive {what}; unset it for the default {default}")
    return value
