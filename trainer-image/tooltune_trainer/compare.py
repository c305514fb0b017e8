"""`tooltune compare`: finished runs side by side, read from what each left in its output's final/.

A run is a local output directory (or its final/) or an output URI (s3://…). From final/ it reads
lineage.json (backend, base model, steps, metrics), evaluation.json (the tool-call scores),
train_log.json (training time and tokens, GPU backends) and smoke.json (billed tokens, OpenAI backend).
What a run did not leave is shown as missing, never guessed.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooltune_api.models import PriceTable
from tooltune_api.pricing import dollars, openai_training_price

from tooltune_trainer.storage import StorageError, Store, join

FINAL_DIR = "final"
FILES = ("lineage.json", "evaluation.json", "train_log.json", "smoke.json")
# Scores shown first, in the order the lab reads them; any other score a report carries follows. A score is
# a share (its name ends so); counts such as examples or expectedCalls are not scores.
SCORE_ORDER = ("toolNameAccuracy", "argumentsExactMatch", "validJsonRate", "noCallRate")
SCORE_SUFFIXES = ("Accuracy", "Rate", "Match")


class CompareError(Exception):
    """A run that cannot be read; str() names it and says why."""


@dataclass
class RunFiles:
    """The JSON documents one run left in final/ (None for each it did not leave)."""

    name: str
    documents: dict[str, Any] = field(default_factory=dict)

    def get(self, file: str) -> Any:
        return self.documents.get(file)


def read_run(run: str, store: Store) -> RunFiles:
    """The final/ documents of a local directory or an output URI."""
    found = RunFiles(run)
    if "://" in run:
        final_uri = join(run, FINAL_DIR)
        with tempfile.TemporaryDirectory(prefix="tooltune-compare-") as scratch:
            try:
                present = set(store.list(final_uri))
                for file in (file for file in FILES if file in present):
                    local = store.fetch(join(final_uri, file), Path(scratch) / file)
                    found.documents[file] = _load(run, local)
            except StorageError as error:
                raise CompareError(f"{run}: {error}") from None
    else:
        base = Path(run)
        final = base if (base / "lineage.json").exists() else base / FINAL_DIR
        for file in FILES:
            if (final / file).is_file():
                found.documents[file] = _load(run, final / file)
    if not found.documents:
        raise CompareError(f"{run}: no finished run here (none of {', '.join(FILES)} in {FINAL_DIR}/)")
    return found


def _load(run: str, path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CompareError(f"{run}: {path.name} is not readable JSON ({error})") from None


def _last(log: Any, key: str) -> float | None:
    for entry in reversed(log if isinstance(log, list) else []):
        if isinstance(entry, dict) and isinstance(entry.get(key), int | float):
            return float(entry[key])
    return None


def _scores(evaluation: dict[str, Any], lineage: dict[str, Any]) -> dict[str, float]:
    source = evaluation.get("metrics")
    if not isinstance(source, dict):
        source = lineage.get("metrics") or {}
    return {
        key: float(value)
        for key, value in source.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key.endswith(SCORE_SUFFIXES)
    }


def run_row(files: RunFiles, prices: PriceTable) -> dict[str, Any]:
    """One row of the table: what the run was, what it took, what it scored."""
    lineage = files.get("lineage.json") or {}
    evaluation = files.get("evaluation.json") if isinstance(files.get("evaluation.json"), dict) else {}
    log = files.get("train_log.json")
    smoke = files.get("smoke.json") or {}
    fine_tuned = str(smoke.get("fineTunedModel") or "")
    row: dict[str, Any] = {
        "run": files.name,
        "backend": lineage.get("backend") or ("openai" if smoke else None),
        "baseModel": lineage.get("baseModel")
        or (fine_tuned.split(":")[1] if fine_tuned.count(":") else None),
        "steps": (lineage.get("metrics") or {}).get("steps") or _last(log, "step"),
        "seconds": _last(log, "train_runtime"),
        "tokens": _last(log, "num_tokens") or smoke.get("trainedTokens"),
        "costUsd": (lineage.get("cost") or {}).get("spentUsd")
        or (lineage.get("cost") or {}).get("billedUsd"),
        "scores": _scores(evaluation, lineage),
    }
    price = openai_training_price(row["baseModel"] or "", prices.openai_training_per_million_tokens)
    if row["costUsd"] is None and smoke.get("trainedTokens") and price is not None:
        row["costUsd"] = dollars(int(smoke["trainedTokens"]), price)  # OpenAI bills trained_tokens
    gate = evaluation.get("gate")
    if isinstance(gate, dict) and gate.get("checks") == []:
        pass  # the run had no gate rules: nothing to show
    elif isinstance(gate, dict) and isinstance(gate.get("passed"), bool):
        row["gate"] = "passed" if gate["passed"] else "failed"
    elif isinstance(lineage.get("promoted"), bool):
        row["gate"] = "passed" if lineage["promoted"] else "failed"
    return row


def score_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every score any run has: the lab's four first, then the rest by name."""
    present = {key for row in rows for key in row["scores"]}
    return [key for key in SCORE_ORDER if key in present] + sorted(present - set(SCORE_ORDER))
