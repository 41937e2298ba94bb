"""Packed rows through variable-length flash attention: no block mask, nothing to compile.

A packed row (packing.py) is, pair after pair, `[P[:-1] | P[-1] C | P[-1] R]`. Each of its
segments is a query sequence of its own: the shared prompt part attends to itself, causally;
each answer attends to the shared part and then to itself, causally. In flash attention's
variable-length form that is one query sequence per segment, and for each a key sequence
gathered from the row: the shared part for the shared segment, the shared part followed by
the answer for an answer. Flash attention aligns a causal mask to the bottom right when a
sequence has more keys than queries, so answer token j sees every prompt key and the
answer's keys up to j: exactly the packed mask, and nothing of the other answer or pair.

Against flex attention over a block mask (packing.packed_flex_attention), this runs
PyTorch's prebuilt flash kernels: no Dynamo trace and no Triton compile at a job's first
micro-batch and first step, and no 128-position tile padding of the row. The gathered keys
and values cost one copy of the prompt's K and V per answer (with 4 or 8 KV heads, a small
fraction of the layer's activations).

`torch.nn.attention.varlen` is CUDA-only and takes bf16/fp16. On CPU the same layout runs
segment by segment through sdpa (`_segmentwise_attention`), which is how the tests check the
layout against unpacked rows to 1e-5 in float32; the GPU kernel is checked against sdpa one
pair at a time by `python -m bench train-packing-check`.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from services.trainer.jobs.packing_plan import PACKED_VARLEN_ATTENTION

# The keyword the attention function reads its layout from: transformers passes a model's
# extra forward kwargs down to every layer's attention function.
LAYOUT_KWARG = "packed_varlen"


@dataclass(frozen=True)
class VarlenLayout:
    """One packed row as flash attention's variable-length sequences."""

    cu_seq_q: torch.Tensor
    """(segments + 1,) int32: where each segment's queries start in the row."""
    cu_seq_k: torch.Tensor
    """(segments + 1,) int32: where each segment's keys start in the gathered keys."""
    key_index: torch.Tensor
    """(keys,) int64: the row position of every gathered key, segment after segment."""
    max_q: int
    max_k: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> VarlenLayout:
        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device, non_blocking=non_blocking)

        return VarlenLayout(
            move(self.cu_seq_q), move(self.cu_seq_k), move(self.key_index), self.max_q, self.max_k
        )


class VarlenLayoutBuilder:
    """Collects a row's segments as `packing.pack` lays them out, then builds the layout."""

    def __init__(self) -> None:
        self._query_lengths: list[int] = []
        self._keys: list[torch.Tensor] = []

    def segment(self, queries: range, visible_before: range | None = None) -> None:
        """`queries`: the segment's row positions; `visible_before`: the positions it also
        sees in full before its own (an answer's shared prompt part)."""
        if not queries:
            return
        keys = torch.arange(queries.start, queries.stop)
        if visible_before:
            keys = torch.cat([torch.arange(visible_before.start, visible_before.stop), keys])
        self._query_lengths.append(len(queries))
        self._keys.append(keys)

    def build(self) -> VarlenLayout:
        key_lengths = [keys.numel() for keys in self._keys]
        zero = [0]
        return VarlenLayout(
            cu_seq_q=torch.tensor(zero + self._query_lengths).cumsum(0).to(torch.int32),
            cu_seq_k=torch.tensor(zero + key_lengths).cumsum(0).to(torch.int32),
            key_index=torch.cat(self._keys) if self._keys else torch.zeros(0, dtype=torch.long),
            max_q=max(self._query_lengths, default=0),
            max_k=max(key_lengths, default=0),
        )


def varlen_importable() -> bool:
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def varlen_usable(dtype: str) -> bool:
    """Flash attention's variable-length kernel: PyTorch's, on an Ampere or newer card, in
    bf16 or fp16 (no fp32 kernel)."""
    if dtype not in ("bfloat16", "float16") or not varlen_importable():
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


@functools.cache
def _varlen_call() -> tuple[Any, dict[str, Any]]:
    """`varlen_attn` and its causal keyword: PyTorch 2.10 takes `is_causal`, later releases
    a `window_size` ((-1, 0) is causal) and, from 2.12, `enable_gqa` for shared KV heads
    (the kernel itself has always read them shared)."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs: dict[str, Any] = (
        {"is_causal": True} if "is_causal" in params else {"window_size": (-1, 0)}
    )
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    return varlen_attn, kwargs


def _segmentwise_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: VarlenLayout,
    scale: float | None,
) -> torch.Tensor:
    """The variable-length attention one segment at a time with sdpa: (T, Hq, D) queries,
    gathered (K, Hkv, D) keys and values. The CPU path, and the reference for the kernel."""
    groups = query.shape[1] // key.shape[1]
    outputs = []
    bounds_q, bounds_k = layout.cu_seq_q.tolist(), layout.cu_seq_k.tolist()
    for q0, q1, k0, k1 in zip(bounds_q, bounds_q[1:], bounds_k, bounds_k[1:], strict=False):
        q = query[q0:q1].transpose(0, 1)
        k = key[k0:k1].transpose(0, 1).repeat_interleave(groups, dim=0)
        v = value[k0:k1].transpose(0, 1).repeat_interleave(groups, dim=0)
        # Causal, aligned to the bottom right: query i sees the keys up to i + (keys - queries).
        offset = (k1 - k0) - (q1 - q0)
        rows = torch.arange(q1 - q0, device=query.device)[:, None]
        visible = torch.arange(k1 - k0, device=query.device)[None, :] <= rows + offset
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=visible, scale=scale
        )
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


def packed_varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function (registered as PACKED_VARLEN_ATTENTION) for one
    packed row: (1, H, T, D) in, (1, T, Hq, D) out, the layout in `kwargs[LAYOUT_KWARG]`.
    The mask transformers hands in is None (no mask function is registered for this name)."""
    layout = kwargs.get(LAYOUT_KWARG)
    if not isinstance(layout, VarlenLayout):
        raise TypeError(
            f"{PACKED_VARLEN_ATTENTION} takes a packed row's VarlenLayout as the "
            f"{LAYOUT_KWARG!r} forward argument (packing.pack(..., varlen=True))"
        )
    if dropout > 0.0:
        raise ValueError(f"{PACKED_VARLEN_ATTENTION} has no attention dropout (got {dropout})")
    if query.shape[0] != 1:
        raise ValueError(f"{PACKED_VARLEN_ATTENTION} takes one packed row (got {query.shape[0]})")
    # (1, H, T, D) -> (T, H, D): the projections' own layout, so usually no copy.
    q = query[0].transpose(0, 1).contiguous()
    k = key[0].transpose(0, 1).index_select(0, layout.key_index)
    v = value[0].transpose(0, 1).index_select(0, layout.key_index)
    if q.device.type == "cuda":
        varlen_attn, causal = _varlen_call()
        out = varlen_attn(
            q,
            k,
            v,
            layout.cu_seq_q,
            layout.cu_seq_k,
            layout.max_q,
            layout.max_k,
            scale=scaling,
            **causal,
        )
    else:
        out = _segmentwise_attention(q, k, v, layout, scaling)
    return out.unsqueeze(0), None


def register_packed_varlen_attention() -> None:
    """Make PACKED_VARLEN_ATTENTION a name `set_attn_implementation` accepts (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_VARLEN_ATTENTION, packed_varlen_attention)
