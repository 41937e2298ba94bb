"""The DPO job body: TRL `DPOTrainer` + PEFT LoRA, with speed defaults chosen from the machine.

The runner calls `run_dpo(spec, ctx)` in the job's child process. By hand (tiny model, CPU):

    python -c "from pathlib import Path; from protocol.jobs import DpoJobSpec; \
      from services.trainer.jobs.context import JobContext; from services.trainer.jobs.dpo import run_dpo; \
      print(run_dpo(DpoJobSpec(base_model='tiny', dataset_id='x', output_name='a'), JobContext( \
      job_id='j', work_dir=Path('/tmp/w'), output_dir=Path('/tmp/o'), base_model_path='.cache/models/tiny', \
      train_path=Path('pairs.jsonl')))['metrics'])"

What it decides by itself (each decision is a small function in training_device.py /
training_config.py / training_data.py, recorded in the result's `config`):
bf16 on GPU, fp32 on CPU; micro-batch and activation checkpointing from free GPU memory
(checkpointing only when a pair does not fit without it); precomputed reference log-probs
(the spec's default) with a bigger pre-pass batch; length-grouped micro-batches (TRL 1.16 has
no padding-free DPO); Liger kernels where importable on CUDA; sdpa attention without cuDNN's
kernels on CUDA; PEFT's per-layer input cast to fp32 switched off; 8-bit Adam moments only where
weights and LoRA state would take most of one GPU (`choose_optimizer`).

Writes the adapter (adapter_config.json, adapter_model.safetensors, tokenizer files) into
`ctx.output_dir` and nothing else; TRL's scratch goes to `ctx.work_dir`.

Under `accelerate launch` (services/trainer/distributed.py; WORLD_SIZE > 1: FSDP2 on GPUs,
DDP over gloo on CPU) every rank runs this function. What changes there: under FSDP the
memory plan counts 1/N of the weights (plus two unsharded layers); every rank takes the
smallest free memory of all ranks, so all pick the same micro-batch; the model loads on the
host (under FSDP rank 0 reads, the others get their shards when FSDP wraps it) instead of
onto one card; the reference log-probs are computed in the training step (no pre-pass, see
`distributed_overrides`); the LoRA tensors are gathered from their shards on every rank
and only rank 0 writes the adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from protocol.jobs import DpoJobSpec
from services.trainer.distributed import (
    check_supported,
    distributed_overrides,
    gather_adapter_state,
    init_process_group,
    min_across_ranks,
    process_rank,
    sharded_shape,
    strategy,
    world_size,
)
from services.trainer.jobs.context import JobContext
from services.trainer.jobs.training_config import (
    SpeedChoices,
    check_parent_compatible,
    dpo_config_kwargs,
    lora_config,
    loss_types,
)
from services.trainer.jobs.training_data import (
    DatasetError,
    LengthGroupedSampler,
    LoadedPairs,
    load_pairs,
    read_rows,
    tokenize_pair,
)
from services.trainer.jobs.training_device import (
    ModelShape,
    bitsandbytes_importable,
    bitsandbytes_optimizer_usable,
    check_quantization,
    choose_optimizer,
    count_parameters,
    liger_importable,
    plan_memory,
    probe_free_gpu_bytes,
    resolve_device,
    training_dtype,
    use_cudnn_attention,
    use_liger_kernel,
)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# PyTorch's own fused attention: works on CPU and CUDA and needs no extra package
# (flash-attn cannot be installed here; TRL's padding-free path, which needed it, is off in 1.16).
ATTN_IMPLEMENTATION = "sdpa"


class JobInputError(ValueError):
    """A path the runner should have provided is missing."""


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _load_base_model(path: str, dtype: str, device: str, load_in_4bit: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {
        "dtype": getattr(torch, dtype),
        "attn_implementation": ATTN_IMPLEMENTATION,
    }
    if device == "cuda":
        # Straight onto the card: a 32B model never has to fit in host memory twice.
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def _read_adapter_config(path: Path) -> dict[str, Any]:
    config_file = path / "adapter_config.json"
    if not config_file.exists():
        raise JobInputError(f"parent adapter {path} has no adapter_config.json")
    data: dict[str, Any] = json.loads(config_file.read_text())
    return data


def _make_trainer_class() -> Any:
    from datasets import Dataset
    from trl import DPOTrainer

    class LengthGroupedDPOTrainer(DPOTrainer):
        """DPOTrainer drawing micro-batches of similar length (see training_data.py)."""

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            data = self.train_dataset
            if not isinstance(data, Dataset) or "length" not in data.column_names:
                return super()._get_train_sampler(train_dataset)
            return LengthGroupedSampler(
                data["length"], self.args.per_device_train_batch_size, self.args.seed
            )

    return LengthGroupedDPOTrainer


def disable_lora_input_cast(model: Any) -> int:
    """Turn off PEFT's cast of every LoRA layer's input to the adapter's dtype; returns how
    many layers had it.

    The LoRA weights are fp32 (master weights for Adam), so PEFT 0.21 casts each adapted
    projection's bf16 input to fp32 (`_cast_input_dtype`), and bf16 autocast casts it back
    for the matmul: two copies of each of the seven projections' inputs, forward and
    backward, and the fp32 copy is kept for backward. Measured on an H100 at the 7B shape:
    `aten::copy_` was 18% of GPU time, and the job's peak fell from 70.1 to 62.3 GB without
    it (docs/benchmarks.md, section 3). Under autocast the matmul runs in bf16 either way;
    the fp32 weights and fp32 Adam states stay. In fp32 (CPU) the cast is a no-op anyway.
    `cast_input_dtype_enabled` is PEFT's own switch (peft.helpers.disable_input_dtype_casting
    sets it too, as a context manager; the job needs it for the whole of training).
    """
    switched = 0
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
            switched += 1
    return switched


def apply_liger_before_prepass(model: Any, args: Any) -> None:
    """Patch the model with the Liger kernels before the trainer is built.

    The Trainer applies them only in `train()`, after TRL's constructor has run the reference
    pre-pass: the precomputed reference log-probs then came from the stock RMSNorm, SwiGLU and
    RoPE and the policy's from Liger's, and at step 1, where policy and reference are the same
    model, the loss was 0.635-0.746 instead of ln 2 (sums of a few hundred bf16 per-token
    values differ by about a nat between the two). Patched first, both passes use the same
    kernels and step 1 gives 0.6931, margin 0.0000 (H200, docs/benchmarks.md "Loss curves");
    `train()` patching again changes nothing. The config is the one TRL hands the Trainer.
    """
    from transformers.integrations.liger import apply_liger_kernel

    apply_liger_kernel(
        model, {**(args.liger_kernel_config or {}), "fused_linear_cross_entropy": False}
    )


@contextlib.contextmanager
def _no_weight_hashing(key: str) -> Iterator[None]:
    """Skip TRL's fingerprint of the reference weights while the trainer is built.

    With precompute_ref_log_probs, TRL 1.16 sha256-hashes every weight (copied to host and
    upcast to fp32: ~30 GB at 7B, ~130 GB at 32B) only to name the cache of the reference
    log-probs. Our datasets live in memory, where `datasets` names that cache randomly in a
    per-process temp folder and never reuses it, so the hash buys nothing and costs tens of
    seconds to minutes of an epoch. `key` (job, base, parent) stands in for it.
    """
    import trl.trainer.dpo_trainer as dpo_module

    original = dpo_module.hash_module
    dpo_module.hash_module = lambda module: key
    try:
        yield
    finally:
        dpo_module.hash_module = original


def _save_adapter(
    model: Any,
    tokenizer: Any,
    work_dir: Path,
    output_dir: Path,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """Only the trained adapter (`default`, not TRL's frozen `ref` copy) and the tokenizer;
    PEFT's README goes to the scratch folder, not into the registry. `state_dict`: the
    gathered LoRA tensors of an FSDP model (its own parameters are shards)."""
    staging = work_dir / "adapter-save"
    if staging.exists():
        shutil.rmtree(staging)
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(
        str(staging), selected_adapters=["default"], safe_serialization=True, **extra
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.move(str(staging / name), str(output_dir / name))
    tokenizer.save_pretrained(str(output_dir))


def run_dpo(spec: DpoJobSpec, ctx: JobContext) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoConfig, AutoTokenizer, PrinterCallback, set_seed
    from trl import DPOConfig

    from services.trainer.jobs.training_callbacks import ProgressCallback
    from services.trainer.jobs.training_eval import heldout_metrics

    log = ctx.log
    if ctx.train_path is None:
        raise JobInputError("the DPO job has no training dataset path")

    # Cheap checks first: a bad spec fails before any model loads.
    device = resolve_device(ctx.device, torch.cuda.is_available())
    check_quantization(spec.load_in_4bit, device, bitsandbytes_importable())
    dtype = training_dtype(device)
    loss_types(spec.dpo.loss_type)
    parent = ctx.parent_adapter_path
    parent_config = _read_adapter_config(parent) if parent is not None else None
    peft_config = lora_config(spec.lora) if parent is None else None
    if parent_config is not None:
        overridden = check_parent_compatible(spec, parent_config)
        if overridden:
            log.warning("iterative DPO keeps the parent's LoRA shape: %s", ", ".join(overridden))
    rank = int(parent_config["r"]) if parent_config is not None else spec.lora.r
    processes = world_size()
    check_supported(processes, spec.load_in_4bit)
    if processes > 1:
        # Before any model loads: transformers loads FSDP models rank-0-only only once the
        # process group exists, and the memory plan below needs every rank's free memory.
        init_process_group(device)
    is_main = process_rank() == 0

    # The job log gets one line a step from ProgressCallback; datasets' bars would add noise.
    datasets.disable_progress_bars()
    set_seed(spec.seed)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(ctx.base_model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train: LoadedPairs = load_pairs(ctx.train_path, tokenizer, spec.dpo.max_length)
    log.info(
        "training pairs: %d kept, %d dropped over max_length=%d, longest %d tokens",
        len(train.dataset),
        train.dropped,
        spec.dpo.max_length,
        train.longest,
    )

    model_config = AutoConfig.from_pretrained(ctx.base_model_path)
    shape = ModelShape.from_config(model_config, count_parameters(model_config))
    liger = use_liger_kernel(device, liger_importable())
    free_bytes = probe_free_gpu_bytes() if device == "cuda" else None
    if processes > 1:
        free_bytes = min_across_ranks(free_bytes)
    plan_shape = sharded_shape(shape, processes) if strategy(device) == "fsdp2" else shape
    optimizer, optimizer_reason = choose_optimizer(
        spec.dpo.optimizer,
        plan_shape,
        device=device,
        free_bytes=free_bytes,
        r=rank,
        dtype=dtype,
        load_in_4bit=spec.load_in_4bit,
        processes=processes,
        eight_bit_usable=device == "cuda" and bitsandbytes_optimizer_usable(),
    )
    log.info("optimizer: %s", optimizer_reason)
    plan = plan_memory(
        plan_shape,
        device=device,
        free_bytes=free_bytes,
        longest_pair_tokens=train.longest,
        r=rank,
        dtype=dtype,
        load_in_4bit=spec.load_in_4bit,
        optimizer=optimizer,
        requested_micro_batch=spec.dpo.per_device_train_batch_size,
        requested_checkpointing=spec.dpo.gradient_checkpointing,
        use_liger_kernel=liger,
    )
    choices = SpeedChoices(
        device=device,
        dtype=dtype,
        plan=plan,
        use_liger_kernel=liger,
        attn_implementation=ATTN_IMPLEMENTATION,
        length_grouped_batches=True,
        cudnn_attention=use_cudnn_attention(device),
        optimizer=optimizer,
    )
    log.info("speed choices: %s", choices.as_dict())
    if device == "cuda" and not choices.cudnn_attention:
        # Process-wide, and the job has its own process. Why: training_device.use_cudnn_attention.
        torch.backends.cuda.enable_cudnn_sdp(False)

    dpo_kwargs = dpo_config_kwargs(spec, choices, ctx.work_dir)
    overrides = distributed_overrides(processes, device, dpo_kwargs)
    if overrides:
        log.info("%d processes (%s): %s", processes, strategy(device), overrides)
    dpo_kwargs.update(overrides)
    args = DPOConfig(**dpo_kwargs)
    # Under FSDP the model loads on the host: rank 0 reads the weights, the other ranks
    # build it on `meta`, and FSDP places each rank's shard on its GPU when it wraps it.
    load_device = device if processes == 1 else "cpu"
    model = _load_base_model(ctx.base_model_path, dtype, load_device, spec.load_in_4bit)
    if parent is not None:
        from peft import PeftModel

        # No peft_config: TRL copies this adapter as a frozen `ref` adapter, so the parent
        # (the previous stage) is the reference and the `default` copy is trained.
        model = PeftModel.from_pretrained(model, str(parent), is_trainable=True)

    if choices.use_liger_kernel:
        apply_liger_before_prepass(model, args)
    progress = ProgressCallback(ctx.emit)
    trainer_class = _make_trainer_class()
    started = time.monotonic()
    fingerprint = hashlib.sha256(
        f"{ctx.job_id}|{ctx.base_model_path}|{parent}|{spec.seed}".encode()
    ).hexdigest()
    with _no_weight_hashing(fingerprint):
        # Builds the PEFT model and runs the reference pre-pass (precompute_ref_log_probs).
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=train.dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[progress],
        )
    # After construction: TRL wraps the model in PEFT there (and the reference pre-pass runs
    # with the adapter disabled, where the cast does not happen). Why: disable_lora_input_cast.
    cast_switched = disable_lora_input_cast(trainer.model)
    log.info("LoRA input cast to fp32 switched off in %d layers", cast_switched)
    # disable_tqdm makes the Trainer print every log dict to stdout; ProgressCallback logs
    # and reports the same numbers.
    trainer.remove_callback(PrinterCallback)
    prepass_seconds = time.monotonic() - started
    output = trainer.train()
    wall = time.monotonic() - started

    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    reference_adapter = "ref" if "ref" in peft_model.peft_config else None
    if parent is not None and reference_adapter is None:
        raise RuntimeError(
            "TRL did not keep the parent adapter as the reference (no `ref` adapter)"
        )

    if processes > 1:
        # A collective: every rank gathers the LoRA shards, rank 0 keeps the full tensors.
        adapter_state = gather_adapter_state(peft_model, "default", keep=is_main)
        if is_main:
            _save_adapter(peft_model, tokenizer, ctx.work_dir, ctx.output_dir, adapter_state)
    else:
        _save_adapter(peft_model, tokenizer, ctx.work_dir, ctx.output_dir)

    train_tokens = int(trainer._total_train_tokens)
    metrics: dict[str, float] = {}
    if progress.last is not None:
        metrics.update(progress.last.metrics)
    metrics.update({k: float(v) for k, v in output.metrics.items() if isinstance(v, int | float)})
    metrics["train_tokens"] = float(train_tokens)
    metrics["tokens_per_second"] = train_tokens / wall if wall > 0 else 0.0
    metrics["reference_prepass_seconds"] = prepass_seconds
    metrics["wall_seconds"] = wall
    metrics["dropped_rows"] = float(train.dropped)

    eval_dropped = 0
    if ctx.eval_path is not None:
        # Under FSDP every rank runs the same held-out batches: each forward all-gathers
        # the layers from all ranks, so no rank may skip one.
        rows = read_rows(ctx.eval_path)
        pairs = [tokenize_pair(tokenizer, r["prompt"], r["chosen"], r["rejected"]) for r in rows]
        kept = [p for p in pairs if p.length <= spec.dpo.max_length]
        eval_dropped = len(pairs) - len(kept)
        if not kept:
            raise DatasetError(
                f"every held-out pair is longer than max_length={spec.dpo.max_length} tokens"
            )
        metrics.update(
            heldout_metrics(
                peft_model,
                kept,
                beta=spec.dpo.beta,
                pad_token_id=tokenizer.pad_token_id,
                batch_size=plan.precompute_ref_batch_size,
                device=trainer.accelerator.device,
                reference_adapter=reference_adapter,
                autocast=trainer.accelerator.autocast,
            )
        )
        log.info(
            "held-out pair accuracy %.3f (reference %.3f), margin %.4f",
            metrics["eval/pair_accuracy"],
            metrics["eval/reference_pair_accuracy"],
            metrics["eval/margin"],
        )

    effective_lora = peft_model.peft_config["default"].to_dict()
    config = {
        "dpo": _json_safe(args.to_dict()),
        "lora": _json_safe(effective_lora),
        **choices.as_dict(),
        "dropped_rows": train.dropped,
        "eval_dropped_rows": eval_dropped,
        "train_rows": len(train.dataset),
        "longest_pair_tokens": train.longest,
        "epoch_tokens": train.tokens,
        "reference": (
            {"kind": "parent_adapter", "path": str(parent)}
            if parent is not None
            else {"kind": "base", "path": ctx.base_model_path}
        ),
        "lora_source": "parent" if parent is not None else "spec",
        "lora_input_cast_disabled_layers": cast_switched,
        "model_parameters": shape.parameters,
        "num_processes": processes,
        "distributed": (
            {"strategy": strategy(device), "overrides": _json_safe(overrides)}
            if processes > 1
            else None
        ),
    }
    return {
        "metrics": metrics,
        "config": config,
        "rank": rank,
        "train_tokens": train_tokens,
        "tokens_per_second": metrics["tokens_per_second"],
    }
