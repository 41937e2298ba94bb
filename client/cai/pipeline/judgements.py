"""Step 5: a verdict for the original response and for the final revision.

Each verdict has two independent parts, recorded separately:
- rules (`rules.check`): type-specific checks, no length limits;
- the model judge: the judge template asks "does the response do what was asked (A) good
  (B) bad?" and reads the log-probabilities of the next token ' A' / ' B' (one generated
  token, `logprobs` = top-k). With `swap`, a second query puts the good option under (B);
  the margin is the mean over queries of log P(good letter) - log P(bad letter), so a
  preference for one letter cancels out. A label missing from the top-k is scored instead
  (`method: auto`): the prompt plus the label is echoed and the label's own log-probability
  read back, exact whatever the top-k holds.

The combined `ok` (config `judge.ok_rule`):
    rules_and_judge (default)  ok = rules_ok and margin > threshold
    rules                      ok = rules_ok
    judge                      ok = margin > threshold
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from cai.generator.types import CompletionResult
from cai.pipeline.prompts import Template
from cai.pipeline.schema import JudgeQuery, TokenUsage, Verdict
from cai.pipeline.sections import EndpointConfig, Section

LETTERS = ("A", "B")


@dataclass(frozen=True)
class JudgePrompt:
    prompt: str
    good_label: str  # "A" or "B": the letter whose option says the response is good


class JudgeConfig(Section):
    endpoints: list[EndpointConfig] = Field(
        default_factory=list, description="A separate judge server; empty: the generator's."
    )
    model: str | None = Field(default=None, description="Judge model; None: the generating model.")
    method: Literal["auto", "top_logprobs", "scored"] = Field(
        default="auto",
        description="top_logprobs: read ' A'/' B' from the next token's top log-probs (1 token); "
        "scored: score prompt+label with echo; auto: top_logprobs, scoring a label only "
        "when it is missing from the top-k.",
    )
    top_logprobs: int = Field(default=20, ge=2, le=20)
    swap: bool = Field(default=True, description="Ask again with A/B swapped; average the margins.")
    threshold: float = Field(default=0.0, description="judge_ok when the margin is above this.")
    ok_rule: Literal["rules_and_judge", "rules", "judge"] = Field(
        default="rules_and_judge",
        description="ok = rules_ok and judge_ok (default), or only one of them.",
    )


def labels(template: Template) -> tuple[str, str]:
    """The next-token strings for A and B (template header `labels`, default ' A', ' B')."""
    found = template.header.get("labels") or [" A", " B"]
    if not isinstance(found, list) or len(found) != 2:
        raise ValueError(f"template {template.tag}: `labels` must list two strings")
    return str(found[0]), str(found[1])


def build_queries(
    template: Template, instruction: str, response: str, *, swap: bool
) -> list[JudgePrompt]:
    good, bad = template.render("good"), template.render("bad")
    order = [("A", good, bad)] + ([("B", bad, good)] if swap else [])
    return [
        JudgePrompt(
            template.render(
                "query", instruction=instruction, response=response, option_a=a, option_b=b
            ),
            good_label=good_label,
        )
        for good_label, a, b in order
    ]


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def read_label(top: dict[str, float], label: str) -> float | None:
    """log P(label) from one position's top log-probs, counting ' A' and 'A' as the same answer."""
    bare = label.strip()
    variants = {bare, " " + bare, label}
    found = [lp for token, lp in top.items() if token in variants]
    return _logsumexp(found) if found else None


def scored_logprob(
    tokens: list[str], token_logprobs: list[float | None], text_offset: list[int], label_chars: int
) -> float:
    """Sum of the log-probs of the label's echoed tokens (prompt + label + one generated token).

    Offsets are counted back from the generated token, in the server's own offset space, so
    decoded prompt tokens that differ in length from the original text do not shift the
    boundary. A token that straddles the boundary counts: it contains part of the label.
    """
    if len(tokens) < 2 or len(text_offset) != len(tokens):
        raise ValueError(
            "echoed log-probs need the prompt tokens, the label and one generated token"
        )
    boundary = text_offset[-1] - label_chars
    total = 0.0
    for i in range(len(tokens) - 1):
        end = text_offset[i + 1]
        logprob = token_logprobs[i]
        if end > boundary and logprob is not None:
            total += logprob
    return total


def margin(queries: list[JudgeQuery]) -> float:
    diffs = [
        (q.logprob_a - q.logprob_b) if q.good_label == "A" else (q.logprob_b - q.logprob_a)
        for q in queries
    ]
    return sum(diffs) / len(diffs)


def combine(
    *,
    response_id: str,
    rules: dict[str, bool],
    truncated: bool,
    queries: list[JudgeQuery],
    config: JudgeConfig,
) -> Verdict:
    rules_ok = all(rules.values())
    judge_margin = margin(queries) if queries else None
    judge_ok = None if judge_margin is None else judge_margin > config.threshold
    if config.ok_rule == "rules":
        ok = rules_ok
    elif config.ok_rule == "judge":
        ok = bool(judge_ok)
    else:
        ok = rules_ok and bool(judge_ok)
    return Verdict(
        response_id=response_id,
        rules=rules,
        rules_ok=rules_ok,
        truncated=truncated,
        judge_margin=None if judge_margin is None else round(judge_margin, 6),
        judge_queries=queries,
        judge_ok=judge_ok,
        ok=ok,
    )


def _usage(result: CompletionResult) -> TokenUsage:
    return TokenUsage(
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
    )


class JudgeAnswerError(RuntimeError):
    """The judge server's answer lacks the log-probs the judge reads."""


Complete = Callable[..., Awaitable[CompletionResult]]
"""`complete(prompts, **sampling)`: GeneratorClient.complete or a caller wrapping it."""


async def ask(
    complete: Complete,
    query: JudgePrompt,
    *,
    model: str,
    labels: tuple[str, str],
    method: str,
    top_logprobs: int,
    seed: int,
    count: Callable[[CompletionResult], TokenUsage] | None = None,
) -> JudgeQuery:
    """One A/B question, answered from the next token's top-k log-probs where both labels are
    there (`method` auto or top_logprobs), else scored exactly by echoing prompt + label.

    `count` turns each server answer into the usage recorded on the query (and may tally it).
    """
    count = count or _usage
    label_a, label_b = labels
    usage = TokenUsage()
    in_top_k: int | None = None  # stays None when only scoring is asked
    if method != "scored":
        result = await complete(
            [query.prompt],
            model=model,
            max_tokens=1,
            temperature=0.0,
            logprobs=top_logprobs,
            seed=seed,
        )
        usage = count(result)
        choice = result.choices[0][0]
        top = (
            choice.logprobs.top_logprobs[0]
            if choice.logprobs and choice.logprobs.top_logprobs
            else None
        ) or {}
        lp_a, lp_b = read_label(top, label_a), read_label(top, label_b)
        in_top_k = (lp_a is not None) + (lp_b is not None)
        if lp_a is not None and lp_b is not None:
            return JudgeQuery(
                good_label=query.good_label,
                logprob_a=lp_a,
                logprob_b=lp_b,
                method="top_logprobs",
                labels_in_top_k=in_top_k,
                usage=usage,
            )
        if method == "top_logprobs":
            # Not in the top-k: its log-prob is at most the smallest one listed.
            floor = min(top.values()) if top else -100.0
            return JudgeQuery(
                good_label=query.good_label,
                logprob_a=floor if lp_a is None else lp_a,
                logprob_b=floor if lp_b is None else lp_b,
                method="top_logprobs",
                labels_in_top_k=in_top_k,
                usage=usage,
            )
    result = await complete(
        [query.prompt + label_a, query.prompt + label_b],
        model=model,
        max_tokens=1,
        temperature=0.0,
        logprobs=0,
        echo=True,
        seed=seed,
    )
    scored_usage = count(result)
    scores = []
    for group, label in zip(result.choices, labels, strict=True):
        lp = group[0].logprobs
        if lp is None:
            raise JudgeAnswerError(
                "the judge server returned no echoed log-probs (echo + logprobs)"
            )
        scores.append(scored_logprob(lp.tokens, lp.token_logprobs, lp.text_offset, len(label)))
    return JudgeQuery(
        good_label=query.good_label,
        logprob_a=round(scores[0], 6),
        logprob_b=round(scores[1], 6),
        method="scored",
        labels_in_top_k=in_top_k,
        usage=TokenUsage(
            prompt_tokens=usage.prompt_tokens + scored_usage.prompt_tokens,
            completion_tokens=usage.completion_tokens + scored_usage.completion_tokens,
        ),
    )
