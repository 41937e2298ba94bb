"""The DPO job body: TRL `DPOTrainer` + PEFT LoRA, with speed defaults chosen from the machine.

The runner calls `run_dpo(spec, ctx)` in the job's child process. By hand (tiny model, CPU):

    python -c "from pathlib import Path; from protocol.jobs import DpoJobSpec; \
      from services.trainer.jobs.context import JobContext; from services.trainer.jobs.dpo import run_dpo; \
      print(run_dpo(DpoJobSpec(base_model='tiny', dataset_id='x', output_name='a'), JobContext( \
      job_id='j', work_dir=Path('/tmp/w'), output_dir=Path('/tmp/o'), base_model_path='.cache/models/tiny', \
      train_path=Path('pairs.jsonl')))['metrics'])"

`run_dpo` is a few named steps: check the inputs, load the pairs, decide for speed, load
the model, build the trainer (and the reference), train, save, measure. What it decides by
itself (each decision a small function in training_device.py / training_config.py /
packing_plan.py, recorded in the result's `config` and the job log): bf16 on GPU, fp32 on
CPU; micro-batch and activation checkpointing from free GPU memory (checkpointing only when
a pair does not fit without it); shared-prompt packing where the model's attention takes
it (packing.py: the prompt once a pair, pairs end to end, micro-batches sized by tokens),
else length-grouped padded micro-batches; precomputed reference log-probs (the spec's
default); Liger kernels where importable on CUDA; sdpa (or, packed on CUDA, flex) attention
without cuDNN's kernels; PEFT's per-layer input cast to fp32 switched off; 8-bit Adam moments
only where weights and LoRA state would take most of one GPU (`choose_optimizer`).

Writes the adapter (adapter_config.json, adapter_model.safetensors, tokenizer files) into
`ctx.output_dir` and nothing else; TRL's scratch goes to `ctx.work_dir`.

Under `accelerate launch` (services/trainer/distributed.py; WORLD_SIZE > 1: FSDP2 on GPUs,
DDP over gloo on CPU) every rank runs this function. What changes there: under FSDP the
memory plan counts 1/N of the weights (plus two unsharded layers); every rank takes the
smallest free memory of all ranks, so all pick the same micro-batch; the model loads on the
host (under FSDP rank 0 reads, the others get their shards when FSDP wraps it) instead of
onto one card; the reference log-probs are computed in the training step (no pre-pass, see
`distributed_overrides`); pairs are not packed; the LoRA tensors are gathered from their
shards on every rank and only rank 0 writes the adapter.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from protocol.jobs import DpoJobSpec
from services.trainer.distributed import (
    distributed_overrides,
    init_process_group,
    min_across_ranks,
    sharded_shape,
    strategy,
)
from services.trainer.jobs.context import JobContext
from services.trainer.jobs.dpo_inputs import JobInputs, check_inputs
from services.trainer.jobs.dpo_trainer import (
    adapters_built_on,
    apply_liger_before_prepass,
    disable_lora_input_cast,
    heldout_pair_metrics,
    no_weight_hashing,
    save_trained_adapter,
)
from services.trainer.jobs.dpo_trainer import make_trainer_class as _make_trainer_class

# bench/hot_swap.py and the FSDP test worker save adapters exactly as the job does.
from services.trainer.jobs.dpo_trainer import save_adapter as _save_adapter  # noqa: F401
from services.trainer.jobs.packed_varlen import varlen_usable
from services.trainer.jobs.packing_plan import (
    choose_packing,
    flex_attention_importable,
    packed_batch_limits,
)
from services.trainer.jobs.training_config import (
    SpeedChoices,
    dpo_config_kwargs,
    loss_types,
)
from services.trainer.jobs.training_data import (
    LoadedPairs,
    load_pairs,
)
from services.trainer.jobs.training_device import (
    bitsandbytes_optimizer_usable,
    choose_optimizer,
    liger_importable,
    use_cudnn_attention,
    use_liger_kernel,
)
from services.trainer.jobs.training_memory import (
    ModelShape,
    count_parameters,
    plan_memory,
    probe_free_gpu_bytes,
)

# PyTorch's own fused attention: works on CPU and CUDA and needs no extra package
# (flash-attn cannot be installed here). Packed rows on CUDA switch to flex attention.
ATTN_IMPLEMENTATION = "sdpa"


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


def _load_training_pairs(spec: DpoJobSpec, ctx: JobContext) -> tuple[Any, LoadedPairs]:
    from transformers import AutoTokenizer

    assert ctx.train_path is not None  # check_inputs
    tokenizer = AutoTokenizer.from_pretrained(ctx.base_model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train = load_pairs(ctx.train_path, tokenizer, spec.dpo.max_length)
    ctx.log.info(
        "training pairs: %d kept, %d dropped over max_length=%d, longest %d tokens",
        len(train.dataset),
        train.dropped,
        spec.dpo.max_length,
        train.longest,
    )
    return tokenizer, train


def _decide_speed(
    spec: DpoJobSpec, ctx: JobContext, job: JobInputs, train: LoadedPairs, model_config: Any
) -> tuple[SpeedChoices, ModelShape]:
    """Optimizer, memory plan and packing from the machine, the model's shape and the data."""
    device, log = job.device, ctx.log
    shape = ModelShape.from_config(model_config, count_parameters(model_config))
    liger = use_liger_kernel(device, liger_importable())
    free_bytes = probe_free_gpu_bytes() if device == "cuda" else None
    if job.processes > 1:
        # Every rank plans with the tightest card, so all pick the same micro-batch.
        free_bytes = min_across_ranks(free_bytes)
    fsdp = strategy(device) == "fsdp2"
    plan_shape = sharded_shape(shape, job.processes) if fsdp else shape
    common: dict[str, Any] = {
        "device": device,
        "free_bytes": free_bytes,
        "r": job.rank,
        "dtype": job.dtype,
    }
    optimizer, optimizer_reason = choose_optimizer(
        spec.dpo.optimizer,
        plan_shape,
        **common,
        load_in_4bit=spec.load_in_4bit,
        processes=job.processes,
        eight_bit_usable=device == "cuda" and bitsandbytes_optimizer_usable(),
    )
    log.info("optimizer: %s", optimizer_reason)
    plan = plan_memory(
        plan_shape,
        **common,
        longest_pair_tokens=train.longest,
        load_in_4bit=spec.load_in_4bit,
        optimizer=optimizer,
        requested_micro_batch=spec.dpo.per_device_train_batch_size,
        requested_checkpointing=spec.dpo.gradient_checkpointing,
        use_liger_kernel=liger,
    )
    packing = choose_packing(
        spec.dpo.packing,
        device=device,
        processes=job.processes,
        loss_types=loss_types(spec.dpo.loss_type),
        model_config=model_config,
        flex_available=flex_attention_importable(),
        varlen_available=device == "cuda" and varlen_usable(job.dtype),
    )
    packing = packed_batch_limits(
        packing,
        plan,
        device=device,
        longest_pair_tokens=train.longest,
        requested_micro_batch=spec.dpo.per_device_train_batch_size,
    )
    log.info("packing: %s", packing.reason)
    choices = SpeedChoices(
        device=device,
        dtype=job.dtype,
        plan=plan,
        use_liger_kernel=liger,
        attn_implementation=packing.attn_implementation or ATTN_IMPLEMENTATION,
        length_grouped_batches=True,
        cudnn_attention=use_cudnn_attention(device),
        optimizer=optimizer,
        packing=packing,
    )
    log.info("speed choices: %s", choices.as_dict())
    return choices, shape


def _load_model(spec: DpoJobSpec, ctx: JobContext, job: JobInputs, choices: SpeedChoices) -> Any:
    # Under FSDP the model loads on the host: rank 0 reads the weights, the other ranks
    # build it on `meta`, and FSDP places each rank's shard on its GPU when it wraps it.
    load_device = job.device if job.processes == 1 else "cpu"
    model = _load_base_model(ctx.base_model_path, job.dtype, load_device, spec.load_in_4bit)
    if choices.attn_implementation != ATTN_IMPLEMENTATION:
        # Packed rows on CUDA: one sequence a segment (flash varlen) or a block mask (flex).
        from services.trainer.jobs.packing import register_packed_attentions

        register_packed_attentions()
        model.set_attn_implementation(choices.attn_implementation)
    if job.parent is not None:
        from peft import PeftModel

        # No peft_config: TRL copies this adapter as a frozen `ref` adapter, so the parent
        # (the previous stage) is the reference and the `default` copy is trained.
        model = PeftModel.from_pretrained(model, str(job.parent), is_trainable=True)
    return model


def _build_trainer(
    spec: DpoJobSpec,
    ctx: JobContext,
    job: JobInputs,
    choices: SpeedChoices,
    args: Any,
    model: Any,
    tokenizer: Any,
    train: LoadedPairs,
    callbacks: list[Any],
) -> Any:
    """The trainer, with the reference log-probs computed where the spec precomputes them
    (TRL's padded pre-pass runs in its constructor; the packed one right after)."""
    from transformers import PrinterCallback

    if choices.use_liger_kernel:
        # Before TRL's pre-pass (why: dpo_trainer.apply_liger_before_prepass).
        apply_liger_before_prepass(model, args)
    trainer_class = _make_trainer_class(choices.packed)
    extra = {"packing": choices.packing} if choices.packed else {}
    fingerprint = hashlib.sha256(
        f"{ctx.job_id}|{ctx.base_model_path}|{job.parent}|{spec.seed}".encode()
    ).hexdigest()
    # One process on a GPU: the LoRA layers are built on the card (why: adapters_built_on).
    adapter_device = "cuda" if job.device == "cuda" and job.processes == 1 else None
    with no_weight_hashing(fingerprint), adapters_built_on(adapter_device):
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=train.dataset,
            processing_class=tokenizer,
            peft_config=job.peft_config,
            callbacks=callbacks,
            **extra,
        )
    # After construction: TRL wraps the model in PEFT there. Why: disable_lora_input_cast.
    switched = disable_lora_input_cast(trainer.model)
    ctx.log.info("LoRA input cast to fp32 switched off in %d layers", switched)
    # disable_tqdm makes the Trainer print every log dict to stdout; ProgressCallback logs
    # and reports the same numbers.
    trainer.remove_callback(PrinterCallback)
    if choices.packed and args.precompute_ref_log_probs:
        trainer.precompute_reference()
        ctx.log.info("%s", trainer.prepass_timing.describe())
    return trainer, switched


def run_dpo(spec: DpoJobSpec, ctx: JobContext) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoConfig, set_seed
    from trl import DPOConfig

    from services.trainer.jobs.training_callbacks import ProgressCallback

    job = check_inputs(spec, ctx, torch.cuda.is_available())
    if job.processes > 1:
        # Before any model loads: transformers loads FSDP models rank-0-only only once the
        # process group exists, and the memory plan needs every rank's free memory.
        init_process_group(job.device)
    # The job log gets one line a step from ProgressCallback; datasets' bars would add noise.
    datasets.disable_progress_bars()
    set_seed(spec.seed)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, train = _load_training_pairs(spec, ctx)

    model_config = AutoConfig.from_pretrained(ctx.base_model_path)
    choices, shape = _decide_speed(spec, ctx, job, train, model_config)
    if job.device == "cuda" and not choices.cudnn_attention:
        # Process-wide, and the job has its own process. Why: training_device.use_cudnn_attention.
        torch.backends.cuda.enable_cudnn_sdp(False)
    dpo_kwargs = dpo_config_kwargs(spec, choices, ctx.work_dir)
    overrides = distributed_overrides(job.processes, job.device, dpo_kwargs)
    if overrides:
        ctx.log.info("%d processes (%s): %s", job.processes, strategy(job.device), overrides)
    args = DPOConfig(**{**dpo_kwargs, **overrides})

    model = _load_model(spec, ctx, job, choices)
    progress = ProgressCallback(ctx.emit)
    started = time.monotonic()
    trainer, cast_switched = _build_trainer(
        spec, ctx, job, choices, args, model, tokenizer, train, [progress]
    )
    prepass_seconds = time.monotonic() - started
    output = trainer.train()
    wall = time.monotonic() - started

    peft_model, reference_adapter = save_trained_adapter(
        trainer, tokenizer, ctx, parent=job.parent, processes=job.processes
    )
    train_tokens = int(trainer._total_train_tokens)
    metrics: dict[str, float] = dict(progress.last.metrics) if progress.last is not None else {}
    metrics.update({k: float(v) for k, v in output.metrics.items() if isinstance(v, int | float)})
    metrics["train_tokens"] = float(train_tokens)
    metrics["tokens_per_second"] = train_tokens / wall if wall > 0 else 0.0
    metrics["reference_prepass_seconds"] = prepass_seconds
    metrics["wall_seconds"] = wall
    metrics["dropped_rows"] = float(train.dropped)
    heldout, eval_dropped = heldout_pair_metrics(
        spec,
        ctx,
        trainer,
        peft_model,
        reference_adapter,
        tokenizer,
        choices,
        padded_attention=ATTN_IMPLEMENTATION,
    )
    metrics.update(heldout)

    config = {
        "dpo": _json_safe(args.to_dict()),
        "lora": _json_safe(peft_model.peft_config["default"].to_dict()),
        **choices.as_dict(),
        "dropped_rows": train.dropped,
        "eval_dropped_rows": eval_dropped,
        "train_rows": len(train.dataset),
        "longest_pair_tokens": train.longest,
        "epoch_tokens": train.tokens,
        "reference": (
            {"kind": "parent_adapter", "path": str(job.parent)}
            if job.parent is not None
            else {"kind": "base", "path": ctx.base_model_path}
        ),
        "lora_source": "parent" if job.parent is not None else "spec",
        "lora_input_cast_disabled_layers": cast_switched,
        "model_parameters": shape.parameters,
        "num_processes": job.processes,
        "distributed": (
            {"strategy": strategy(job.device), "overrides": _json_safe(overrides)}
            if job.processes > 1
            else None
        ),
    }
    return {
        "metrics": metrics,
        "config": config,
        "rank": job.rank,
        "train_tokens": train_tokens,
        "tokens_per_second": metrics["tokens_per_second"],
    }
