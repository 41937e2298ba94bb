"""The baseline of the client benchmarks: the chain written the obvious way.

    stats = await run_obvious(config, instructions, base_url, out_dir, concurrency=64)

What "obvious" means here (issue 6): the `openai` SDK's `AsyncOpenAI.completions.create`,
one request per prompt, `asyncio.gather` over every prompt of a step, and a barrier between
steps (critiques start when the last response is back). Each step's results are written to
a JSONL file when the step ends. It asks exactly what the project's runner asks (same
prompt builders, templates, sampling, per-record seeds, judge queries), so against the
deterministic stub both get the same answers and do the same parsing: only the
orchestration, the HTTP client and the run-folder store differ.

A semaphore bounds the requests in flight to the same limit the runner uses: an unbounded
gather would put every prompt of a step on the wire at once, which a real vLLM would only
queue, and which measures connection handling rather than the chain.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from cai.pipeline import critiques, judgements, pairs, responses, revisions, rules
from cai.pipeline.config import PipelineConfig
from cai.pipeline.constitution import load_constitution
from cai.pipeline.prompts import load_template
from cai.pipeline.records import (
    InstructionType,
    JudgeQuery,
    critique_id,
    derive_seed,
    judgement_id,
    response_id,
    revision_id,
)
from cai.pipeline.seeds import load_seed_pool

T = TypeVar("T")

Instruction = tuple[str, InstructionType, str]  # (id, type, text)


@dataclass
class ObviousStats:
    completions: int = 0
    wall_s: float = 0.0
    step_wall_s: dict[str, float] = field(default_factory=dict)
    pairs: int = 0


async def _bounded(limit: int, calls: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls)))


def _stop(configured: list[str] | None, template_stop: Iterable[str]) -> list[str]:
    return list(configured) if configured is not None else list(template_stop)


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


async def run_obvious(
    config: PipelineConfig,
    instructions: list[Instruction],
    base_url: str,
    out_dir: Path,
    *,
    concurrency: int = 64,
) -> ObviousStats:
    """Response -> critique -> revision -> judge -> pair for every instruction, step by step.

    `out_dir` must exist; each step writes `<step>.jsonl` there when it ends.
    """
    from openai import AsyncOpenAI  # the baseline's own dependency (dev extra)

    templates = {
        name: load_template(name) for name in ("responses", "critiques", "revisions", "judge")
    }
    constitution = load_constitution(config.constitution)
    pool = load_seed_pool(config.seed_pool)
    label_a, label_b = judgements.labels(templates["judge"])
    stats = ObviousStats()
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=2)

    async def complete(prompt: str, sampling: Any, seed: int, stop: list[str]) -> tuple[str, str]:
        result = await client.completions.create(
            model=config.model,
            prompt=prompt,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=stop or None,
            seed=seed,
        )
        stats.completions += 1
        choice = result.choices[0]
        return choice.text, str(choice.finish_reason)

    started = time.perf_counter()
    try:
        # Step 1: responses.
        step_started = time.perf_counter()
        template = templates["responses"]
        stop = _stop(config.responses.sampling.stop, template.stop)
        jobs = []
        for iid, kind, text in instructions:
            seed = derive_seed(config.seed, response_id(iid), "responses")
            prompt, _ = responses.build_prompt(
                template, pool, kind, text, few_shot=config.responses.few_shot, seed=seed
            )
            jobs.append((prompt, seed))
        answers = await _bounded(
            concurrency,
            [
                partial(complete, prompt, config.responses.sampling, seed, stop)
                for prompt, seed in jobs
            ],
        )
        original = [(responses.parse(text, stop), finish) for text, finish in answers]
        _write(
            out_dir / "responses.jsonl",
            [
                {"id": response_id(iid), "text": text, "finish_reason": finish}
                for (iid, _, _), (text, finish) in zip(instructions, original, strict=True)
            ],
        )
        stats.step_wall_s["responses"] = time.perf_counter() - step_started

        # Step 2: critiques (one round, like the runner's default).
        step_started = time.perf_counter()
        template = templates["critiques"]
        stop = _stop(config.critiques.sampling.stop, template.stop)
        principles, jobs = [], []
        for (iid, _, text), (response, _) in zip(instructions, original, strict=True):
            principle = critiques.pick_principle(
                constitution, config.seed, iid, 1, list(config.critiques.principle_tags)
            )
            principles.append(principle)
            prompt = critiques.build_prompt(
                template,
                pool,
                constitution,
                text,
                response,
                principle,
                few_shot=config.critiques.few_shot,
            )
            jobs.append((prompt, derive_seed(config.seed, critique_id(iid, 1), "critiques")))
        answers = await _bounded(
            concurrency,
            [
                partial(complete, prompt, config.critiques.sampling, seed, stop)
                for prompt, seed in jobs
            ],
        )
        critique_texts = [responses.parse(text, stop) for text, _ in answers]
        _write(
            out_dir / "critiques.jsonl",
            [
                {"id": critique_id(iid, 1), "text": text}
                for (iid, _, _), text in zip(instructions, critique_texts, strict=True)
            ],
        )
        stats.step_wall_s["critiques"] = time.perf_counter() - step_started

        # Step 3: revisions.
        step_started = time.perf_counter()
        template = templates["revisions"]
        stop = _stop(config.revisions.sampling.stop, template.stop)
        jobs = []
        for (iid, _, text), (response, _), critique, principle in zip(
            instructions, original, critique_texts, principles, strict=True
        ):
            prompt = revisions.build_prompt(
                template,
                pool,
                constitution,
                text,
                response,
                critique,
                principle,
                few_shot=config.revisions.few_shot,
            )
            jobs.append((prompt, derive_seed(config.seed, revision_id(iid, 1), "revisions")))
        answers = await _bounded(
            concurrency,
            [
                partial(complete, prompt, config.revisions.sampling, seed, stop)
                for prompt, seed in jobs
            ],
        )
        revised = [(responses.parse(text, stop), finish) for text, finish in answers]
        _write(
            out_dir / "revisions.jsonl",
            [
                {"id": revision_id(iid, 1), "text": text, "finish_reason": finish}
                for (iid, _, _), (text, finish) in zip(instructions, revised, strict=True)
            ],
        )
        stats.step_wall_s["revisions"] = time.perf_counter() - step_started

        # Step 4: the judge, two A/B queries (swapped) per response, original and revision.
        step_started = time.perf_counter()
        cfg = config.judge

        async def ask(prompt: judgements.JudgePrompt, seed: int) -> JudgeQuery:
            result = await client.completions.create(
                model=config.judge_model(),
                prompt=prompt.prompt,
                max_tokens=1,
                temperature=0.0,
                logprobs=cfg.top_logprobs,
                seed=seed,
            )
            stats.completions += 1
            logprobs = result.choices[0].logprobs
            top = (logprobs.top_logprobs[0] if logprobs and logprobs.top_logprobs else None) or {}
            lp_a, lp_b = judgements.read_label(top, label_a), judgements.read_label(top, label_b)
            floor = min(top.values()) if top else -100.0
            return JudgeQuery(
                good_label=prompt.good_label,
                logprob_a=floor if lp_a is None else lp_a,
                logprob_b=floor if lp_b is None else lp_b,
                method="top_logprobs",
            )

        queries: list[tuple[int, str, judgements.JudgePrompt, int]] = []
        for index, ((iid, _, text), (response, _), (revision, _)) in enumerate(
            zip(instructions, original, revised, strict=True)
        ):
            for which, answer in (("original", response), ("revision", revision)):
                for i, query in enumerate(
                    judgements.build_queries(templates["judge"], text, answer, swap=cfg.swap)
                ):
                    seed = derive_seed(config.seed, judgement_id(iid), which, i)
                    queries.append((index, which, query, seed))
        answered = await _bounded(
            concurrency, [partial(ask, query, seed) for _, _, query, seed in queries]
        )
        grouped: dict[tuple[int, str], list[JudgeQuery]] = {}
        for (index, which, _, _), judged in zip(queries, answered, strict=True):
            grouped.setdefault((index, which), []).append(judged)
        verdict_rows, pair_rows = [], []
        for index, ((iid, kind, text), (response, r_finish), (revision, v_finish)) in enumerate(
            zip(instructions, original, revised, strict=True)
        ):
            verdicts = {}
            for which, answer, finish in (
                ("original", response, r_finish),
                ("revision", revision, v_finish),
            ):
                verdicts[which] = judgements.combine(
                    response_id=iid,
                    rules=rules.check(kind, text, answer, finish, config.rules),
                    truncated=finish == "length",
                    queries=grouped[(index, which)],
                    config=cfg,
                )
            verdict_rows.append(
                {"id": judgement_id(iid), **{k: v.model_dump() for k, v in verdicts.items()}}
            )
            decision = pairs.decide(
                response, revision, verdicts["original"].ok, verdicts["revision"].ok
            )
            if not decision.skipped:
                chosen, rejected = (
                    (revision, response) if decision.chosen == "revision" else (response, revision)
                )
                pair_rows.append({"prompt": text, "chosen": chosen, "rejected": rejected})
        _write(out_dir / "judgements.jsonl", verdict_rows)
        _write(out_dir / "pairs.jsonl", pair_rows)
        stats.pairs = len(pair_rows)
        stats.step_wall_s["judgements"] = time.perf_counter() - step_started
    finally:
        await client.close()
    stats.wall_s = time.perf_counter() - started
    return stats
