"""Server-side printing for `kubectl get`: the meta.k8s.io/v1 Table of a list, from printer columns.

The ToolTuneJob's columns are read from the CRD's ``additionalPrinterColumns``, so what `kubectl get ttj`
shows here is what a real API server would show for the same CRD and the same objects.
"""

from __future__ import annotations

import copy
import datetime
import functools
import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "manifests" / "crds" / "tooltunejobs.tooltune.dev.yaml"

NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "description": "Name of the object"}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

# Built-in kinds get a short set of columns (a subset of what the API server prints for them).
BUILTIN_COLUMNS: dict[str, list[dict[str, str]]] = {
    "v1/pods": [{"name": "Status", "type": "string", "jsonPath": ".status.phase"}, AGE_COLUMN],
    "batch/v1/jobs": [
        {"name": "Succeeded", "type": "integer", "jsonPath": ".status.succeeded"},
        {"name": "Failed", "type": "integer", "jsonPath": ".status.failed"},
        AGE_COLUMN,
    ],
}

_SEGMENT = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]|\['([^']+)'\]")


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    """The CRD file, parsed once per content (every emulator reads it; YAML parsing is slow)."""
    return copy.deepcopy(_parse_yaml(path.read_text()))


@functools.lru_cache(maxsize=8)
def _parse_yaml(text: str) -> Any:
    return yaml.safe_load(text)


def crd_printer_columns(crd_path: Path = CRD_PATH) -> dict[str, list[dict[str, Any]]]:
    """``group/version/plural`` → the served version's additionalPrinterColumns, from a CRD file."""
    crd = load_crd(crd_path)
    spec = crd["spec"]
    return {
        f"{spec['group']}/{version['name']}/{spec['names']['plural']}": version.get(
            "additionalPrinterColumns", []
        )
        for version in spec["versions"]
    }


def evaluate_jsonpath(obj: Any, path: str) -> Any:
    """Evaluate the simple JSONPath of a printer column (``.a.b[0]['c.d']``); None when absent."""
    position = 0
    value = obj
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    while position < len(path):
        match = _SEGMENT.match(path, position)
        if match is None:
            raise ValueError(f"unsupported JSONPath {path!r} at character {position}")
        key, index, quoted = match.groups()
        if index is not None:
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
        else:
            value = value.get(key or quoted) if isinstance(value, dict) else None
        if value is None:
            return None
        position = match.end()
    return value


def human_age(timestamp: str | None, now: datetime.datetime | None = None) -> str:
    """`kubectl`'s short age: 42s, 5m, 3h, 2d."""
    if not timestamp:
        return "<unknown>"
    moment = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int(((now or datetime.datetime.now(datetime.UTC)) - moment).total_seconds()))
    for limit, size, unit in ((120, 1, "s"), (2 * 3600, 60, "m"), (2 * 86400, 3600, "h")):
        if seconds < limit:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"


def cell(obj: dict[str, Any], column: dict[str, Any]) -> Any:
    value = evaluate_jsonpath(obj, column["jsonPath"])
    if value is None:
        return None
    if column.get("type") == "date":
        return human_age(str(value))
    if isinstance(value, (dict, list)):
        return str(value)
    return value


def table(
    items: list[dict[str, Any]], columns: list[dict[str, Any]], resource_version: str
) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table: a Name column, then the given columns, one row per object."""
    definitions = [NAME_COLUMN] + [
        {
            "name": column["name"],
            "type": column.get("type", "string"),
            "format": column.get("format", ""),
            "description": column.get("description", ""),
            "priority": column.get("priority", 0),
        }
        for column in columns
    ]
    rows = [
        {
            "cells": [item["metadata"]["name"], *(cell(item, column) for column in columns)],
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": item["metadata"],
            },
        }
        for item in items
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions,
        "rows": rows,
    }
