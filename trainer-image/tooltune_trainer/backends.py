"""Two ways to load and save a model behind one interface, and the SFTConfig both train with.

On CUDA, Unsloth's `FastLanguageModel` (4-bit QLoRA when asked, its gradient checkpointing); elsewhere
transformers + peft with the same LoRA settings. `hyperparameters.fullFineTune` trains all weights
instead of adapters. Both are trained by `trl.SFTTrainer` and saved in the same layout:

    <dir>/adapter_config.json + adapter_model.safetensors   (LoRA)   or   config.json + model.safetensors
    <dir>/tokenizer.json, tokenizer_config.json, chat_template.jinja
    <dir>/merged/                                            (output.mergedWeights, LoRA only)

`TOOLTUNE_BACKEND_IMPL=unsloth|transformers` forces an implementation (the suite runs Unsloth on CPU).
Under DDP (several processes, tooltune_trainer.launcher) it is always transformers + peft: the installed
Unsloth refuses multi-GPU setups.
Unsloth is imported only on its path: it is slow to import and patches transformers.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tooltune_api.models import LAB_TARGET_MODULES, Precision, ToolTuneJobSpec

from tooltune_trainer import ranks

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # "<quota> <period>" in µs, or "max <period>"

BACKEND_IMPL_ENV = "TOOLTUNE_BACKEND_IMPL"
UNSLOTH, TRANSFORMERS = "unsloth", "transformers"
LLAMA_CPP_ENV = "TOOLTUNE_LLAMA_CPP"  # a llama.cpp checkout with convert_hf_to_gguf.py, for output.gguf
MERGED_DIR = "merged"
GGUF_FILE = "model.gguf"


class BackendError(ValueError):
    """The spec asks for something this machine or backend cannot do; the message names the field."""


def detect_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def backend_impl(device: str) -> str:
    forced = os.environ.get(BACKEND_IMPL_ENV, "").strip().lower()
    if forced and forced not in (UNSLOTH, TRANSFORMERS):
        raise BackendError(f"{BACKEND_IMPL_ENV}={forced!r}: use {UNSLOTH!r} or {TRANSFORMERS!r}")
    if ranks.from_env().distributed:
        return TRANSFORMERS  # see impl_reason
    return forced or (UNSLOTH if device == "cuda" else TRANSFORMERS)


def impl_reason(device: str) -> str | None:
    """Why backend_impl is not the one a single process would use here, for the log, status and an Event."""
    world = ranks.from_env().world_size
    if world <= 1:
        return None
    return (
        f"{world} training processes (one per GPU) train with transformers + peft"
        f"{' (QLoRA through bitsandbytes)' if device == 'cuda' else ''} under DDP: the installed Unsloth "
        "trains on one GPU only"
    )


def cpu_budget(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU limit (a pod's cpu limit)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
        return max(1, min(cpus, int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 file, or "max": no limit
        return cpus


def prepare(device: str) -> str:
    """Import Unsloth before anything imports transformers, when it will be used; returns the impl name.

    On CPU, torch would start a thread per core of the node whatever the pod's cpu limit; threads beyond the
    limit are throttled and spin on each other, so training uses the budget (unless OMP_NUM_THREADS says).
    """
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(cpu_budget())
    impl = backend_impl(device)
    if impl == UNSLOTH:
        os.environ.setdefault("UNSLOTH_SKIP_TORCHVISION_CHECK", "1")
        import unsloth  # noqa: F401
    return impl


def check_supported(spec: ToolTuneJobSpec, device: str) -> None:
    """Refuse, before any data or GPU time is spent, what this run could not deliver."""
    hp = spec.hyperparameters
    if device != "cuda" and hp.precision == Precision.FP16:
        raise BackendError("hyperparameters.precision: fp16 needs a CUDA GPU; use auto, bf16 or fp32 on CPU")
    if spec.output.merged_weights and hp.full_fine_tune:
        raise BackendError(
            "output.mergedWeights: a full fine-tune has no adapter to merge; unset one of them"
        )
    if spec.output.gguf and not _gguf_converter():
        raise BackendError(
            f"output.gguf: GGUF export needs llama.cpp's convert_hf_to_gguf.py (set {LLAMA_CPP_ENV} to a "
            "llama.cpp checkout in the image); unset output.gguf or use an image that has it"
        )


def _gguf_converter() -> Path | None:
    root = os.environ.get(LLAMA_CPP_ENV)
    script = Path(root) / "convert_hf_to_gguf.py" if root else None
    return script if script and script.is_file() else None


def mixed_precision(precision: str, device: str) -> dict[str, bool]:
    """fp16/bf16 flags for the SFTConfig: auto is bf16 where the GPU has it, else fp16; fp32 on CPU."""
    if precision == Precision.AUTO:
        if device != "cuda":
            return {"bf16": False, "fp16": False}
        import torch

        bf16 = torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": not bf16}
    return {"bf16": precision == Precision.BF16, "fp16": precision == Precision.FP16}


# ---------------------------------------------------------------- loading


def load_model(spec: ToolTuneJobSpec, device: str, source: str | None = None) -> tuple[Any, Any]:
    """(model ready to train, tokenizer) of source (default spec.baseModel); LoRA unless fullFineTune."""
    impl = backend_impl(device)
    loader = _load_unsloth if impl == UNSLOTH else _load_transformers
    return loader(spec, device, str(source or spec.base_model))


def _load_transformers(spec: ToolTuneJobSpec, device: str, source: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hp = spec.hyperparameters
    quantization = None
    if hp.load_in_4bit and device == "cuda" and not hp.full_fine_tune:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    tokenizer = AutoTokenizer.from_pretrained(source)
    # A quantized model is placed when loaded: under DDP, on this process's own GPU.
    placement = {"device_map": {"": ranks.from_env().local_rank}} if quantization else {}
    model = AutoModelForCausalLM.from_pretrained(
        source, quantization_config=quantization, dtype="auto", **placement
    )
    if hp.full_fine_tune:
        return model, tokenizer
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=hp.lora.r,
        lora_alpha=hp.lora.alpha,
        lora_dropout=hp.lora.dropout,
        target_modules=_target_modules(hp.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), tokenizer


def _target_modules(requested: list[str]) -> list[str] | str:
    """The lab's default list names Llama's projections; on other layouts (Phi-3's fused qkv_proj and
    gate_up_proj) the same intent, every linear layer of the blocks, is PEFT's "all-linear"."""
    return "all-linear" if requested == LAB_TARGET_MODULES else requested


def _load_unsloth(spec: ToolTuneJobSpec, device: str, source: str) -> tuple[Any, Any]:
    os.environ.setdefault("UNSLOTH_SKIP_TORCHVISION_CHECK", "1")
    from unsloth import FastLanguageModel

    hp = spec.hyperparameters
    checkpointing = "unsloth" if device == "cuda" else False
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=source,
        max_seq_length=hp.max_seq_length,
        dtype=None,
        load_in_4bit=hp.load_in_4bit and device == "cuda" and not hp.full_fine_tune,
        full_finetuning=hp.full_fine_tune,
        use_gradient_checkpointing=checkpointing,
        random_state=spec.dataset.seed,
    )
    if hp.full_fine_tune:
        return model, tokenizer
    model = FastLanguageModel.get_peft_model(
        model,
        r=hp.lora.r,
        lora_alpha=hp.lora.alpha,
        lora_dropout=hp.lora.dropout,
        target_modules=hp.lora.target_modules,
        bias="none",
        use_gradient_checkpointing=checkpointing,
        random_state=spec.dataset.seed,
    )
    return model, tokenizer


# ---------------------------------------------------------------- training settings


@dataclass(frozen=True)
class Batching:
    """How examples become batches (benchmarks/trainer_throughput.py measures each)."""

    padding_free: bool = False
    packing: bool = False
    # Batches of similar lengths: less padding, but the steps are no longer random samples of the data.
    group_by_length: bool = False


def default_batching(device: str) -> Batching:
    """Padded batches drawn at random, so that every optimiser step sees a sample of the whole dataset.

    Grouping by length (transformers' LengthGroupedSampler) cut padding from 46% to 15% on the Task API
    data, but it sorts megabatches of up to 50 batches by length, and length follows the kind of request:
    consecutive steps then trained on one kind each and the model learnt much slower (validation loss
    0.92 against a plain shuffled loop's 0.58 after 400 steps of 8 on 2000 generated examples; random
    batches 0.58; tests/integration/test_learning_parity.py). Random batches of 16 are 46% padding; a random
    step of 16 split into length-sorted micro-batches of 4 would be 12.5% (not yet measured for speed).
    """
    return Batching()


def sft_config(
    spec: ToolTuneJobSpec, output_dir: Path, device: str, has_eval: bool, batching: Batching | None = None
) -> Any:
    from trl import SFTConfig

    hp = spec.hyperparameters
    batching = batching or default_batching(device)
    precision = mixed_precision(hp.precision, device)
    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=hp.epochs,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        warmup_steps=hp.warmup_ratio,  # a float below 1 is a share of the total steps
        lr_scheduler_type=hp.scheduler,
        weight_decay=hp.weight_decay,
        logging_steps=hp.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=spec.evaluation.every_steps,
        save_strategy="steps",
        save_steps=spec.checkpoints.every_steps,
        save_total_limit=spec.checkpoints.keep,
        max_length=None if batching.padding_free and not batching.packing else hp.max_seq_length,
        padding_free=batching.padding_free,
        packing=batching.packing,
        train_sampling_strategy="group_by_length" if batching.group_by_length else "random",
        seed=spec.dataset.seed,
        data_seed=spec.dataset.seed,
        use_cpu=device != "cuda",
        ddp_backend=ranks.ddp_backend(device) if ranks.from_env().distributed else None,
        # LoRA adapters and full weights are all used in every forward pass: no extra autograd traversal
        ddp_find_unused_parameters=False,
        gradient_checkpointing=device == "cuda",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        bf16=precision["bf16"],
        fp16=precision["fp16"],
    )


def trainer_class(device: str) -> type:
    """trl.SFTTrainer, or on CPU a subclass computing the loss from the model's own logits.

    TRL 1.15 computes the SFT loss with a fused LM head built on Triton kernels, which have no CPU driver
    ("0 active drivers"); the model's own cross-entropy gives the same loss over the same labels (the
    token accuracy and entropy metrics TRL derives from the fused head are not logged on CPU).
    """
    from transformers import Trainer
    from trl import SFTTrainer

    if device == "cuda":
        return SFTTrainer

    class PlainLossSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return PlainLossSFTTrainer


# ---------------------------------------------------------------- saving


def save_model(model: Any, tokenizer: Any, dest: Path, spec: ToolTuneJobSpec, device: str) -> list[str]:
    """Save adapter (or full weights) and tokenizer into dest, plus merged weights and GGUF when asked.

    Returns the names of what was written besides the adapter/weights, for the run summary."""
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    extras = []
    lora = not spec.hyperparameters.full_fine_tune
    if spec.output.merged_weights or (spec.output.gguf and lora):  # GGUF is converted from full weights
        _merge(model, tokenizer, dest / MERGED_DIR, backend_impl(device))
        extras.append(MERGED_DIR)
    if spec.output.gguf:
        _export_gguf(dest / MERGED_DIR if lora else dest, dest / GGUF_FILE)
        extras.append(GGUF_FILE)
    return extras


def _merge(model: Any, tokenizer: Any, dest: Path, impl: str) -> None:
    if impl == UNSLOTH:
        model.save_pretrained_merged(str(dest), tokenizer, save_method="merged_16bit")
        return
    merged = model.merge_and_unload()
    merged.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _export_gguf(source: Path, target: Path) -> None:
    import subprocess
    import sys

    script = _gguf_converter()
    if script is None:  # check_supported refuses this before training; kept for direct callers
        raise BackendError(f"output.gguf: set {LLAMA_CPP_ENV} to a llama.cpp checkout")
    subprocess.run([sys.executable, str(script), str(source), "--outfile", str(target)], check=True)


def clear_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
