"""A fake judge server for the judge check: `complete` shaped like GeneratorClient.complete.

judge = perfect()            # favours the good option exactly for each case's good answer
await check_judge(judge.complete, model="tiny", pipeline=PipelineConfig(), run_dir=tmp)
judge.calls                  # the sampling parameters of every request
"""

from __future__ import annotations

from collections.abc import Callable

from cai.evaluation.judge_cases import load_judge_cases
from cai.generator.types import Choice, CompletionResult, TokenLogprobs, Usage
from cai.pipeline.prompts import load_template

Prefers = Callable[[str, str, str], str]
"""(instruction, response, good letter) -> the letter the fake judge favours."""


class FakeJudge:
    """GeneratorClient.complete-shaped: answers the one-token judge query with top log-probs."""

    def __init__(self, prefers: Prefers) -> None:
        self.prefers = prefers
        self.good_option = load_template("judge").render("good")
        self.calls: list[dict[str, object]] = []

    async def complete(self, prompts: list[str], **params: object) -> CompletionResult:
        self.calls.append(params)
        groups = []
        for prompt in prompts:
            instruction = prompt.split("### Instruction:\n", 1)[1].split("\n\n### Response:", 1)[0]
            response = prompt.split("### Response:\n", 1)[1].split("\n\n### Question:", 1)[0]
            good_letter = "A" if f"(A) {self.good_option}" in prompt else "B"
            liked = self.prefers(instruction, response, good_letter)
            other = "B" if liked == "A" else "A"
            top = {f" {liked}": -0.1, f" {other}": -3.0, " the": -4.0}
            logprobs = TokenLogprobs(
                tokens=[f" {liked}"], token_logprobs=[-0.1], top_logprobs=[top]
            )
            groups.append([Choice(text=f" {liked}", logprobs=logprobs)])
        return CompletionResult(
            id="j",
            model=str(params["model"]),
            prompts=prompts,
            choices=groups,
            usage=Usage(prompt_tokens=40, completion_tokens=1),
        )


def perfect() -> FakeJudge:
    good = {(c.instruction, c.good) for c in load_judge_cases().cases}
    return FakeJudge(
        lambda i, r, letter: letter if (i, r) in good else ("B" if letter == "A" else "A")
    )


def always_a() -> FakeJudge:
    return FakeJudge(lambda i, r, letter: "A")
