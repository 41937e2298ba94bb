"""Exact and near-duplicate detection, and diversity metrics, with no dependency beyond the stdlib.

    index = DuplicateIndex(threshold=0.7)
    index.find("What is the capital of France?")     # None: new
    index.add("qa-00001", "What is the capital of France?")
    index.find("what is the capital of  France ?!")  # ("qa-00001", "exact")

Exact: equal after `normalise` (Unicode NFKC, case-folded, contractions expanded, punctuation
dropped, whitespace collapsed). Near: character 5-gram shingles of the normalised text, MinHash signatures
(one-permutation hashing into 64 bins) bucketed by LSH (16 bands of 4 rows) to find candidates in O(1), then the
true Jaccard similarity of the shingle sets decides (>= threshold). Hashes are crc32-based,
not Python's salted `hash()`, so every process finds the same duplicates.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable
from typing import Literal

SHINGLE = 5
PERMUTATIONS = 64
BANDS = 16
ROWS = PERMUTATIONS // BANDS
_MIX = 0x9E3779B97F4A7C15  # a fixed odd 64-bit multiplier: the same bins in every process
_MASK64 = (1 << 64) - 1
_BIN_SHIFT = 58  # the top 6 bits pick one of 64 bins
_VALUE_MASK = (1 << _BIN_SHIFT) - 1
_EMPTY = 1 << 70
_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
# "What's" and "What is" ask the same thing; expanded before punctuation is dropped.
_CONTRACTIONS = (
    ("n't", " not"),
    ("'re", " are"),
    ("'m", " am"),
    ("'ll", " will"),
    ("'ve", " have"),
    ("'d", " would"),
    ("'s", " is"),
)

Match = Literal["exact", "near"]


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    for short, full in _CONTRACTIONS:
        text = text.replace(short, full)
    text = _PUNCT.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def shingles(normalised: str, size: int = SHINGLE) -> frozenset[int]:
    if len(normalised) <= size:
        return frozenset({zlib.crc32(normalised.encode())})
    data = normalised.encode()
    return frozenset(zlib.crc32(data[i : i + size]) for i in range(len(data) - size + 1))


def minhash(items: frozenset[int]) -> tuple[int, ...]:
    """One-permutation MinHash: each shingle hashed once into one of 64 bins, the minimum kept
    per bin; empty bins borrow from the next non-empty one (rotation densification). O(n),
    where 64 separate permutations cost 64 x n: the pipeline hashes every instruction."""
    bins = [_EMPTY] * PERMUTATIONS
    for item in items:
        mixed = ((item + 1) * _MIX) & _MASK64
        slot, value = mixed >> _BIN_SHIFT, mixed & _VALUE_MASK
        if value < bins[slot]:
            bins[slot] = value
    if _EMPTY in bins:
        filled = [i for i, v in enumerate(bins) if v != _EMPTY]
        for i in range(PERMUTATIONS):
            if bins[i] == _EMPTY:
                source = next((j for j in filled if j > i), filled[0])
                # the borrowed value is offset by the distance so borrowed bins stay distinct
                bins[i] = (
                    (bins[source] + (source - i) % PERMUTATIONS * _VALUE_MASK) if filled else 0
                )
    return tuple(bins)


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class DuplicateIndex:
    """Remembers accepted texts; `find` names the earlier one a new text duplicates."""

    def __init__(self, threshold: float = 0.7) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError("near-duplicate threshold must be in (0, 1]")
        self.threshold = threshold
        self._exact: dict[str, str] = {}
        self._shingles: dict[str, frozenset[int]] = {}
        self._bands: list[dict[tuple[int, ...], list[str]]] = [{} for _ in range(BANDS)]

    def __len__(self) -> int:
        return len(self._shingles)

    def find(self, text: str) -> tuple[str, Match] | None:
        norm = normalise(text)
        if norm in self._exact:
            return self._exact[norm], "exact"
        items = shingles(norm)
        best: tuple[float, str] | None = None
        for key in self._candidates(minhash(items)):
            score = jaccard(items, self._shingles[key])
            if score >= self.threshold and (best is None or (score, key) > best):
                best = (score, key)
        return (best[1], "near") if best else None

    def add(self, key: str, text: str) -> None:
        norm = normalise(text)
        self._exact.setdefault(norm, key)
        items = shingles(norm)
        self._shingles[key] = items
        signature = minhash(items)
        for band, bucket in zip(self._bands, _band_keys(signature), strict=True):
            band.setdefault(bucket, []).append(key)

    def _candidates(self, signature: tuple[int, ...]) -> list[str]:
        found: dict[str, None] = {}
        for band, bucket in zip(self._bands, _band_keys(signature), strict=True):
            for key in band.get(bucket, ()):
                found[key] = None
        return sorted(found)  # sorted: the same answer whatever order texts were added in


def _band_keys(signature: tuple[int, ...]) -> list[tuple[int, ...]]:
    return [signature[i * ROWS : (i + 1) * ROWS] for i in range(BANDS)]


def near_duplicate_groups(items: Iterable[tuple[str, str]], threshold: float) -> dict[str, str]:
    """Map each key to its group's representative (the smallest key in the group).

    Groups are the connected components of "exactly or nearly equal", so a chain of near
    duplicates ends in one group, whatever the order of `items`.
    """
    ordered = sorted(items)
    parent = {key: key for key, _ in ordered}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    index = DuplicateIndex(threshold)
    for key, text in ordered:
        norm = normalise(text)
        items_ = shingles(norm)
        linked = set()
        if norm in index._exact:
            linked.add(index._exact[norm])
        for other in index._candidates(minhash(items_)):
            if jaccard(items_, index._shingles[other]) >= threshold:
                linked.add(other)
        for other in linked:
            a, b = root(key), root(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
        index.add(key, text)
    return {key: root(key) for key, _ in ordered}


def diversity(texts: list[str]) -> dict[str, float]:
    """distinct-1 / distinct-2 (unique n-grams over all n-grams) and the unique-text ratio."""
    if not texts:
        return {"count": 0, "unique_ratio": 0.0, "distinct_1": 0.0, "distinct_2": 0.0}
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    for text in texts:
        words = _WORD.findall(text.casefold())
        unigrams.update(words)
        bigrams.update(itertools.pairwise(words))
    total_1, total_2 = sum(unigrams.values()), sum(bigrams.values())
    return {
        "count": len(texts),
        "unique_ratio": len({normalise(t) for t in texts}) / len(texts),
        "distinct_1": len(unigrams) / total_1 if total_1 else 0.0,
        "distinct_2": len(bigrams) / total_2 if total_2 else 0.0,
    }
