"""Issue 6 item 3: DPO training throughput, the project's job against plain TRL, one GPU.

    python -m bench train-throughput                   # 7B (900 pairs) and 32B (100) shapes
    python -m bench train-throughput --shape 7b --pairs 40 --out runs/bench/try
    python -m bench train-throughput --smoke           # tiny shape on CPU: checks the script

For each shape, in one invocation on one card, two runs over the same seeded pairs and the
same random weights, each in its own child process (a clean card for each):
- `plain`: TRL `DPOTrainer` with its defaults (activation checkpointing on, bf16) at batch 4,
  LoRA r 64 on the seven projections; learning rate, beta and warm-up set to the project's so
  the loss curves compare.
- `project`: the trainer's DPO job, `services.trainer.jobs.dpo.run_dpo`, with a `JobContext`,
  exactly as the runner calls it. Only the weight loading is replaced (random weights created
  on the card: no checkpoint can be downloaded, and a 32B one would not fit the disk).
- `project-warm` (asked for with `project`): the job again, after it, reusing the compile
  caches the `project` run filled, as every job after a trainer's first does. Every other
  run starts from empty caches.

Each run is timed from the trainer's construction (TRL's reference pre-pass happens there) to
the end of `train()`: the whole epoch. Figures: tokens/s (non-pad tokens of the chosen and
rejected sequences / that time), model FLOP utilisation (`flops_per_token` below), peak
memory, the loss curve. Without a CUDA device (and without --smoke) it prints
"no accelerator: not measured" and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.train_data import (
    SHAPES,
    SMOKE_PROFILE,
    LengthProfile,
    Pair,
    Shape,
    make_pairs,
    random_model,
    write_model_dir,
    write_pairs,
)
from bench.train_report import render_markdown, summarise
from services.trainer.compile_cache import compile_cache_env

logger = logging.getLogger(__name__)

DEFAULT_PAIRS = {"7b": 900, "32b": 100, "tiny": 24}
# Held-out pairs (another seed, the same profile), scored after training by both runs with
# the job's own scorer (training_eval.heldout_metrics), outside the timed epoch.
HELDOUT_PAIRS = {"7b": 100, "32b": 100, "tiny": 8}
# H100 SXM dense bf16 peak (datasheet); this workplace measured 798 TFLOP/s for one large
# bf16 matmul on its H100s (KINDS.md), so 80% is about the ceiling of real work.
PEAK_FLOPS = {"cuda": 989.4e12}
PLAIN_BATCH = 4
RUNS = ("plain", "project", "project-warm", "project-fixed")
DEFAULT_RUNS = "plain,project"
NO_ACCELERATOR = "no accelerator: not measured"


@dataclass(frozen=True)
class FlopModel:
    """Matmul FLOPs of one epoch of LoRA DPO, counted on non-pad tokens only.

    A token costs, with N the decoder's weights (embeddings excluded) and P the LoRA weights:
    policy forward 2(N+P), policy backward 2(N+P) for the activation gradients plus 2P for the
    LoRA weight gradients (the frozen base gets none), reference forward 2N (every step in
    plain TRL, in the pre-pass in the project): 6N + 6P. The LM head (H = hidden x vocab)
    only runs where a label exists (TRL's fused head skips prompt positions): 6H a completion
    token. Recomputation under activation checkpointing is not counted (it is not model
    work); attention scores are left out (under 1% at these lengths).
    """

    decoder: int
    lora: int
    head: int

    @classmethod
    def of(cls, shape: Shape, r: int) -> FlopModel:
        h, i, layers = shape.hidden_size, shape.intermediate_size, shape.num_hidden_layers
        kv = shape.num_key_value_heads * (h // shape.num_attention_heads)
        # q, k, v (with biases), o, gate, up, down; two RMSNorms.
        per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
        lora_per_layer = r * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
        return cls(
            decoder=layers * per_layer + h,
            lora=layers * lora_per_layer,
            head=h * shape.vocab_size,
        )

    def flops(self, tokens: int, completion_tokens: int) -> float:
        return 6.0 * (self.decoder + self.lora) * tokens + 6.0 * self.head * completion_tokens


# ---------------------------------------------------------------- child process: one run


class _PaddingCounter:
    """Counts what the collators hand the model: positions (padded) and real tokens. The
    packed collator's positions (flex padding included) are set against the real tokens of
    the two rows TRL would have built, so its ratio is below 1 where the prompt is shared."""

    def __init__(self) -> None:
        self.phase = "prepass"
        self.counts: dict[str, dict[str, int]] = {}
        # Real tokens of each training batch in order (a stopped plain run: what it consumed).
        self.train_batch_tokens: list[int] = []

    def add(self, positions: int, tokens: int) -> None:
        if self.phase == "train":
            self.train_batch_tokens.append(tokens)
        slot = self.counts.setdefault(self.phase, {"batches": 0, "positions": 0, "tokens": 0})
        slot["batches"] += 1
        slot["positions"] += positions
        slot["tokens"] += tokens

    def install(self) -> None:
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        from services.trainer.jobs.packing_trainer import PackedCollator

        original = DataCollatorForPreference.torch_call
        packed_original = PackedCollator.__call__

        def counting(collator: Any, examples: list[dict[str, Any]]) -> dict[str, Any]:
            batch: dict[str, Any] = original(collator, examples)
            self.add(int(batch["input_ids"].numel()), int(batch["attention_mask"].sum()))
            return batch

        def counting_packed(collator: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
            batch: dict[str, Any] = packed_original(collator, rows)
            self.add(int(batch["input_ids"].numel()), int(batch["num_tokens"]))
            return batch

        DataCollatorForPreference.torch_call = counting  # type: ignore[method-assign, assignment]
        PackedCollator.__call__ = counting_packed  # type: ignore[method-assign, assignment]


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "liger-kernel"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _read_rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_plain(
    work: Path, device: str, seed: int, counter: _PaddingCounter, max_steps: int | None = None
) -> dict[str, Any]:
    """Plain TRL over the whole epoch, or (`max_steps`) over its first steps only: then the
    result's `prefix` holds what `train_report.extrapolated_epoch` needs."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from protocol.jobs import QWEN_PROJECTIONS, DpoSpec

    project = DpoSpec()
    model_dir = str(work / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    on_gpu = device == "cuda"
    model = random_model(model_dir, "bfloat16" if on_gpu else "float32", device, seed)
    dataset = Dataset.from_list(_read_rows(work / "pairs.jsonl"))
    curve: list[dict[str, float]] = []
    step_ended: dict[int, float] = {}

    class Recorder(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            counter.phase = "train"

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 1:
                _sync(device)  # step 1's kernels have run, not only been queued
                step_ended[1] = time.monotonic()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                curve.append({"step": state.global_step, "epoch": state.epoch, **_floats(logs)})

    args = DPOConfig(
        output_dir=str(work / "plain-trl"),
        per_device_train_batch_size=PLAIN_BATCH,
        # Same optimisation as the project's job, so the loss curves compare; speed does not
        # depend on these. Everything else stays TRL's default.
        learning_rate=project.learning_rate,
        beta=project.beta,
        warmup_steps=project.warmup_ratio,
        # One epoch like the job (transformers' default is 3), or its first steps.
        num_train_epochs=1,
        max_steps=max_steps or -1,
        seed=seed,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        bf16=on_gpu,
        use_cpu=not on_gpu,
    )
    lora = LoraConfig(
        r=64, lora_alpha=64, target_modules=list(QWEN_PROJECTIONS), task_type="CAUSAL_LM"
    )
    _reset_peak(device)
    started = time.monotonic()
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Recorder()],
    )
    # disable_tqdm makes the Trainer print every log dict; the recorder keeps them.
    trainer.remove_callback(PrinterCallback)
    constructed = time.monotonic()
    trainer.train()
    _sync(device)
    wall = time.monotonic() - started
    counter.phase = "heldout"
    heldout = _plain_heldout(trainer, tokenizer, work / "heldout.jsonl", project)
    prefix = None
    if max_steps:
        steps = trainer.state.global_step
        # The data loader fetches a batch ahead: the counter may hold one never trained on.
        consumed = counter.train_batch_tokens[:steps]
        prefix = {
            "steps": steps,
            "tokens": sum(consumed),
            "step1_tokens": consumed[0],
            "to_step1_seconds": step_ended[1] - started,
        }
    return {
        "wall_seconds": wall,
        "prepass_seconds": constructed - started,
        "prefix": prefix,
        "heldout": heldout,
        "curve": curve,
        "config": {
            "micro_batch": PLAIN_BATCH,
            "gradient_checkpointing": bool(args.gradient_checkpointing),
            "precompute_ref_log_probs": bool(args.precompute_ref_log_probs),
            "use_liger_kernel": bool(args.use_liger_kernel),
            "learning_rate": args.learning_rate,
        },
    }


def _plain_heldout(trainer: Any, tokenizer: Any, path: Path, project: Any) -> dict[str, float]:
    """Plain TRL's adapter scored on the held-out pairs as the job scores its own: the
    adapter against the base (TRL's reference here), TRL's padded rows."""
    from services.trainer.jobs.training_data import tokenize_pair
    from services.trainer.jobs.training_eval import heldout_metrics

    rows = _read_rows(path)
    pairs = [tokenize_pair(tokenizer, r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    return heldout_metrics(
        trainer.model,
        [p for p in pairs if p.length <= project.max_length],
        beta=project.beta,
        pad_token_id=tokenizer.pad_token_id,
        batch_size=PLAIN_BATCH,
        device=trainer.accelerator.device,
        reference_adapter=None,
        autocast=trainer.accelerator.autocast,
    )


def apply_proposed_fixes(dpo: Any) -> None:
    """The changes docs/benchmarks.md proposes for the job, applied from outside to measure
    them before anyone edits services/trainer/jobs (diagnostic runs only):
    - PEFT casts every LoRA layer's input to the adapter's fp32 dtype, and autocast casts it
      back to bf16 for the matmul: two passes over each of the seven projections' inputs,
      forward and backward, and an fp32 copy saved for backward. Under bf16 autocast the cast
      is useless: turn it off (`cast_input_dtype_enabled = False`).
    - cuDNN's attention builds a plan for every new sequence length (~2.7 ms of CPU a call
      here, every layer, every step, lengths vary): use the flash / memory-efficient kernels.
    """
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)
    make_original = dpo._make_trainer_class

    def make(*args: Any) -> Any:
        base = make_original(*args)

        class NoInputCast(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                for module in self.model.modules():
                    if hasattr(module, "cast_input_dtype_enabled"):
                        module.cast_input_dtype_enabled = False

        return NoInputCast

    dpo._make_trainer_class = make


def use_attention(dpo: Any, attn: str) -> None:
    """Packed rows with another attention than the job chooses (diagnostic runs only):
    `sdpa` (a dense mask on CUDA too: attention then spans the whole micro-batch),
    transformers' `flex_attention` (the job's path before its own packed_flex_attention),
    or either of the job's own (`cai_packed_flex`, `cai_packed_varlen`) for an A/B."""
    from dataclasses import replace

    choose = dpo.choose_packing

    def chosen(*args: Any, **kwargs: Any) -> Any:
        choice = choose(*args, **kwargs)
        if not choice.enabled:
            return choice
        return replace(choice, attn_implementation=attn, reason=f"{choice.reason} [{attn}]")

    dpo.choose_packing = chosen


def _run_project(
    work: Path, device: str, seed: int, counter: _PaddingCounter, fixed: bool = False
) -> dict[str, Any]:
    from protocol.jobs import DpoJobSpec, DpoSpec, JobProgress, LoraSpec
    from services.trainer.jobs import dpo
    from services.trainer.jobs.context import JobContext

    if fixed:
        apply_proposed_fixes(dpo)
    overrides_file = work / "job-overrides.json"
    overrides = json.loads(overrides_file.read_text()) if overrides_file.exists() else {}
    attention = overrides.pop("attention", None)
    if attention is not None:
        use_attention(dpo, attention)

    def load_random(path: str, dtype: str, device_: str, load_in_4bit: bool) -> Any:
        return random_model(path, dtype, device_, seed)

    # The one substitution: weights come from the seed, not from a checkpoint on disk.
    dpo._load_base_model = load_random  # type: ignore[assignment]
    score_heldout = dpo.heldout_pair_metrics

    def heldout_phase(*args: Any, **kwargs: Any) -> Any:
        counter.phase = "heldout"  # its batches are not the epoch's
        return score_heldout(*args, **kwargs)

    dpo.heldout_pair_metrics = heldout_phase
    curve: list[dict[str, float]] = []

    def emit(progress: JobProgress) -> None:
        if progress.step == 0:  # the job reports step 0 when training starts
            counter.phase = "train"
        elif "loss" in progress.metrics:
            curve.append(
                {"step": progress.step, "epoch": progress.epoch or 0.0, **progress.metrics}
            )

    spec = DpoJobSpec(
        base_model="bench",
        dataset_id="bench",
        output_name="bench",
        lora=LoraSpec(r=64),
        dpo=DpoSpec(**overrides),
        seed=seed,
    )
    ctx = JobContext(
        job_id="bench",
        work_dir=work / "project-job",
        output_dir=work / "project-adapter",
        base_model_path=str(work / "model"),
        train_path=work / "pairs.jsonl",
        eval_path=work / "heldout.jsonl",
        device=device,
        emit=emit,
    )
    _reset_peak(device)
    result = dpo.run_dpo(spec, ctx)
    _sync(device)
    metrics = result["metrics"]
    config = result["config"]
    return {
        "wall_seconds": metrics["wall_seconds"],
        "prepass_seconds": metrics["reference_prepass_seconds"],
        "job_tokens_per_second": metrics["tokens_per_second"],
        "heldout": {k: v for k, v in metrics.items() if k.startswith("eval/")},
        "curve": curve,
        "config": {
            key: config.get(key)
            for key in (
                "micro_batch",
                "gradient_checkpointing",
                "precompute_ref_batch_size",
                "use_liger_kernel",
                "optimizer",
                "length_grouped_batches",
                "padding_free",
                "packing",
                "attn_implementation",
                "memory_plan",
            )
        }
        | {
            "learning_rate": config["dpo"]["learning_rate"],
            "precompute_ref_log_probs": config["dpo"]["precompute_ref_log_probs"],
        },
    }


def _floats(logs: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}


def _reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _memory(device: str) -> dict[str, float]:
    if device != "cuda":
        return {}
    import torch

    gb = 1e9
    _free, total = torch.cuda.mem_get_info()
    return {
        "peak_allocated_gb": torch.cuda.max_memory_allocated() / gb,
        "peak_reserved_gb": torch.cuda.max_memory_reserved() / gb,
        "card_total_gb": total / gb,
    }


def run_worker(
    kind: str,
    work: Path,
    device: str,
    seed: int,
    result_path: Path,
    plain_steps: int | None = None,
) -> int:
    """One run in this process; writes its figures (or its error) to `result_path`."""
    counter = _PaddingCounter()
    counter.install()
    started = time.monotonic()
    out: dict[str, Any] = {"run": kind, "device": device, "versions": _versions()}
    if device == "cuda":
        import torch

        out["gpu"] = torch.cuda.get_device_name()
    try:
        if kind == "plain":
            out.update(_run_plain(work, device, seed, counter, plain_steps))
        else:
            out.update(_run_project(work, device, seed, counter, fixed=kind == "project-fixed"))
    except Exception as exc:  # an OOM is a result too: record it, the other run goes on
        logger.exception("%s run failed", kind)
        out["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    out["outer_seconds"] = time.monotonic() - started
    out["padding"] = counter.counts
    out.update(_memory(device))
    result_path.write_text(json.dumps(out, indent=1, default=str))
    return 0


# ---------------------------------------------------------------- parent: the benchmark


def _prepare(shape: Shape, pairs: list[Pair], heldout: list[Pair], work: Path) -> None:
    # A --work reused from an earlier invocation must not hand its kernels to this one's runs.
    shutil.rmtree(work / "compile-cache", ignore_errors=True)
    write_model_dir(shape, work / "model")
    write_pairs(pairs, shape.vocab_size, work / "pairs.jsonl")
    write_pairs(heldout, shape.vocab_size, work / "heldout.jsonl")


def _cache_env(kind: str, work: Path) -> dict[str, str]:
    """Each run compiles into empty caches of its own (a first job on a fresh trainer),
    except `project-warm`, which reuses those the `project` run filled (every later job: the
    trainer keeps its jobs' compile caches in its data volume, compile_cache.py)."""
    owner = "project" if kind == "project-warm" else kind
    return compile_cache_env(work / "compile-cache" / owner)


def _spawn(
    kind: str, shape: str, work: Path, device: str, seed: int, plain_steps: int | None
) -> dict[str, Any]:
    result_path = work / f"result-{kind}.json"
    command = [
        sys.executable,
        "-m",
        "bench",
        "train-throughput",
        "--worker",
        kind,
        "--shape",
        shape,
        "--work",
        str(work),
        "--device",
        device,
        "--seed",
        str(seed),
    ]
    if kind == "plain" and plain_steps:
        command += ["--plain-steps", str(plain_steps)]
    logger.info("starting the %s run at the %s shape", kind, shape)
    env = {**os.environ, **_cache_env(kind, work)}
    code = subprocess.run(command, check=False, env=env).returncode
    if not result_path.exists():
        return {"run": kind, "error": f"the run's process exited {code} without a result"}
    data: dict[str, Any] = json.loads(result_path.read_text())
    return data


def _steps_to_extrapolate(text: str) -> int:
    value = int(text)
    if value < 2:
        # Step 1 carries the fixed costs; the rate comes from the steps after it.
        raise argparse.ArgumentTypeError(f"must be 2 or more (step 1 and a later one), got {value}")
    return value


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench train-throughput")
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), help="repeatable")
    parser.add_argument(
        "--runs",
        default=DEFAULT_RUNS,
        help="comma-separated: plain, project, project-warm (the job again, with the "
        "compile caches the project run filled), project-fixed (the job with the changes "
        "proposed in docs/benchmarks.md applied by patching, to measure them)",
    )
    parser.add_argument("--pairs", type=int, default=None, help="override the pair count")
    parser.add_argument("--smoke", action="store_true", help="tiny shape; runs on CPU")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/train-throughput"))
    parser.add_argument("--work", type=Path, default=None, help="scratch (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--job-micro-batch",
        type=int,
        default=None,
        help="the project job's spec fields (normally chosen by the job): micro-batch ...",
    )
    parser.add_argument(
        "--job-checkpointing", choices=("on", "off"), default=None, help="... checkpointing"
    )
    parser.add_argument(
        "--job-optimizer",
        choices=("auto", "adamw", "adamw_8bit"),
        default=None,
        help="... optimizer",
    )
    parser.add_argument(
        "--job-packing", choices=("on", "off"), default=None, help="... shared-prompt packing"
    )
    parser.add_argument(
        "--job-precompute",
        choices=("on", "off"),
        default=None,
        help="... reference pre-pass (off: a reference forward in every step)",
    )
    parser.add_argument(
        "--job-attention",
        choices=("sdpa", "flex_attention", "cai_packed_flex", "cai_packed_varlen"),
        default=None,
        help=(
            "diagnostic: packed rows with sdpa and a dense mask, transformers' flex path, "
            "or one of the job's own two (flex over a block mask, flash varlen)"
        ),
    )
    parser.add_argument(
        "--plain-steps",
        type=_steps_to_extrapolate,
        default=None,
        help=(
            "plain TRL stops after this many steps; its epoch is extrapolated from them by "
            "tokens (for shapes whose plain epoch outlasts a device call)"
        ),
    )
    parser.add_argument("--device", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=RUNS, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    if args.worker is not None:
        return run_worker(
            args.worker,
            args.work,
            args.device,
            args.seed,
            args.work / f"result-{args.worker}.json",
            args.plain_steps,
        )
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.smoke:
        print(NO_ACCELERATOR)
        return 0
    device = "cuda" if on_gpu else "cpu"
    shapes = args.shape or (["tiny"] if args.smoke else ["7b", "32b"])
    runs = [r for r in RUNS if r in args.runs.split(",")]
    if "project-warm" in runs and "project" not in runs:
        print("--runs: project-warm reuses the project run's caches; ask for both")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = args.work or Path(tempfile.mkdtemp(prefix="cai-bench-"))
    report: dict[str, Any] = {"device": device, "shapes": {}}
    for name in shapes:
        shape = SHAPES[name]
        profile = SMOKE_PROFILE if name == "tiny" else LengthProfile()
        count = args.pairs or DEFAULT_PAIRS[name]
        pairs = make_pairs(count, shape.vocab_size, profile, args.seed)
        # Another stream of the same profile: no held-out pair is a training pair.
        heldout = make_pairs(HELDOUT_PAIRS[name], shape.vocab_size, profile, args.seed + 10_000)
        work = scratch / name
        work.mkdir(parents=True, exist_ok=True)
        _prepare(shape, pairs, heldout, work)
        overrides: dict[str, Any] = {}
        if args.job_micro_batch is not None:
            overrides["per_device_train_batch_size"] = args.job_micro_batch
        if args.job_checkpointing is not None:
            overrides["gradient_checkpointing"] = args.job_checkpointing == "on"
        if args.job_optimizer is not None:
            overrides["optimizer"] = args.job_optimizer
        if args.job_packing is not None:
            overrides["packing"] = args.job_packing == "on"
        if args.job_precompute is not None:
            overrides["precompute_ref_log_probs"] = args.job_precompute == "on"
        if args.job_attention is not None:
            overrides["attention"] = args.job_attention
        (work / "job-overrides.json").write_text(json.dumps(overrides))
        results: dict[str, dict[str, Any]] = {}
        for run in runs:
            results[run] = _spawn(run, name, work, device, args.seed, args.plain_steps)
            # After every run, not every shape: a call cut off by its time limit keeps the
            # runs that finished.
            report["shapes"][name] = summarise(
                shape_name=name,
                pairs=pairs,
                profile=profile,
                flops=FlopModel.of(shape, 64),
                peak_flops=PEAK_FLOPS.get(device),
                results=results,
            )
            _write_report(report, args.out)
    print(render_markdown(report))
    return 0


def _write_report(report: dict[str, Any], out: Path) -> None:
    (out / "train_throughput.json").write_text(json.dumps(report, indent=1))
    (out / "train_throughput.md").write_text(render_markdown(report))
