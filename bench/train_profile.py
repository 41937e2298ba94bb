"""Where the DPO job's GPU time goes: torch.profiler over a few steps of the real job body.

    python -m bench train-profile --shape 7b --pairs 150            # the job as it is
    python -m bench train-profile --shape 7b --pairs 150 --no-liger # one decision changed

Runs `services.trainer.jobs.dpo.run_dpo` (random weights, as in train-throughput) with its
trainer class wrapped so that each training step and each reference pre-pass batch is timed
(synchronised), and steps PROFILE_STEPS and pre-pass batches PROFILE_PREPASS_BATCHES are
profiled. Prints the top kernels by GPU time, the step and pre-pass batch times and a bf16
matmul ceiling measured on the same card. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.train_data import SHAPES, LengthProfile, make_pairs, random_model
from bench.train_throughput import NO_ACCELERATOR, _prepare, apply_proposed_fixes

logger = logging.getLogger(__name__)

PROFILE_STEPS = (6, 8)  # first and last profiled step (after warm-up)
PROFILE_PREPASS_BATCHES = (1, 1)  # the second pre-pass batch (the first warms up kernels)


def _matmul_ceiling() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench train-profile")
    parser.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    parser.add_argument("--pairs", type=int, default=150)
    parser.add_argument("--no-liger", action="store_true")
    parser.add_argument("--fixed", action="store_true", help="apply the proposed fixes")
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/train-profile"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(NO_ACCELERATOR)
        return 0
    from torch.profiler import ProfilerActivity, profile

    from protocol.jobs import DpoJobSpec, DpoSpec, LoraSpec
    from services.trainer.jobs import dpo
    from services.trainer.jobs.context import JobContext

    ceiling = _matmul_ceiling()
    shape = SHAPES[args.shape]
    work = Path(tempfile.mkdtemp(prefix="cai-profile-"))
    pairs = make_pairs(args.pairs, shape.vocab_size, LengthProfile(), args.seed)
    _prepare(shape, pairs, [], work)

    def load_random(path: str, dtype: str, device: str, load_in_4bit: bool) -> Any:
        return random_model(path, dtype, device, args.seed)

    dpo._load_base_model = load_random
    if args.no_liger:
        dpo.use_liger_kernel = lambda device, importable: False  # type: ignore[assignment]

    steps: list[tuple[float, int]] = []
    prepass: list[tuple[float, int]] = []
    tables: list[str] = []
    prepass_tables: list[str] = []
    make_original = dpo._make_trainer_class

    def make_profiled(packed: bool = False) -> Any:
        base = make_original(packed)

        class Profiled(base):  # type: ignore[misc, valid-type]
            def training_step(self, model: Any, inputs: Any, *rest: Any, **kw: Any) -> Any:
                step = self.state.global_step
                prof = None
                if step == PROFILE_STEPS[0]:
                    self._prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                    self._prof.__enter__()
                torch.cuda.synchronize()
                started = time.monotonic()
                out = super().training_step(model, inputs, *rest, **kw)
                torch.cuda.synchronize()
                steps.append((time.monotonic() - started, int(inputs["input_ids"].numel())))
                if step == PROFILE_STEPS[1]:
                    prof = self._prof
                    prof.__exit__(None, None, None)
                    tables.append(
                        prof.key_averages().table(sort_by="self_device_time_total", row_limit=30)
                    )
                return out

            def compute_ref_log_probs(self, model: Any, inputs: Any) -> Any:
                batch = len(prepass)
                if batch == PROFILE_PREPASS_BATCHES[0]:
                    self._prepass_prof = profile(
                        activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]
                    )
                    self._prepass_prof.__enter__()
                torch.cuda.synchronize()
                started = time.monotonic()
                out = super().compute_ref_log_probs(model, inputs)
                torch.cuda.synchronize()
                prepass.append((time.monotonic() - started, int(inputs["input_ids"].numel())))
                if batch == PROFILE_PREPASS_BATCHES[1]:
                    prof = self._prepass_prof
                    prof.__exit__(None, None, None)
                    prepass_tables.append(
                        prof.key_averages().table(sort_by="self_device_time_total", row_limit=30)
                    )
                return out

        return Profiled

    dpo._make_trainer_class = make_profiled
    if args.fixed:
        apply_proposed_fixes(dpo)
    dpo_spec = DpoSpec(per_device_train_batch_size=args.micro_batch)
    spec = DpoJobSpec(
        base_model="bench",
        dataset_id="bench",
        output_name="bench",
        lora=LoraSpec(r=64),
        dpo=dpo_spec,
        seed=args.seed,
    )
    ctx = JobContext(
        job_id="profile",
        work_dir=work / "job",
        output_dir=work / "adapter",
        base_model_path=str(work / "model"),
        train_path=work / "pairs.jsonl",
        device="cuda",
    )
    result = dpo.run_dpo(spec, ctx)
    warm = steps[3:]
    step_s = sum(s for s, _ in warm)
    summary = {
        "matmul_tflops": ceiling / 1e12,
        "config": {k: result["config"].get(k) for k in ("micro_batch", "use_liger_kernel")},
        "wall_seconds": result["metrics"]["wall_seconds"],
        "prepass_seconds": result["metrics"]["reference_prepass_seconds"],
        # The packed job's pre-pass (precompute_reference) is not hooked: its own log line
        # times it. These count TRL's padded pre-pass only.
        "prepass_batches_seconds": sum(s for s, _ in prepass),
        "prepass_positions_per_second": (
            sum(n for _, n in prepass) / sum(s for s, _ in prepass) if prepass else None
        ),
        "prepass_batches": [{"seconds": s, "positions": n} for s, n in prepass],
        "training_step_median_seconds": statistics.median(s for s, _ in warm),
        "training_positions_per_second": sum(n for _, n in warm) / step_s,
        "training_steps_seconds": sum(s for s, _ in steps),
        # Each step's time and size (step i ran with global_step i on entry); the profiled
        # ones are PROFILE_STEPS, inclusive, and carry the profiler's overhead.
        "training_steps": [
            {
                "step": index,
                "seconds": seconds,
                "positions": positions,
                "profiled": PROFILE_STEPS[0] <= index <= PROFILE_STEPS[1],
            }
            for index, (seconds, positions) in enumerate(steps)
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps(summary, indent=1))
    report = "\n\n".join(
        [
            f"training steps {PROFILE_STEPS}",
            *tables,
            f"pre-pass batches {PROFILE_PREPASS_BATCHES}",
            *prepass_tables,
        ]
    )
    (args.out / "profile.txt").write_text(report)
    print(report)
    print(json.dumps(summary, indent=1))
    return 0
