"""A generation smoke run against a live generator: what `cai generator smoke` (and, until the
pipeline exists, `make run`) does.

    cai generator smoke --base-url http://127.0.0.1:8000

It lists the served models, samples a few completions with stop strings, and checks that a
multi-token stop string ends generation exactly where it starts: a completion is sampled
once without stops (fixed seed), a run of 2-3 of its tokens is taken as the stop string,
and the same seeded completion with that stop must equal the text before it (a random tiny
model never writes `###END###` by itself, so a string it does write is used).
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, Field

from cai.generator.client import GeneratorClient
from cai.generator.types import Choice, ModelCard, Usage

SMOKE_PROMPTS = (
    "Question: Name three primary colours.\nAnswer:",
    "Write a haiku about the sea.\n",
    "Instruction: Explain what a compiler does in one sentence.\nResponse:",
)
END_MARKER = "###END###"


class SampledCompletion(BaseModel):
    prompt: str
    text: str
    finish_reason: str | None
    stop_reason: int | str | None


class StopCheck(BaseModel):
    """A multi-token stop string taken from a greedy completion, and what it did."""

    prompt: str
    stop: str = Field(description="A run of generated tokens, used as the stop string.")
    stop_tokens: list[str]
    text_without_stop: str
    text_with_stop: str
    expected_text: str
    stop_reason: int | str | None
    passed: bool


class SmokeReport(BaseModel):
    base_url: str
    model: str
    models: list[ModelCard]
    samples: list[SampledCompletion]
    usage: Usage
    seconds: float
    stop_check: StopCheck | None = Field(
        default=None, description="None when no greedy output had a usable multi-token run."
    )

    @property
    def passed(self) -> bool:
        return self.stop_check is not None and self.stop_check.passed


async def run_smoke(
    client: GeneratorClient,
    *,
    model: str | None = None,
    n: int = 2,
    max_tokens: int = 32,
    temperature: float = 0.7,
    seed: int = 0,
) -> SmokeReport:
    models = await client.models()
    if model is None:
        bases = [card.id for card in models if card.parent is None]
        if not bases:
            raise ValueError(f"{client.base_url} serves no base model")
        model = bases[0]
    prompts = list(SMOKE_PROMPTS)
    started = time.perf_counter()
    # One request per prompt, concurrently, each with its own seed: with one seed for all,
    # the near-uniform random model samples the same tokens whatever the prompt.
    results = await asyncio.gather(
        *(
            client.complete(
                [prompt],
                model=model,
                n=n,
                temperature=temperature,
                max_tokens=max_tokens,
                stop=[END_MARKER, "\n\n"],
                seed=seed + 1000 * i,  # vLLM seeds the n samples seed, seed+1, ...
            )
            for i, prompt in enumerate(prompts)
        )
    )
    seconds = time.perf_counter() - started
    samples = [
        SampledCompletion(
            prompt=result.prompts[0],
            text=choice.text,
            finish_reason=choice.finish_reason,
            stop_reason=choice.stop_reason,
        )
        for result in results
        for choice in result.choices[0]
    ]
    usage = Usage(
        prompt_tokens=sum(r.usage.prompt_tokens for r in results),
        completion_tokens=sum(r.usage.completion_tokens for r in results),
        total_tokens=sum(r.usage.total_tokens for r in results),
    )
    stop_check = await check_stop_string(client, model, prompts, max_tokens=max_tokens, seed=seed)
    return SmokeReport(
        base_url=client.base_url,
        model=model,
        models=models,
        samples=samples,
        usage=usage,
        seconds=seconds,
        stop_check=stop_check,
    )


async def check_stop_string(
    client: GeneratorClient,
    model: str,
    prompts: list[str],
    *,
    max_tokens: int = 32,
    seed: int = 0,
) -> StopCheck | None:
    """Sample once without stops, take a multi-token run of the output as the stop string,
    sample again with the same seed and that stop: the text must end right before it.

    Seeded sampling rather than greedy: a random model's greedy output repeats one token
    (`::::`), which leaves no multi-token string that first occurs after the start.
    """
    for prompt in prompts:
        free = (
            await client.complete(
                [prompt],
                model=model,
                temperature=1.0,
                max_tokens=max_tokens,
                logprobs=0,
                seed=seed,
            )
        ).choices[0][0]
        picked = pick_stop_tokens(free)
        if picked is None:
            continue
        stop = "".join(picked)
        stopped = (
            await client.complete(
                [prompt],
                model=model,
                temperature=1.0,
                max_tokens=max_tokens,
                stop=[stop, END_MARKER],
                seed=seed,
            )
        ).choices[0][0]
        expected = free.text[: free.text.index(stop)]
        return StopCheck(
            prompt=prompt,
            stop=stop,
            stop_tokens=picked,
            text_without_stop=free.text,
            text_with_stop=stopped.text,
            expected_text=expected,
            stop_reason=stopped.stop_reason,
            passed=stopped.text == expected
            and stopped.stop_reason == stop
            and stop not in stopped.text,
        )
    return None


def pick_stop_tokens(
    choice: Choice, *, min_tokens: int = 2, max_tokens: int = 3
) -> list[str] | None:
    """A run of `min_tokens`..`max_tokens` generated tokens that makes a clean stop string:
    printable, whole characters, at least 3 characters, not at the very start (so the text
    before it is not empty) and found first where those tokens stand."""
    if choice.logprobs is None:
        return None
    tokens = choice.logprobs.tokens
    offsets = choice.logprobs.text_offset
    for size in range(max_tokens, min_tokens - 1, -1):
        for start in range(1, len(tokens) - size + 1):
            window = tokens[start : start + size]
            stop = "".join(window)
            if any(not token for token in window) or "\ufffd" in stop:
                continue  # a token that is part of a multi-byte character
            if len(stop) < 3 or not stop.isprintable() or stop.isspace():
                continue
            position = choice.text.find(stop)
            if position <= 0 or (offsets and position != offsets[start] - offsets[0]):
                continue
            return window
    return None
