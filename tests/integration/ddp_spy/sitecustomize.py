"""Loaded at start-up by every Python process of a test's DDP run (its directory leads PYTHONPATH): records
each write to storage and to the Kubernetes API with the rank that made it, one JSON line per write, into
$TOOLTUNE_SPY_LOG. The calls go on to the real servers."""

from __future__ import annotations

import functools
import json
import os
from typing import Any


def _record(kind: str, method: Any) -> Any:
    @functools.wraps(method)
    def recorded(self: Any, *args: Any, **kwargs: Any) -> Any:
        with open(os.environ["TOOLTUNE_SPY_LOG"], "a") as log:
            log.write(json.dumps({"rank": os.environ.get("RANK"), "write": kind}) + "\n")
        return method(self, *args, **kwargs)

    return recorded


if os.environ.get("TOOLTUNE_SPY_LOG"):
    from kubernetes.client import CoreV1Api, CustomObjectsApi
    from tooltune_trainer.storage import Store

    for name in ("upload_many", "write_bytes", "delete", "delete_prefix"):
        setattr(Store, name, _record(f"storage.{name}", getattr(Store, name)))
    CustomObjectsApi.patch_namespaced_custom_object_status = _record(
        "status", CustomObjectsApi.patch_namespaced_custom_object_status
    )
    CoreV1Api.create_namespaced_event = _record("event", CoreV1Api.create_namespaced_event)
