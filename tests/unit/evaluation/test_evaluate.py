"""evaluate_stage against a fake vLLM (httpx.MockTransport): records, verdicts, resume, summary."""

from __future__ import annotations

import json

import httpx
import pytest

from cai.evaluation.answers import mentions_reference
from cai.evaluation.evaluate import evaluate_stage
from cai.evaluation.records import read_eval_records
from cai.evaluation.settings import EvalSettings, EvaluationError
from cai.generator import GeneratorClient
from cai.pipeline.config import PipelineConfig
from cai.pipeline.heldout import load_heldout

URL = "http://vllm.test"


class FakeVllm:
    """Base answers by speaking for the user (fails a rule); the adapter answers cleanly.

    The judge says good (A under the first query) when the response mentions "clean".
    """

    def __init__(self, fail_models: frozenset[str] = frozenset()) -> None:
        self.calls: list[dict] = []
        self.fail_models = fail_models
        self.model_root = "/nonexistent/model"

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny", "root": self.model_root}]})
        body = json.loads(request.content)
        self.calls.append(body)
        if request.url.path == "/tokenize":
            return httpx.Response(
                200,
                json={"count": 0, "max_model_len": 512, "tokens": [ord(c) for c in body["prompt"]]},
            )
        if body["model"] in self.fail_models:
            return httpx.Response(
                400, json={"error": {"message": "no such model", "type": "NotFound"}}
            )
        choices = []
        for i, prompt in enumerate(body["prompt"]):
            if "### Question:" in prompt:
                # Which letter is the good option in this query: the one followed by "Yes".
                good = "A" if "(A) Yes" in prompt else "B"
                liked = "clean" in prompt.split("### Question:")[0].split("### Response:")[-1]
                top = {f" {good}": -0.2, f" {'B' if good == 'A' else 'A'}": -1.8}
                if not liked:
                    top = {k: -1.8 if v == -0.2 else -0.2 for k, v in top.items()}
                choices.append(
                    {
                        "index": i,
                        "text": " A",
                        "finish_reason": "length",
                        "logprobs": {
                            "tokens": [" A"],
                            "token_logprobs": [-0.2],
                            "top_logprobs": [top],
                            "text_offset": [0],
                        },
                    }
                )
            elif body["model"] == "tiny":
                choices.append(
                    {"index": i, "text": " Au maybe\nUser: and you?", "finish_reason": "stop"}
                )
            else:
                choices.append(
                    {"index": i, "text": " It is Au, a clean answer.", "finish_reason": "stop"}
                )
        return httpx.Response(
            200,
            json={
                "id": "x",
                "model": body["model"],
                "choices": choices,
                "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
            },
        )


def _config() -> PipelineConfig:
    return PipelineConfig.small_test()


async def _evaluate(fake: FakeVllm, run_dir, **kwargs):
    async with GeneratorClient(
        URL, transport=httpx.MockTransport(fake.handler), max_retries=0
    ) as gen:
        return await evaluate_stage(
            gen,
            run_dir,
            base_model="tiny",
            pipeline=_config(),
            settings=EvalSettings(max_tokens=16),
            **kwargs,
        )


async def test_baseline_and_stage_keep_rule_and_judge_verdicts_apart(tmp_path):
    fake = FakeVllm()
    base = await _evaluate(fake, tmp_path, stage=0, model="tiny")
    stage = await _evaluate(fake, tmp_path, stage=1, model="stage1-abc")
    n = len(load_heldout().instructions)
    records = read_eval_records(tmp_path / "eval.jsonl")
    assert len(records) == 2 * n
    assert {r.model for r in records if r.stage == 1} == {"stage1-abc"}
    # The base writes a user turn: every rule verdict fails; the judge dislikes it too.
    assert base.rules["all"].successes == 0
    assert base.judge["all"].successes == 0
    # The adapter's clean answer passes the rules except where a reference fact is missing.
    with_reference = sum(1 for i in load_heldout().instructions if i.reference)
    mentions_au = sum(1 for i in load_heldout().instructions if "Au" in i.reference)
    assert stage.rules["all"].successes == n - with_reference + mentions_au
    assert stage.judge["all"].successes == n
    assert stage.vs_base is not None
    assert stage.vs_base.judge is not None and stage.vs_base.judge.b_only == n
    assert stage.vs_base.rules.p_value < 0.001
    assert (tmp_path / "stages" / "1" / "eval_summary.json").exists()


async def test_the_judge_is_the_base_even_when_an_adapter_answers(tmp_path):
    fake = FakeVllm()
    await _evaluate(fake, tmp_path, stage=1, model="stage1-abc")
    judge_models = {c["model"] for c in fake.calls if "### Question:" in c["prompt"][0]}
    answer_models = {c["model"] for c in fake.calls if "### Question:" not in c["prompt"][0]}
    assert judge_models == {"tiny"}
    assert answer_models == {"stage1-abc"}


async def test_every_stage_sees_the_same_prompt_greedy_with_the_templates_stop(tmp_path):
    fake = FakeVllm()
    await _evaluate(fake, tmp_path, stage=0, model="tiny")
    await _evaluate(fake, tmp_path, stage=1, model="stage1-abc")
    answers = [c for c in fake.calls if "### Question:" not in c["prompt"][0]]
    by_model: dict[str, list[str]] = {}
    for call in answers:
        by_model.setdefault(call["model"], []).append(call["prompt"][0])
        assert call["temperature"] == 0.0
        assert "\n### Instruction:" in call["stop"]
    assert sorted(by_model["tiny"]) == sorted(by_model["stage1-abc"])


async def test_baseline_is_cached_in_the_run_folder(tmp_path):
    fake = FakeVllm()
    first = await _evaluate(fake, tmp_path, stage=0, model="tiny")
    calls = len(fake.calls)
    again = await _evaluate(fake, tmp_path, stage=0, model="tiny")
    assert len(fake.calls) == calls
    assert again == first


async def test_failed_answers_are_recorded_then_retried(tmp_path):
    broken = FakeVllm(fail_models=frozenset({"stage1-abc"}))
    summary = await _evaluate(broken, tmp_path, stage=1, model="stage1-abc")
    assert summary.failed == summary.n
    assert all(
        r.status == "failed" and "no such model" in r.reason
        for r in read_eval_records(tmp_path / "eval.jsonl")
    )
    healed = await _evaluate(FakeVllm(), tmp_path, stage=1, model="stage1-abc")
    assert healed.failed == 0
    assert len(read_eval_records(tmp_path / "eval.jsonl")) == healed.n


async def test_a_different_model_for_an_evaluated_stage_is_refused(tmp_path):
    fake = FakeVllm()
    await _evaluate(fake, tmp_path, stage=1, model="stage1-abc")
    with pytest.raises(EvaluationError, match="stage 1 answers"):
        await _evaluate(fake, tmp_path, stage=1, model="stage1-other")


async def test_pair_accuracy_is_added_when_test_pairs_are_given(tmp_path):
    pairs = tmp_path / "test.jsonl"
    pairs.write_text(json.dumps({"prompt": "Q: x\nA:", "chosen": " yes", "rejected": " no"}) + "\n")
    fake = FakeVllm()

    original = fake.handler

    def with_prompt_logprobs(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return original(request)
        body = json.loads(request.content)
        if body.get("prompt_logprobs") == 0:
            fake.calls.append(body)
            lp = -0.5 if body["model"] != "tiny" else -1.0
            choices = [
                {
                    "index": i,
                    "text": "x",
                    "prompt_logprobs": [None]
                    + [{str(ord(c)): {"logprob": lp if c == "y" else -1.0}} for c in text[1:]],
                    "prompt_token_ids": [ord(c) for c in text],
                }
                for i, text in enumerate(body["prompt"])
            ]
            return httpx.Response(
                200, json={"id": "s", "model": body["model"], "choices": choices, "usage": {}}
            )
        return original(request)

    fake.handler = with_prompt_logprobs  # type: ignore[method-assign]
    # The base model's folder is readable here: its EOS is appended to both sides, as TRL does.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "tokenizer_config.json").write_text('{"eos_token": "<E>"}')
    fake.model_root = str(tmp_path / "model")
    summary = await _evaluate(fake, tmp_path, stage=1, model="stage1-abc", test_pairs=pairs)
    assert summary.pair_accuracy is not None
    assert (summary.pair_accuracy.n, summary.pair_accuracy.correct) == (1, 1)
    scored = [c["prompt"] for c in fake.calls if c.get("prompt_logprobs") == 0]
    assert all(text.endswith("<E>") for batch in scored for text in batch)
    assert (tmp_path / "stages" / "1" / "pair_scores.jsonl").exists()


def test_reference_facts_match_whole_words_ignoring_case():
    assert mentions_reference("The symbol is AU.", ["Au"])
    assert not mentions_reference("Australia", ["Au"])
    assert mentions_reference("It has 6 sides", ["6", "six"])
    assert not mentions_reference("It has 16 sides", ["6"])
    assert mentions_reference("Carbon dioxide, mostly.", ["carbon dioxide", "CO2"])


async def test_summary_keeps_examples_with_the_base_verdicts(tmp_path):
    fake = FakeVllm()
    await _evaluate(fake, tmp_path, stage=0, model="tiny")
    stage = await _evaluate(fake, tmp_path, stage=1, model="stage1-abc")
    assert 0 < len(stage.examples) <= 12
    assert {e.type for e in stage.examples[:4]} == {"qa", "completion", "generation", "response"}
    assert all(e.base_judge_ok is False and e.judge_ok for e in stage.examples)
