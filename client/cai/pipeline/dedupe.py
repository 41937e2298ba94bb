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
from collections.abc import Callable, Iterable
from typing import Literal, TypeVar

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
        self._last: tuple[str, tuple[str, frozenset[int], tuple[int, ...]]] | None = None

    def __len__(self) -> int:
        return len(self._shingles)

    def find(self, text: str) -> tuple[str, Match] | None:
        norm, items, signature = self._measure(text)
        if norm in self._exact:
            return self._exact[norm], "exact"
        best: tuple[float, str] | None = None
        for key in self._candidates(signature):
            score = jaccard(items, self._shingles[key])
            if score >= self.threshold and (best is None or (score, key) > best):
                best = (score, key)
        return (best[1], "near") if best else None

    def add(self, key: str, text: str) -> None:
        norm, items, signature = self._measure(text)
        self._exact.setdefault(norm, key)
        self._shingles[key] = items
        for band, bucket in zip(self._bands, _band_keys(signature), strict=True):
            band.setdefault(bucket, []).append(key)

    def near(self, text: str) -> set[str]:
        """Every key whose text is exactly or nearly equal to `text` (>= threshold)."""
        norm, items, signature = self._measure(text)
        found = {self._exact[norm]} if norm in self._exact else set()
        found.update(
            key
            for key in self._candidates(signature)
            if jaccard(items, self._shingles[key]) >= self.threshold
        )
        return found

    def _measure(self, text: str) -> tuple[str, frozenset[int], tuple[int, ...]]:
        """Normalised text, shingles and signature; the last text's are kept, because callers
        ask `find` (or `near`) and then `add` for the same text and minhash is the cost."""
        if self._last is not None and self._last[0] == text:
            return self._last[1]
        norm = normalise(text)
        items = shingles(norm)
        measured = (norm, items, minhash(items))
        self._last = (text, measured)
        return measured

    def _candidates(self, signature: tuple[int, ...]) -> list[str]:
        found: dict[str, None] = {}
        for band, bucket in zip(self._bands, _band_keys(signature), strict=True):
            for key in band.get(bucket, ()):
                found[key] = None
        return sorted(found)  # sorted: the same answer whatever order texts were added in


def _band_keys(signature: tuple[int, ...]) -> list[tuple[int, ...]]:
    return [signature[i * ROWS : (i + 1) * ROWS] for i in range(BANDS)]


class NearDuplicateGroups:
    """Connected components of "exactly or nearly equal" (at `threshold`), built as texts
    arrive: each group is named by its smallest key. The components depend only on which
    keys were added, not on their order (each pair of texts is compared once, whichever
    comes second), so the pipeline can group pairs while it generates them and get at the
    end what grouping them all at once would give."""

    def __init__(self, threshold: float) -> None:
        self._index = DuplicateIndex(threshold)
        self._parent: dict[str, str] = {}

    def keys(self) -> set[str]:
        return set(self._parent)

    def add(self, key: str, text: str) -> None:
        if key in self._parent:
            return
        self._parent[key] = key
        for other in self._index.near(text):
            a, b = self._root(key), self._root(other)
            if a != b:
                self._parent[max(a, b)] = min(a, b)
        self._index.add(key, text)

    def groups(self) -> dict[str, str]:
        return {key: self._root(key) for key in sorted(self._parent)}

    def _root(self, key: str) -> str:
        parent = self._parent
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key


Built = TypeVar("Built", "NearDuplicateGroups", "DiversityTally")


def completed(
    built: Built | None, make: Callable[[], Built], items: Iterable[tuple[str, str]]
) -> Built:
    """`built` (made while a run wrote its records) with the rest of `items` (key, text)
    added, e.g. records of an earlier session. One holding a key outside `items` is set
    aside for a new one from `make`: an extra text could join two groups or skew a tally."""
    wanted = dict(items)
    if built is None or not built.keys() <= wanted.keys():
        built = make()
    for key in sorted(wanted):
        built.add(key, wanted[key])
    return built


def near_duplicate_groups(items: Iterable[tuple[str, str]], threshold: float) -> dict[str, str]:
    """Map each key to its group's representative (the smallest key in the group).

    Groups are the connected components of "exactly or nearly equal", so a chain of near
    duplicates ends in one group, whatever the order of `items`.
    """
    grouper = NearDuplicateGroups(threshold)
    for key, text in sorted(items):
        grouper.add(key, text)
    return grouper.groups()


class DiversityTally:
    """`diversity` over texts added one at a time (by key, each counted once), so the
    pipeline tallies records as it writes them instead of re-reading them all at the end."""

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self._normalised: set[str] = set()
        self._unigrams: Counter[str] = Counter()
        self._bigrams: Counter[tuple[str, str]] = Counter()

    def keys(self) -> set[str]:
        return set(self._keys)

    def add(self, key: str, text: str) -> None:
        if key in self._keys:
            return
        self._keys.add(key)
        words = _WORD.findall(text.casefold())
        self._unigrams.update(words)
        self._bigrams.update(itertools.pairwise(words))
        self._normalised.add(normalise(text))

    def metrics(self) -> dict[str, float]:
        """distinct-1 / distinct-2 (unique n-grams over all n-grams) and the unique-text ratio."""
        if not self._keys:
            return {"count": 0, "unique_ratio": 0.0, "distinct_1": 0.0, "distinct_2": 0.0}
        total_1, total_2 = self._unigrams.total(), self._bigrams.total()
        return {
            "count": len(self._keys),
            "unique_ratio": len(self._normalised) / len(self._keys),
            "distinct_1": len(self._unigrams) / total_1 if total_1 else 0.0,
            "distinct_2": len(self._bigrams) / total_2 if total_2 else 0.0,
        }


def diversity(texts: list[str]) -> dict[str, float]:
    """distinct-1 / distinct-2 (unique n-grams over all n-grams) and the unique-text ratio."""
    tally = DiversityTally()
    for i, text in enumerate(texts):
        tally.add(str(i), text)
    return tally.metrics()
