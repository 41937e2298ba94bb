"""Shared-prompt packing (services/trainer/jobs/packing.py, packing_trainer.py) on CPU.

The packed row must give every answer exactly the log-probs TRL's own padded [prompt,
answer] rows give it: checked on the tiny model in float32, with and without the adapter.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from services.trainer.jobs.packed_varlen import VarlenLayout
from services.trainer.jobs.packing import (
    CHOSEN,
    FLEX_BLOCK,
    PAD,
    REJECTED,
    SHARED,
    PairIds,
    attention_mask,
    block_mask,
    dense_mask,
    pack,
    packed_logps,
    register_packed_attentions,
)
from services.trainer.jobs.packing_plan import PACKED_FLEX_ATTENTION, PACKED_VARLEN_ATTENTION
from services.trainer.jobs.packing_trainer import (
    PackedBatchSampler,
    packed_batches,
    sigmoid_dpo_losses,
)
from services.trainer.jobs.training_data import PairTokens
from services.trainer.jobs.training_eval import pair_logps


def random_pairs(n: int, seed: int, vocab: int = 760) -> list[PairIds]:
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(1, vocab) for _ in range(rng.randint(lo, hi))]

    return [PairIds(ids(1, 30), ids(1, 25), ids(1, 25)) for _ in range(n)]


def lora_model(tiny_model: Path, attn: str = "sdpa") -> Any:
    """The tiny model with TRL's fused LM head and a LoRA whose B is not zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    if attn in (PACKED_FLEX_ATTENTION, PACKED_VARLEN_ATTENTION):
        register_packed_attentions()
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model, dtype=torch.float32, attn_implementation=attn
    )
    add_fused_lm_head(model)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.5
    return peft_model


def unpacked(model: Any, pairs: list[PairIds]) -> Any:
    """Summed log-probs from TRL's padded rows (the held-out evaluation's path)."""
    tokens = [PairTokens(list(p.prompt), list(p.chosen), list(p.rejected)) for p in pairs]
    return pair_logps(model, tokens, pad_token_id=0, batch_size=4, device=torch.device("cpu"))


def unpacked_per_token(model: Any, pair: PairIds, answer: list[int]) -> torch.Tensor:
    """Per-token log-probs of `answer` after the prompt, one plain sequence, no mask."""
    ids = torch.tensor([[*pair.prompt, *answer]])
    labels = ids.masked_fill(torch.arange(ids.size(1)) < len(pair.prompt), -100)
    out = model(input_ids=ids, labels=labels, fused_lm_head=True, use_cache=False)
    return out.log_probs[0, len(pair.prompt) - 1 :]


def assert_packed_equals_unpacked(model: Any, pairs: list[PairIds], attn: str) -> None:
    # Padding changes nothing; a block mask needs whole tiles.
    multiple = FLEX_BLOCK if attn == PACKED_FLEX_ATTENTION else 16
    batch = pack(pairs, pad_token_id=0, multiple_of=multiple, varlen=True)
    with torch.no_grad():
        packed = packed_logps(model, batch, attention_mask(batch, attn, torch.float32))
        if attn in (PACKED_FLEX_ATTENTION, PACKED_VARLEN_ATTENTION):  # packed rows only
            model.get_base_model().set_attn_implementation("sdpa")
        for index, pair in enumerate(pairs):
            for kind, answer in ((CHOSEN, pair.chosen), (REJECTED, pair.rejected)):
                where = packed.labelled & (batch["pair"] == index) & (batch["segment"] == kind)
                expected = unpacked_per_token(model, pair, list(answer))
                torch.testing.assert_close(packed.per_token[where], expected, atol=1e-5, rtol=0)
        plain = unpacked(model, pairs)
    # Sums of a few dozen values of about -6: float32 rounding alone is ~1e-5 there.
    torch.testing.assert_close(packed.chosen, plain.chosen, atol=0, rtol=1e-6)
    torch.testing.assert_close(packed.rejected, plain.rejected, atol=0, rtol=1e-6)


# PACKED_FLEX_ATTENTION and PACKED_VARLEN_ATTENTION are the CUDA paths. On CPU flex runs
# its eager reference, which checks the block mask, the shared KV heads (the tiny model has
# 2 query heads, 1 KV) and the layout the function hands back; varlen runs its segments
# through sdpa, which checks the layout (the gathered keys, the bottom-right causal mask).
# Eager flex has no backward on CPU: its gradients, and both CUDA kernels, are checked on
# the GPU (python -m bench train-packing-check).
@pytest.mark.parametrize("attn", ["sdpa", "eager", PACKED_FLEX_ATTENTION, PACKED_VARLEN_ATTENTION])
def test_packed_log_probs_equal_unpacked_ones_with_the_adapter(tiny_model: Path, attn: str) -> None:
    assert_packed_equals_unpacked(lora_model(tiny_model, attn), random_pairs(7, seed=1), attn)


def test_packed_flex_attention_refuses_a_dense_mask(tiny_model: Path) -> None:
    model = lora_model(tiny_model, PACKED_FLEX_ATTENTION)
    batch = pack(random_pairs(2, seed=6), pad_token_id=0, multiple_of=FLEX_BLOCK)
    with pytest.raises(TypeError, match="BlockMask"):
        packed_logps(model, batch, attention_mask(batch, "sdpa", torch.float32))


def test_packed_varlen_attention_refuses_a_row_without_its_layout(tiny_model: Path) -> None:
    model = lora_model(tiny_model, PACKED_VARLEN_ATTENTION)
    batch = pack(random_pairs(2, seed=6), pad_token_id=0)
    with pytest.raises(ValueError, match="varlen=True"):
        attention_mask(batch, PACKED_VARLEN_ATTENTION, torch.float32)
    with pytest.raises(TypeError, match="VarlenLayout"):
        packed_logps(model, batch, attention_mask(batch, "sdpa", torch.float32))


def test_varlen_layout_is_one_sequence_a_segment() -> None:
    batch = pack([PairIds([5, 6, 7], [8, 9], [10]), PairIds([4], [3], [2, 1])], 0, 4, True)
    # [5 6 | 7 8 9 | 7 10 | 4 3 | 4 2 1 | pad]: the second prompt has no shared part.
    layout: VarlenLayout = batch["varlen"]
    assert layout.cu_seq_q.tolist() == [0, 2, 5, 7, 9, 12]
    # Keys a segment: shared [0 1]; chosen [0 1 | 2 3 4]; rejected [0 1 | 5 6]; then [7 8]
    # and [9 10 11] (no shared part to see).
    segments = [[0, 1], [0, 1, 2, 3, 4], [0, 1, 5, 6], [7, 8], [9, 10, 11]]
    assert layout.key_index.tolist() == [k for keys in segments for k in keys]
    assert layout.cu_seq_k.tolist() == [0, 2, 7, 11, 13, 16]
    assert (layout.max_q, layout.max_k) == (3, 5)
    assert batch["input_ids"].numel() == 12  # a multiple of 4: no padding segment


def test_varlen_gradients_equal_the_dense_masks(tiny_model: Path) -> None:
    # The packed step's backward through the gathered keys: LoRA gradients as with sdpa.
    model = lora_model(tiny_model, PACKED_VARLEN_ATTENTION)
    batch = pack(random_pairs(5, seed=7), pad_token_id=0, varlen=True)
    grads = {}
    for attn in ("sdpa", PACKED_VARLEN_ATTENTION):
        model.get_base_model().set_attn_implementation(attn)
        model.zero_grad()
        logps = packed_logps(model, batch, attention_mask(batch, attn, torch.float32))
        (logps.chosen.sum() - 0.5 * logps.rejected.sum()).backward()
        grads[attn] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["sdpa"].keys() == grads[PACKED_VARLEN_ATTENTION].keys() != set()
    for name, grad in grads["sdpa"].items():
        torch.testing.assert_close(grads[PACKED_VARLEN_ATTENTION][name], grad, atol=1e-5, rtol=1e-4)


def test_packed_log_probs_equal_unpacked_ones_without_the_adapter(tiny_model: Path) -> None:
    model = lora_model(tiny_model)
    with model.disable_adapter():
        assert_packed_equals_unpacked(model, random_pairs(6, seed=2), "sdpa")


def test_answers_continue_the_prompt_and_see_only_it_and_themselves() -> None:
    batch = pack([PairIds([5, 6, 7], [8, 9], [10])], pad_token_id=0, multiple_of=4)
    # [5 6 | 7 8 9 | 7 10 | pad]: the prompt's last token heads each answer.
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 8, 9, 7, 10, 0]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 2, 3, 0]
    assert batch["shift_labels"][0].tolist() == [-100, -100, 8, 9, -100, 10, -100, -100]
    assert batch["segment"].tolist() == [SHARED] * 2 + [CHOSEN] * 3 + [REJECTED] * 2 + [PAD]
    mask = dense_mask(batch["pair"], batch["segment"]).int().tolist()
    assert mask[4] == [1, 1, 1, 1, 1, 0, 0, 0]  # chosen's last token: prompt + chosen
    assert mask[6] == [1, 1, 0, 0, 0, 1, 1, 0]  # rejected's last: prompt + rejected
    assert mask[7] == [0, 0, 0, 0, 0, 0, 0, 1]  # padding sees padding only


def test_pairs_in_one_row_never_see_each_other() -> None:
    batch = pack(random_pairs(3, seed=3), pad_token_id=0)
    mask = dense_mask(batch["pair"], batch["segment"])
    pair = batch["pair"]
    assert not (mask & (pair[:, None] != pair[None, :])).any()


def test_the_block_mask_gives_the_dense_masks_attention() -> None:
    from torch.nn.attention.flex_attention import flex_attention

    batch = pack(random_pairs(9, seed=4), pad_token_id=0, multiple_of=FLEX_BLOCK)
    length = batch["pair"].numel()
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, length, 8, generator=generator) for _ in range(3))
    flex = flex_attention(q, k, v, block_mask=block_mask(batch["pair"], batch["segment"]))
    dense = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=dense_mask(batch["pair"], batch["segment"])[None, None]
    )
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=0)


def test_the_loss_is_ln2_where_policy_and_reference_agree(tiny_model: Path) -> None:
    model = lora_model(tiny_model)
    pairs = random_pairs(4, seed=5)
    batch = pack(pairs, pad_token_id=0)
    mask = attention_mask(batch, "sdpa", torch.float32)
    with model.disable_adapter():
        policy = packed_logps(model, batch, mask)
        with torch.no_grad():
            reference = packed_logps(model, batch, mask)
    loss = sigmoid_dpo_losses(
        policy,
        reference.chosen,
        reference.rejected,
        batch["segment"],
        beta=0.1,
        loss_types=["sigmoid"],
        loss_weights=[1.0],
    )
    assert float(loss) == pytest.approx(math.log(2), abs=1e-7)


def test_the_loss_is_trls_sigmoid_and_sft() -> None:
    policy_chosen = torch.tensor([-10.0, -12.0])
    policy_rejected = torch.tensor([-11.0, -9.0])
    per_token = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    segment = torch.tensor([CHOSEN, CHOSEN, REJECTED, CHOSEN])
    labelled = torch.tensor([True, False, True, True])
    from services.trainer.jobs.packing import PackedLogps

    policy = PackedLogps(policy_chosen, policy_rejected, per_token, labelled)
    ref_chosen, ref_rejected = torch.tensor([-10.5, -11.0]), torch.tensor([-10.0, -10.0])
    loss = sigmoid_dpo_losses(
        policy,
        ref_chosen,
        ref_rejected,
        segment,
        beta=0.5,
        loss_types=["sigmoid", "sft"],
        loss_weights=[1.0, 0.2],
    )
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    sigmoid = -torch.nn.functional.logsigmoid(0.5 * margin).mean()
    sft = -torch.tensor([-1.0, -4.0]).mean()  # labelled chosen positions only
    assert float(loss) == pytest.approx(float(sigmoid + 0.2 * sft), abs=1e-6)


def test_micro_batches_hold_every_row_once_within_the_budget() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(50, 900) for _ in range(300)]
    batches = packed_batches(lengths, token_budget=4000, max_pairs=16, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert all(len(b) <= 16 and sum(lengths[i] for i in b) <= 4000 for b in batches)
    # Greedy cuts leave less than one pair unused: few micro-batches beyond the minimum.
    assert len(batches) <= math.ceil(sum(lengths) / 4000) * 1.25


def test_without_a_budget_micro_batches_are_pair_counts() -> None:
    batches = packed_batches([10] * 65, token_budget=None, max_pairs=2, seed=0)
    assert [len(b) for b in batches] == [2] * 32 + [1]


def test_each_epoch_reorders_the_batches_largest_first() -> None:
    lengths = list(range(1, 41))
    batches = packed_batches(lengths, token_budget=60, max_pairs=8, seed=0)
    sampler = PackedBatchSampler(batches, lengths, seed=0)
    first, second = list(sampler), list(sampler)
    largest = max(batches, key=lambda b: sum(lengths[i] for i in b))
    assert first[0] == largest and second[0] == largest
    assert first != second
    assert sorted(map(tuple, first)) == sorted(map(tuple, batches))
    assert len(sampler) == len(batches)


def test_a_flex_model_under_peft_goes_back_to_sdpa_for_padded_rows(tiny_model: Path) -> None:
    # The job trains packed rows with flex attention on CUDA and scores the held-out pairs
    # in TRL's padded rows with sdpa (dpo._heldout): the switch must reach the attention
    # layers through the PEFT wrapper.
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.set_attn_implementation("flex_attention")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.get_base_model().set_attn_implementation("sdpa")
    layer = peft_model.get_base_model().model.layers[0].self_attn
    assert layer.config._attn_implementation == "sdpa"
    ids = torch.tensor([[1, 2, 3, 0]])
    with torch.no_grad():
        out = peft_model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1, 0]]))
    assert torch.isfinite(out.logits).all()


def test_prepass_timing_keeps_the_first_micro_batch_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.trainer.jobs import packing_trainer

    clock = iter([100.0, 108.0, 108.5, 109.0])
    monkeypatch.setattr(packing_trainer.time, "monotonic", lambda: next(clock))
    timing = packing_trainer.PrepassTiming()
    for positions in (1280, 1024, 768):
        timing.add(positions)
    assert (timing.batches, timing.positions) == (3, 3072)
    assert timing.first_seconds == 8.0 and timing.seconds == 9.0
    assert timing.describe() == (
        "reference pre-pass: 3 micro-batches, 3,072 positions in 9.0 s "
        "(the first 8.0 s, the other 2 1.0 s)"
    )
