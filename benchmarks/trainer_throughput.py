"""Trainer throughput on the tiny model and the Task API data, in one run.

(a) tooltune's recipe against a bare TRL SFTTrainer script with the same settings (same model, split,
    batch size, learning rate, schedule, epochs): steps per second and their ratio (target >= 0.97).
    The bare script lets TRL do its own data preparation (conversational rows, `assistant_only_loss`).
    On CPU, TRL 1.15's stock SFTTrainer cannot train at all (its fused LM head needs Triton's GPU driver),
    so the bare script uses the same one-method loss override tooltune's CPU trainer does.
(b) trained (assistant) tokens per second and padding share for padded (random or grouped by length),
    padding-free and packed (best-fit decreasing) batches, on tooltune's pre-tokenized rows.

    .venv/bin/python benchmarks/trainer_throughput.py [--repeats 2] [--steps 20] [--json out.json]

Timings on a shared machine are noisy: each variant runs `--repeats` times, interleaved, and the
median is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "api"), str(REPO / "trainer-image")]

from tooltune_api.models import TrainerContract  # noqa: E402
from tooltune_trainer import backends, recipe  # noqa: E402
from tooltune_trainer.data import read_jsonl, split_examples, validate_examples  # noqa: E402
from tooltune_trainer.formatting import IGNORE_INDEX, training_rows, trl_conversation  # noqa: E402
from tooltune_trainer.tiny import ensure_tiny_model  # noqa: E402

DATA = REPO / "examples" / "task-api" / "task_api_tool_calling.jsonl"
JOB = REPO / "examples" / "task-api" / "tooltunejob.yaml"
NO_SAVE_OR_EVAL = 10**6  # every-steps values that never trigger within one benchmark epoch


def benchmark_contract(output: Path) -> TrainerContract:
    """The example job, one epoch, no evaluation or checkpoints inside the timed loop, its own output
    (a run finding an earlier run's checkpoint in its output would resume from it and train nothing)."""
    contract = recipe.contract_from_job_file(JOB, output)
    spec = contract.spec.model_copy(deep=True)
    spec.dataset.train = str(DATA)
    spec.hyperparameters.epochs = 1
    spec.checkpoints.every_steps = NO_SAVE_OR_EVAL
    spec.evaluation.every_steps = NO_SAVE_OR_EVAL
    spec.evaluation.max_examples = 1
    spec.evaluation.smoke_prompts = []
    spec.output.uri = str(output / "out")
    return contract.model_copy(update={"spec": spec})


def _train_rate(log_history: list[dict[str, Any]]) -> float:
    return next(entry["train_steps_per_second"] for entry in log_history if "train_steps_per_second" in entry)


def run_tooltune(contract: TrainerContract, workdir: Path) -> float:
    recipe.run(contract, workdir, print_logs=False)
    history = json.loads((workdir / "output" / recipe.FINAL_DIR / recipe.TRAIN_LOG_FILE).read_text())
    return _train_rate(history)


def run_bare_trl(contract: TrainerContract, model_dir: Path, workdir: Path) -> float:
    """What a user would write with TRL alone: conversational rows, assistant_only_loss, SFTConfig."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    spec = contract.spec
    hp = spec.hyperparameters
    examples = validate_examples(read_jsonl(DATA)).examples
    train, _ = split_examples(examples, spec.dataset.effective_validation_split, spec.dataset.seed)
    config = SFTConfig(
        output_dir=str(workdir / "bare"), num_train_epochs=hp.epochs,
        per_device_train_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps, learning_rate=hp.learning_rate,
        warmup_steps=hp.warmup_ratio, lr_scheduler_type=hp.scheduler, max_length=hp.max_seq_length,
        assistant_only_loss=True, use_cpu=True, report_to=[], save_strategy="no", seed=spec.dataset.seed,
        logging_steps=hp.logging_steps, disable_tqdm=True,
    )  # fmt: skip
    trainer = backends.trainer_class("cpu")(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=config,
        train_dataset=Dataset.from_list([trl_conversation(example) for example in train]),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    return trainer.train().metrics["train_steps_per_second"]


def run_batching(
    contract: TrainerContract, model_dir: Path, workdir: Path, batching: backends.Batching, steps: int
) -> dict[str, float]:
    """Trained tokens per second and padding share of `steps` optimizer steps with one batching mode."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = contract.spec
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = validate_examples(read_jsonl(DATA)).examples
    train, _ = split_examples(examples, spec.dataset.effective_validation_split, spec.dataset.seed)
    config = backends.sft_config(spec, workdir / "batching", "cpu", has_eval=False, batching=batching)
    config.max_steps, config.save_strategy = steps, "no"
    trainer = backends.trainer_class("cpu")(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=config,
        train_dataset=Dataset.from_list(training_rows(tokenizer, train, spec.hyperparameters.max_seq_length)),
        processing_class=tokenizer,
    )
    positions = padding = trained = 0
    for index, batch in enumerate(trainer.get_train_dataloader()):
        if index == steps * config.gradient_accumulation_steps:
            break
        positions += batch["input_ids"].numel()
        # padding-free batches are one flattened row with no mask: every position is a real token
        real = (
            batch["input_ids"].numel()
            if "attention_mask" not in batch
            else int(batch["attention_mask"].sum())
        )
        padding += batch["input_ids"].numel() - real
        trained += int((batch["labels"] != IGNORE_INDEX).sum())
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return {
        "trained_tokens_per_second": round(trained / seconds, 1),
        "padding_share": round(padding / positions, 4),
        "trained_share": round(trained / positions, 4),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per batching variant")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tooltune-bench-") as tmp:
        root = Path(tmp)
        examples = validate_examples(read_jsonl(DATA)).examples
        model_dir = ensure_tiny_model(examples, root / "work")
        rates: dict[str, list[float]] = {"tooltune": [], "bare_trl": []}
        for repeat in range(args.repeats):
            contract = benchmark_contract(root / f"repeat-{repeat}")
            rates["tooltune"].append(run_tooltune(contract, root / "work"))
            rates["bare_trl"].append(run_bare_trl(contract, model_dir, root / f"repeat-{repeat}"))
        medians = {name: statistics.median(values) for name, values in rates.items()}
        batching = {
            name: run_batching(contract, model_dir, root / name, mode, args.steps)
            for name, mode in {
                "padded": backends.Batching(),
                "padded_grouped_by_length": backends.Batching(group_by_length=True),
                "padding_free": backends.Batching(padding_free=True),
                "packed_bfd": backends.Batching(padding_free=True, packing=True),
            }.items()
        }
    results = {
        "steps_per_second": {**medians, "runs": rates},
        "ratio_tooltune_to_bare_trl": medians["tooltune"] / medians["bare_trl"],
        "batching": batching,
        "default_batching_cpu": vars(backends.default_batching("cpu")),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
