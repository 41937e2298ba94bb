"""Shared-prompt packing: both answers of a pair, and all pairs of a micro-batch, in one row.

A DPO pair is (prompt P, chosen C, rejected R). TRL reads it as two padded sequences, [P, C]
and [P, R]: the prompt twice, and every row padded to the longest of its batch. Here a pair
is laid out once, and pairs follow each other with no padding between them:

    [ P[:-1] | P[-1], C | P[-1], R ]     segments 0 (shared), 1 (chosen), 2 (rejected)

The prompt's last token is written twice, once at the head of each answer, because it is
the position whose output predicts the answer's first token, and each answer needs its own.
Position ids make both answers continue the prompt: the shared part is 0..p-2 and both
answer segments start again at p-1. The attention mask lets a token see the earlier tokens
of its own pair that are in the shared part or in its own segment, so the chosen answer
never sees the rejected one or the reverse. Each answer then sees exactly what it sees in
TRL's [P, C] / [P, R] rows, at the same positions, and gets the same per-token log-probs
(tests/unit/trainer/test_packing.py checks them to 1e-5 in float32 on the tiny model).

The mask is a dense boolean matrix on CPU (sdpa; eager gets it as additive floats). On CUDA
the default is flash attention's variable-length kernel (packed_varlen.py): each answer
segment a sequence whose keys are its prompt and itself, nothing to compile. Where that
kernel is missing, a flex-attention `BlockMask`, which skips the 128x128 tiles no query of
the tile may see, run by this module's `packed_flex_attention` rather than transformers'
flex path (why: its docstring). Either way attention costs what each pair's own attention
costs (packing_plan.choose_packing picks, and says why). The LM head runs only where a
label exists (TRL's fused head with pre-shifted labels), in chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from services.trainer.jobs.packed_varlen import (
    LAYOUT_KWARG,
    VarlenLayout,
    VarlenLayoutBuilder,
    register_packed_varlen_attention,
)
from services.trainer.jobs.packing_plan import PACKED_FLEX_ATTENTION, PACKED_VARLEN_ATTENTION

SHARED, CHOSEN, REJECTED, PAD = 0, 1, 2, 3
IGNORE = -100
# flex attention's tile: a CUDA row is padded to a multiple of it (at most 127 positions).
FLEX_BLOCK = 128


@dataclass(frozen=True)
class PairIds:
    prompt: Sequence[int]
    chosen: Sequence[int]
    rejected: Sequence[int]

    @property
    def packed_length(self) -> int:
        """Positions this pair takes in a packed row (the prompt's last token twice)."""
        head = 1 if self.prompt else 0
        return len(self.prompt) + head + len(self.chosen) + len(self.rejected)

    @property
    def unpacked_tokens(self) -> int:
        """Tokens of TRL's two sequences [P, C] and [P, R], padding aside."""
        return 2 * len(self.prompt) + len(self.chosen) + len(self.rejected)


def pack(
    pairs: Sequence[PairIds], pad_token_id: int, multiple_of: int = 1, varlen: bool = False
) -> dict[str, Any]:
    """One packed row of `pairs` as (1, T) tensors, plus per-position pair and segment.

    `shift_labels[t]` is the token position t predicts (IGNORE where none), as TRL's fused
    LM head takes pre-shifted labels. The row is padded to a multiple of `multiple_of`; pad
    positions form their own segment and see only each other. `varlen`: also the row's
    segments as flash attention's variable-length sequences (`batch["varlen"]`).
    """
    ids: list[int] = []
    positions: list[int] = []
    labels: list[int] = []
    pair_of: list[int] = []
    segment: list[int] = []
    layout = VarlenLayoutBuilder()
    for index, pair in enumerate(pairs):
        shared, head = list(pair.prompt[:-1]), list(pair.prompt[-1:])
        shared_span = range(len(ids), len(ids) + len(shared))
        layout.segment(shared_span)
        ids += shared
        positions += range(len(shared))
        labels += [IGNORE] * len(shared)
        pair_of += [index] * len(shared)
        segment += [SHARED] * len(shared)
        for kind, answer in ((CHOSEN, pair.chosen), (REJECTED, pair.rejected)):
            tokens = head + list(answer)
            layout.segment(range(len(ids), len(ids) + len(tokens)), visible_before=shared_span)
            ids += tokens
            positions += range(len(shared), len(shared) + len(tokens))
            # Each position predicts the next token of its own segment; the last predicts nothing.
            labels += [*tokens[1:], IGNORE]
            pair_of += [index] * len(tokens)
            segment += [kind] * len(tokens)
    pad = -len(ids) % multiple_of
    layout.segment(range(len(ids), len(ids) + pad))
    ids += [pad_token_id] * pad
    positions += [0] * pad
    labels += [IGNORE] * pad
    pair_of += [-1] * pad
    segment += [PAD] * pad
    batch: dict[str, Any] = {
        "input_ids": torch.tensor([ids]),
        "position_ids": torch.tensor([positions]),
        "shift_labels": torch.tensor([labels]),
        "pair": torch.tensor(pair_of),
        "segment": torch.tensor(segment),
        # Which pairs these are; the collator puts the dataset's row indices here.
        "pair_index": torch.arange(len(pairs)),
        "num_tokens": torch.tensor(sum(p.unpacked_tokens for p in pairs)),
    }
    if varlen:
        batch["varlen"] = layout.build()
    return batch


def dense_mask(pair: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """(T, T) boolean: may query q attend to key k (True = yes)."""
    index = torch.arange(pair.numel(), device=pair.device)
    causal = index[None, :] <= index[:, None]
    same_pair = pair[:, None] == pair[None, :]
    visible = (segment[None, :] == SHARED) | (segment[None, :] == segment[:, None])
    return causal & same_pair & visible


def block_mask(pair: torch.Tensor, segment: torch.Tensor) -> Any:
    """The same mask as a flex-attention `BlockMask` (T a multiple of FLEX_BLOCK).

    Built from the dense mask rather than by `create_block_mask`, which would compile a
    kernel per row length or materialise the mask through vmap's integer temporaries."""
    from torch.nn.attention.flex_attention import BlockMask

    length = pair.numel()
    if length % FLEX_BLOCK:
        raise ValueError(f"a flex-attention row must be a multiple of {FLEX_BLOCK} positions")
    blocks = length // FLEX_BLOCK
    tiles = dense_mask(pair, segment).view(blocks, FLEX_BLOCK, blocks, FLEX_BLOCK)
    any_visible = tiles.any(dim=3).any(dim=1)
    all_visible = tiles.all(dim=3).all(dim=1)
    partial = any_visible & ~all_visible

    def sparse(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = selected.sum(dim=-1, dtype=torch.int32)
        order = torch.argsort(selected.to(torch.int8), dim=-1, descending=True, stable=True)
        return count[None, None], order.to(torch.int32)[None, None]

    def mask_mod(batch: Any, head: Any, q: Any, kv: Any) -> Any:
        seen = (segment[kv] == SHARED) | (segment[kv] == segment[q])
        return (pair[q] == pair[kv]) & (kv <= q) & seen

    kv_count, kv_index = sparse(partial)
    full_count, full_index = sparse(all_visible)
    return BlockMask.from_kv_blocks(
        kv_count,
        kv_index,
        full_count,
        full_index,
        BLOCK_SIZE=FLEX_BLOCK,
        mask_mod=mask_mod,
        seq_lengths=(length, length),
    )


def takes_block_mask(attn_implementation: str | None) -> bool:
    """Flex attention, ours or transformers' (a row then pads to a multiple of FLEX_BLOCK)."""
    return attn_implementation in (PACKED_FLEX_ATTENTION, "flex_attention")


def attention_mask(batch: dict[str, Any], attn_implementation: str, dtype: torch.dtype) -> Any:
    """The packed row's mask in the form `attn_implementation` takes: a custom 4-D mask, a
    `BlockMask`, or (PACKED_VARLEN_ATTENTION) the row's `VarlenLayout` on the row's device."""
    if attn_implementation == PACKED_VARLEN_ATTENTION:
        if "varlen" not in batch:
            raise ValueError(f"{PACKED_VARLEN_ATTENTION} needs a row packed with varlen=True")
        layout: VarlenLayout = batch["varlen"]
        return layout.to(batch["input_ids"].device, non_blocking=True)
    if takes_block_mask(attn_implementation):
        return block_mask(batch["pair"], batch["segment"])
    dense = dense_mask(batch["pair"], batch["segment"])[None, None]
    if attn_implementation == "eager":
        zero = torch.zeros((), dtype=dtype, device=dense.device)
        return torch.where(dense, zero, torch.finfo(dtype).min)
    return dense


@functools.cache
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic=True: every packed row has its own length. The default (dynamic=None) compiles
    # for the first length, then again with dynamic shapes at the second; this compiles once
    # per grad mode (the reference's no-grad forward and the policy's forward + backward).
    return torch.compile(flex_attention, dynamic=True)


def packed_flex_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function (registered as PACKED_FLEX_ATTENTION): flex
    attention over a packed row's `BlockMask`. Against transformers' `flex_attention` path:
    - compiled once with dynamic shapes (`_compiled_flex_attention`);
    - the KV heads are read shared (`enable_gqa`); transformers repeats them to the query
      heads' count when that is not a power of two (28 in Qwen2.5-7B, 40 in 32B): 7x or 5x
      the K and V read and written per layer;
    - no score_mod and no log-sum-exp, which the packed step never uses.
    Compiled on CUDA only: on CPU it runs flex attention's eager reference (the tests)."""
    from torch.nn.attention.flex_attention import BlockMask

    if not isinstance(attention_mask, BlockMask):
        raise TypeError(f"{PACKED_FLEX_ATTENTION} takes a packed row's BlockMask (packing.pack)")
    if dropout > 0.0:
        raise ValueError(f"{PACKED_FLEX_ATTENTION} has no attention dropout (got {dropout})")
    if query.device.type == "cuda":
        attend = _compiled_flex_attention()
    else:
        from torch.nn.attention.flex_attention import flex_attention as attend
    out = attend(
        query,
        key,
        value,
        block_mask=attention_mask,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    # transformers' attention functions return (batch, positions, heads, head_dim).
    return out.transpose(1, 2).contiguous(), None


def register_packed_attentions() -> None:
    """Make PACKED_FLEX_ATTENTION and PACKED_VARLEN_ATTENTION names `set_attn_implementation`
    accepts (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_FLEX_ATTENTION, packed_flex_attention)
    register_packed_varlen_attention()


@dataclass(frozen=True)
class PackedLogps:
    chosen: torch.Tensor
    """Summed completion log-probs of each pair's chosen answer, (pairs,)."""
    rejected: torch.Tensor
    per_token: torch.Tensor
    """(T,) log-prob of the label at each position; 0 where none."""
    labelled: torch.Tensor
    """(T,) True where a position has a label."""


def packed_logps(model: Any, batch: dict[str, Any], mask: Any) -> PackedLogps:
    """One forward of the packed row through `model` (patched with TRL's fused LM head).
    `mask`: what `attention_mask` made; a `VarlenLayout` goes to the attention function as
    a forward argument (transformers would drop it as a mask)."""
    attention = {LAYOUT_KWARG: mask} if isinstance(mask, VarlenLayout) else {"attention_mask": mask}
    out = model(
        input_ids=batch["input_ids"],
        position_ids=batch["position_ids"],
        shift_labels=batch["shift_labels"],
        fused_lm_head=True,
        use_cache=False,
        **attention,
    )
    per_token = out.log_probs[0]
    labelled = batch["shift_labels"][0] != IGNORE
    # Slot 2i holds pair i's chosen sum, 2i+1 its rejected one.
    slot = batch["pair"] * 2 + (batch["segment"] - CHOSEN)
    sums = per_token.new_zeros(2 * batch["pair_index"].numel(), dtype=torch.float32)
    sums = sums.index_add(0, slot[labelled], per_token[labelled].float())
    return PackedLogps(sums[0::2], sums[1::2], per_token, labelled)
