"""The judge check: its cases, their corruptions, and the figures a fake judge gets.

.venv/bin/pytest tests/unit/evaluation/test_judge_check.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cai.evaluation.judge_cases import (
    CORRUPTIONS,
    JudgeCasesError,
    corrupt,
    load_judge_cases,
    repeated,
    rotation,
    truncated,
)
from cai.evaluation.judge_check import check_judge, reusable_check
from cai.evaluation.records import JudgeCheck
from cai.pipeline import dedupe, rules
from cai.pipeline.config import PipelineConfig, RulesConfig
from cai.pipeline.heldout import load_heldout
from cai.runfolder import JUDGE_CHECK_FILE
from tests.support.seed_pool import seed_pool_texts
from tests.unit.evaluation.fake_judge import FakeJudge, always_a, perfect

# The held-out set's own leak threshold (cai.pipeline.heldout): what counts as a copy there
# counts as one here.
NEAR = 0.5


# ---- the cases file ------------------------------------------------------------------------


def test_packaged_cases_are_versioned_and_cover_every_instruction_type():
    cases = load_judge_cases()
    assert cases.version == "judge-cases-v1"
    assert 24 <= len(cases.cases) <= 32
    assert {c.type for c in cases.cases} == {"qa", "completion", "generation", "response"}


def test_no_judge_case_copies_a_held_out_or_seed_pool_text():
    others = [i.instruction for i in load_heldout().instructions]
    others += seed_pool_texts()
    index = dedupe.DuplicateIndex(threshold=NEAR)
    for n, text in enumerate(others):
        index.add(f"other-{n}", text)
    assert index.near("What's the chemical symbol for gold?")  # the index does catch a copy
    copies = {c.id: index.near(c.instruction) for c in load_judge_cases().cases}
    assert {case: found for case, found in copies.items() if found} == {}


def test_a_case_whose_wrong_answer_equals_the_good_one_is_refused(tmp_path):
    path = tmp_path / "cases.yaml"
    case = {"id": "c1", "type": "qa", "instruction": "Why?", "good": "Because.", "wrong": "because"}
    other = {"id": "c2", "type": "qa", "instruction": "How?", "good": "Thus.", "wrong": "Not so."}
    path.write_text(yaml.safe_dump({"version": "t", "cases": [case, other]}))
    with pytest.raises(JudgeCasesError, match="key fact"):
        load_judge_cases(path)


# ---- corruptions ---------------------------------------------------------------------------


def test_corruptions_are_deterministic():
    cases = load_judge_cases()
    assert corrupt(cases) == corrupt(load_judge_cases())


def test_truncated_is_shorter_and_stops_mid_sentence():
    for case, answers in corrupt(load_judge_cases()):
        cut = answers["truncated"]
        assert len(cut.split()) < len(case.good.split()), case.id
        assert case.good.startswith(cut) and cut[-1] not in ".!?", case.id


def test_truncated_keeps_about_forty_percent_of_the_words():
    assert truncated("one two three four five six seven eight nine ten.") == "one two three four"


def test_repeated_trips_the_pipelines_repetition_rule():
    for case, answers in corrupt(load_judge_cases()):
        checks = rules.check(
            case.type, case.instruction, answers["repeated"], "stop", RulesConfig()
        )
        assert checks["not_repetitive"] is False, case.id
        assert rules.check(case.type, case.instruction, case.good, "stop", RulesConfig())[
            "not_repetitive"
        ], case.id


def test_repeated_loops_the_first_sentence_even_without_a_full_stop():
    assert repeated("Fill Your Cart", times=3) == "Fill Your Cart. Fill Your Cart. Fill Your Cart."


def test_off_topic_is_another_cases_good_answer_by_a_seeded_rotation():
    cases = load_judge_cases()
    goods = [c.good for c in cases.cases]
    for case, answers in corrupt(cases):
        assert answers["off_topic"] != case.good and answers["off_topic"] in goods
    # Every answer is used exactly once: a rotation, not a random draw that could repeat.
    assert sorted(a["off_topic"] for _, a in corrupt(cases)) == sorted(goods)
    assert {rotation(29, seed) for seed in range(20)} <= set(range(1, 29))
    assert len({rotation(29, seed) for seed in range(20)}) > 1


def test_wrong_fact_is_the_hand_written_wrong_answer():
    for case, answers in corrupt(load_judge_cases()):
        assert answers["wrong_fact"] == case.wrong != case.good


# ---- the check against fake judges ---------------------------------------------------------


async def _check(judge: FakeJudge, run_dir: Path, model: str = "tiny") -> JudgeCheck:
    return await check_judge(
        judge.complete, model=model, pipeline=PipelineConfig(seed=3), run_dir=run_dir
    )


async def test_a_perfect_judge_agrees_on_every_pair_and_is_trustworthy(tmp_path):
    check = await _check(perfect(), tmp_path)
    n = len(load_judge_cases().cases)
    assert check.agreement.pairs == n * len(CORRUPTIONS)
    assert check.agreement.interval.rate == 1.0 and check.trustworthy
    assert all(a.interval.rate == 1.0 for a in check.agreement_by_kind.values())
    assert check.accuracy.rate == 1.0 and check.good_ok.rate == check.corrupted_not_ok.rate == 1.0
    assert check.position_bias.order_disagrees is not None
    assert check.position_bias.order_disagrees.rate == 0.0
    assert check.position_bias.prefers_a_nats == pytest.approx(0.0)
    assert "tells good answers from corrupted ones" in check.verdict
    assert check.labels_read is not None and check.labels_read.rate == 1.0


async def test_the_parse_rate_counts_queries_whose_top_k_lacked_a_label(tmp_path):
    judge = perfect()
    answer = judge.complete

    async def drop_b_from_every_other_query(prompts, **params):
        result = await answer(prompts, **params)
        if len(judge.calls) % 2 == 0:
            top = result.choices[0][0].logprobs.top_logprobs[0]
            top.pop(" B", None)
        return result

    check = await check_judge(
        drop_b_from_every_other_query,
        model="tiny",
        pipeline=PipelineConfig(seed=3, judge={"method": "top_logprobs"}),
        run_dir=tmp_path,
    )
    assert check.labels_read is not None
    assert check.labels_read.n == len(judge.calls)
    assert check.labels_read.successes == len(judge.calls) // 2


async def test_a_judge_that_always_says_a_is_chance_with_full_position_bias(tmp_path):
    check = await _check(always_a(), tmp_path)
    # With swap every margin is 0: each pair ties, and a tie counts half.
    assert check.agreement.ties == check.agreement.pairs
    assert check.agreement.interval.rate == 0.5 and not check.trustworthy
    assert check.position_bias.order_disagrees is not None
    assert check.position_bias.order_disagrees.rate == 1.0
    assert check.position_bias.prefers_a_nats == pytest.approx(2.9)
    assert check.accuracy.rate == 0.0  # margin 0 is not above threshold 0: nothing is ok
    assert "no better than chance" in check.verdict and "not evidence" in check.verdict


async def test_the_judge_is_asked_as_the_pipeline_asks_it(tmp_path):
    judge = perfect()
    check = await _check(judge, tmp_path)
    n = len(load_judge_cases().cases)
    assert len(judge.calls) == n * (1 + len(CORRUPTIONS)) * 2  # swap: two queries an answer
    assert {c["max_tokens"] for c in judge.calls} == {1}
    assert {c["logprobs"] for c in judge.calls} == {PipelineConfig().judge.top_logprobs}
    assert len({c["seed"] for c in judge.calls}) == len(judge.calls)  # derived per query
    assert check.template == "judge@1" and check.method == "auto"
    assert check.prompt_tokens == 40 * len(judge.calls)


async def test_every_cases_margins_are_in_the_file(tmp_path):
    await _check(perfect(), tmp_path)
    data = json.loads((tmp_path / JUDGE_CHECK_FILE).read_text())
    assert len(data["results"]) == len(load_judge_cases().cases)
    first = data["results"][0]
    assert [a["kind"] for a in first["answers"]] == ["good", *CORRUPTIONS]
    assert all(isinstance(a["margin"], float) and len(a["queries"]) == 2 for a in first["answers"])
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file, then renamed


async def test_a_resumed_run_reuses_the_check_without_asking(tmp_path):
    first = await _check(perfect(), tmp_path)
    again = always_a()
    second = await _check(again, tmp_path)
    assert again.calls == [] and second == first
    assert reusable_check(tmp_path, model="tiny", pipeline=PipelineConfig()) == first


async def test_another_judge_model_or_threshold_is_asked_again(tmp_path):
    await _check(perfect(), tmp_path)
    assert reusable_check(tmp_path, model="other", pipeline=PipelineConfig()) is None
    moved = PipelineConfig.model_validate({"judge": {"threshold": 1.0}})
    assert reusable_check(tmp_path, model="tiny", pipeline=moved) is None
    judge = always_a()
    check = await _check(judge, tmp_path, model="other")
    assert judge.calls and check.judge_model == "other" and not check.trustworthy


async def test_an_unreadable_check_file_is_asked_again(tmp_path):
    (tmp_path / JUDGE_CHECK_FILE).write_text('{"judge_model": "tiny", "cas')
    judge = perfect()
    check = await _check(judge, tmp_path)
    assert judge.calls and check.trustworthy
