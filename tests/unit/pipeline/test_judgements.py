"""The A/B judge: label reading, scoring fallback, margins, and the combined `ok`."""

from __future__ import annotations

import pytest

from cai.pipeline.config import JudgeConfig
from cai.pipeline.judgements import (
    build_queries,
    combine,
    labels,
    margin,
    read_label,
    scored_logprob,
)
from cai.pipeline.prompts import load_template
from cai.pipeline.records import JudgeQuery

TEMPLATE = load_template("judge")


def _query(good: str, a: float, b: float) -> JudgeQuery:
    return JudgeQuery(good_label=good, logprob_a=a, logprob_b=b, method="top_logprobs")


def test_judge_asks_twice_with_the_options_swapped():
    queries = build_queries(TEMPLATE, "Why?", "Because.", swap=True)
    assert [q.good_label for q in queries] == ["A", "B"]
    good, bad = TEMPLATE.render("good"), TEMPLATE.render("bad")
    assert f"(A) {good}\n(B) {bad}" in queries[0].prompt
    assert f"(A) {bad}\n(B) {good}" in queries[1].prompt
    assert all(q.prompt.endswith("### Answer:") for q in queries)
    assert len(build_queries(TEMPLATE, "Why?", "Because.", swap=False)) == 1


def test_labels_come_from_the_template():
    assert labels(TEMPLATE) == (" A", " B")


def test_read_label_merges_spaced_and_bare_tokens():
    top = {" A": -1.0, "A": -1.0, " B": -2.0, " the": -0.5}
    assert read_label(top, " A") == pytest.approx(-1.0 + 0.6931, abs=1e-3)
    assert read_label(top, " B") == -2.0
    assert read_label({" the": -0.1}, " A") is None
    assert read_label({" Apple": -0.1}, " A") is None


def test_position_bias_cancels_with_the_swapped_query():
    # The judge likes letter A by 1.0 whatever the options say; the response is good by 0.5.
    queries = [
        _query("A", -1.0 + 1.0 + 0.25, -1.0 - 0.25),
        _query("B", -1.0 + 1.0 - 0.25, -1.0 + 0.25),
    ]
    assert margin(queries) == pytest.approx(0.5)


def test_scored_logprob_sums_the_label_tokens_only():
    # prompt "x Answer:" + label " A" + one generated token, as vLLM echoes them
    tokens = ["x", " Answer", ":", " A", " the"]
    logprobs = [None, -3.0, -1.0, -0.7, -9.0]
    offsets = [0, 1, 8, 9, 11]
    assert scored_logprob(tokens, logprobs, offsets, label_chars=2) == pytest.approx(-0.7)


def test_scored_logprob_counts_a_token_straddling_the_boundary():
    tokens = ["x", ":A", "B", " gen"]
    logprobs = [None, -1.5, -0.5, -4.0]
    offsets = [0, 1, 3, 4]
    assert scored_logprob(tokens, logprobs, offsets, label_chars=2) == pytest.approx(-2.0)


@pytest.mark.parametrize(
    ("ok_rule", "rules_ok", "margin_value", "expected"),
    [
        ("rules_and_judge", True, 0.3, True),
        ("rules_and_judge", True, -0.3, False),
        ("rules_and_judge", False, 0.3, False),
        ("rules", True, -5.0, True),
        ("judge", False, 0.3, True),
    ],
)
def test_combined_ok_rule(ok_rule, rules_ok, margin_value, expected):
    verdict = combine(
        response_id="qa-00001.r",
        rules={"nonempty": rules_ok},
        truncated=False,
        queries=[_query("A", margin_value, 0.0)],
        config=JudgeConfig(ok_rule=ok_rule),
    )
    assert verdict.ok is expected
    assert verdict.rules_ok is rules_ok
    assert verdict.judge_margin == pytest.approx(margin_value)


def test_rules_and_judge_verdicts_are_recorded_separately():
    verdict = combine(
        response_id="r",
        rules={"nonempty": True, "no_template_residue": False},
        truncated=True,
        queries=[_query("A", -0.1, -2.0)],
        config=JudgeConfig(),
    )
    assert verdict.rules == {"nonempty": True, "no_template_residue": False}
    assert verdict.rules_ok is False and verdict.judge_ok is True and verdict.ok is False
    assert verdict.truncated is True


class _FakeJudge:
    """Answers the top-k query with `top`, and the echo queries with fixed label log-probs."""

    def __init__(self, top: dict[str, float], echoed: tuple[float, float]) -> None:
        self.top = top
        self.echoed = echoed
        self.calls: list[dict[str, object]] = []

    async def complete(self, prompts: list[str], **params: object) -> object:
        from cai.generator.types import Choice, CompletionResult, TokenLogprobs, Usage

        self.calls.append(params)
        if params.get("echo"):
            choices = [
                [
                    Choice(
                        text=p,
                        logprobs=TokenLogprobs(
                            # prompt, the 2-character label, one generated token
                            tokens=[p[:-2], p[-2:], "x"],
                            token_logprobs=[None, lp, -9.0],
                            text_offset=[0, len(p) - 2, len(p)],
                        ),
                    )
                ]
                for p, lp in zip(prompts, self.echoed, strict=True)
            ]
        else:
            logprobs = TokenLogprobs(tokens=["x"], token_logprobs=[-1.0], top_logprobs=[self.top])
            choices = [[Choice(text="x", logprobs=logprobs)]]
        return CompletionResult(
            id="j", model="m", prompts=prompts, choices=choices, usage=Usage(prompt_tokens=3)
        )


async def _ask(judge: _FakeJudge, method: str, good: str = "A") -> JudgeQuery:
    from cai.pipeline.judgements import JudgePrompt, ask

    return await ask(
        judge.complete,
        JudgePrompt(prompt="Which?", good_label=good),
        model="m",
        labels=(" A", " B"),
        method=method,
        top_logprobs=5,
        seed=1,
    )


async def test_ask_reads_both_labels_from_the_top_logprobs_in_one_request() -> None:
    judge = _FakeJudge({" A": -0.1, " B": -2.5}, echoed=(0.0, 0.0))
    query = await _ask(judge, "auto")
    assert (query.method, query.logprob_a, query.logprob_b) == ("top_logprobs", -0.1, -2.5)
    assert len(judge.calls) == 1 and query.usage.prompt_tokens == 3
    assert query.labels_in_top_k == 2


async def test_ask_scores_a_label_missing_from_the_top_k_exactly() -> None:
    judge = _FakeJudge({" A": -0.1}, echoed=(-0.7, -3.0))
    query = await _ask(judge, "auto", good="B")
    assert (query.method, query.logprob_a, query.logprob_b) == ("scored", -0.7, -3.0)
    assert judge.calls[1]["echo"] is True and query.usage.prompt_tokens == 6
    assert query.labels_in_top_k == 1  # what the top-k held before it was scored


@pytest.mark.parametrize(
    ("top", "held"), [({" A": -0.1, " the": -4.0}, 1), ({" the": -0.2, " a": -4.0}, 0)]
)
async def test_a_floored_label_is_counted_as_not_read(top, held) -> None:
    judge = _FakeJudge(top, echoed=(0.0, 0.0))
    query = await _ask(judge, "top_logprobs")
    assert query.labels_in_top_k == held
    assert query.logprob_b == -4.0  # floored at the smallest listed log-prob
    assert len(judge.calls) == 1


async def test_scoring_alone_records_no_top_k_count() -> None:
    judge = _FakeJudge({}, echoed=(-0.7, -3.0))
    query = await _ask(judge, "scored")
    assert query.method == "scored" and query.labels_in_top_k is None
    assert len(judge.calls) == 1


def test_a_query_written_before_the_count_existed_still_reads() -> None:
    old = {"good_label": "A", "logprob_a": -0.1, "logprob_b": -2.0, "method": "top_logprobs"}
    assert JudgeQuery.model_validate(old).labels_in_top_k is None
