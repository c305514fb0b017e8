"""Every model family side by side on the Task API data: its tool-call format, tokens, loss share and scores.

Each family is a tiny random model of its own architecture with a tokenizer carrying its real chat template
(tests/fixtures/families.py), trained by tooltune's recipe with the example job's settings for a few epochs
on CPU. The scores of such short runs are low and noisy; what the table shows is that every family trains,
evaluates and parses in its own format, and how much longer some formats make an example (Llama 3.1 puts
indented tool schemas in the first user turn) and how small a share of tokens carries loss.

    .venv/bin/python benchmarks/model_families.py [--epochs 2] [--families llama3,qwen2.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "api"), str(REPO / "trainer-image"), str(REPO)]

from tooltune_trainer import recipe  # noqa: E402
from tooltune_trainer.data import read_jsonl, validate_examples  # noqa: E402
from tooltune_trainer.formatting import IGNORE_INDEX, training_rows  # noqa: E402
from tooltune_trainer.tool_formats import prepare_tokenizer  # noqa: E402

from tests.fixtures.families import FAMILIES, build_family_model  # noqa: E402

DATA = REPO / "examples" / "task-api" / "task_api_tool_calling.jsonl"
JOB = REPO / "examples" / "task-api" / "tooltunejob.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    examples = validate_examples(list(read_jsonl(DATA))).examples
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families.split(","):
            model_dir = build_family_model(FAMILIES[name], examples, Path(tmp) / name)
            contract = recipe.contract_from_job_file(JOB, Path(tmp))
            spec = contract.spec.model_copy(deep=True)
            spec.base_model = str(model_dir)
            spec.dataset.train = str(DATA)
            spec.hyperparameters.epochs = args.epochs
            spec.hyperparameters.max_seq_length = 2048
            spec.evaluation.max_examples = 20
            spec.output.uri = str(Path(tmp) / name / "out")
            result = recipe.run(contract.model_copy(update={"spec": spec}), Path(tmp) / name / "work",
                                print_logs=False)  # fmt: skip
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            fmt = prepare_tokenizer(tokenizer)
            sample = training_rows(tokenizer, examples[:50], 4096, fmt)
            scores = result.evaluation["metrics"]
            rows.append({
                "family": name,
                "format": fmt.name,
                "tokens per example": statistics.median(len(r["input_ids"]) for r in sample),
                "share trained": round(sum(label != IGNORE_INDEX for r in sample for label in r["labels"])
                                       / sum(len(r["labels"]) for r in sample), 3),
                "steps": result.steps,
                "seconds": round(result.seconds),
                "eval loss": round(result.eval_loss or 0, 3),
                **{key: scores[key] for key in ("toolNameAccuracy", "argumentsExactMatch", "validJsonRate",
                                                "noCallRate", "falseCallRate")},
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[column]) for column in columns) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
