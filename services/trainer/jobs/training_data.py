"""Preference rows for a DPO job: load, measure in tokens, drop the over-long, batch by length.

- `load_pairs(path, tokenizer, max_length)` reads the JSONL (rows already validated at
  upload), measures each pair the way TRL tokenizes it (prompt + completion + EOS) and drops
  pairs longer than `max_length` (TRL would silently truncate them, which trains on cut-off
  answers). It returns a `datasets.Dataset` sorted longest first (so TRL's reference pre-pass
  pads little and meets the longest batch first) with a `length` column.
- `LengthGroupedSampler` draws micro-batches of similar length in random order: TRL 1.16
  has no padding-free DPO, and random batches of pairs whose lengths vary 10x waste most of
  their tokens on padding.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

# Each megabatch of this many micro-batches is sorted by length before it is cut into
# micro-batches: wide enough to find partners of similar length, narrow enough that which
# pairs meet stays random.
MEGABATCH_FACTOR = 50


class DatasetError(ValueError):
    """The dataset cannot train: empty, unreadable, or nothing left after the length filter."""


@dataclass(frozen=True)
class PairTokens:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def length(self) -> int:
        """Tokens of the longer of prompt+chosen and prompt+rejected."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    @property
    def tokens(self) -> int:
        """Tokens the model reads for this pair (both sequences, no padding)."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


@dataclass(frozen=True)
class LoadedPairs:
    dataset: Dataset
    dropped: int
    total: int
    longest: int
    tokens: int
    """Tokens of one epoch (both sequences of every kept pair, no padding)."""


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_pair(tokenizer: Any, prompt: str, chosen: str, rejected: str) -> PairTokens:
    """Tokenize like TRL 1.16's DPOTrainer (non-conversational rows): EOS appended to both
    completions, the completion starting where prompt and prompt+completion tokens diverge."""
    eos = tokenizer.eos_token or ""
    if not chosen.endswith(eos):
        chosen += eos
    if not rejected.endswith(eos):
        rejected += eos
    prompt_ids = tokenizer(prompt)["input_ids"]
    with_chosen = tokenizer(prompt + chosen)["input_ids"]
    with_rejected = tokenizer(prompt + rejected)["input_ids"]
    cut = min(_common_prefix(prompt_ids, with_chosen), _common_prefix(prompt_ids, with_rejected))
    return PairTokens(prompt_ids[:cut], with_chosen[cut:], with_rejected[cut:])


def read_rows(path: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append(
                    {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(
                    f"{path.name} line {number} is not a prompt/chosen/rejected row: {exc}"
                ) from exc
    if not rows:
        raise DatasetError(f"{path.name} has no rows: upload a dataset with at least one pair")
    return rows


def load_pairs(path: Path, tokenizer: Any, max_length: int) -> LoadedPairs:
    rows = read_rows(path)
    kept: list[dict[str, Any]] = []
    longest = 0
    tokens = 0
    for row in rows:
        pair = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"])
        if pair.length > max_length:
            continue
        longest = max(longest, pair.length)
        tokens += pair.tokens
        kept.append({**row, "length": pair.length})
    dropped = len(rows) - len(kept)
    if dropped:
        logger.warning(
            "%s: dropped %d of %d pairs longer than max_length=%d tokens",
            path.name,
            dropped,
            len(rows),
            max_length,
        )
    if not kept:
        raise DatasetError(
            f"every pair of {path.name} is longer than max_length={max_length} tokens: "
            "raise dpo.max_length or shorten the rows"
        )
    kept.sort(key=lambda row: -int(row["length"]))
    return LoadedPairs(
        dataset=Dataset.from_list(kept),
        dropped=dropped,
        total=len(rows),
        longest=longest,
        tokens=tokens,
    )


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, rng: random.Random
) -> list[int]:
    """Indices in micro-batches of similar length; batch order random, longest batch first
    (a memory problem shows on step one, not mid-epoch).

    The Trainer cuts this flat list into consecutive runs of `batch_size`, so every group
    but the last must be whole: the one short group (the shortest rows of the last
    megabatch, when the row count is not a multiple of `batch_size`) goes at the end. In
    the middle it shifted every later cut by its shortfall, pairing the tail of one length
    group with the head of the next (900 pairs at micro-batch 11: 1.19 padded positions a
    token instead of 1.09; measured 1.20 on an H200, docs/benchmarks-history.md).
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = max(batch_size, batch_size * MEGABATCH_FACTOR)
    whole: list[list[int]] = []
    short: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        for i in range(0, len(chunk), batch_size):
            group = chunk[i : i + batch_size]
            (whole if len(group) == batch_size else short).append(group)
    rng.shuffle(whole)
    if whole:
        longest = max(range(len(whole)), key=lambda b: max(lengths[i] for i in whole[b]))
        whole[0], whole[longest] = whole[longest], whole[0]
    return [i for batch in whole + short for i in batch]


class LengthGroupedSampler(Sampler[int]):
    """A new seeded grouping each epoch (the Trainer iterates the sampler once an epoch)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        return iter(length_grouped_indices(self.lengths, self.batch_size, rng))
