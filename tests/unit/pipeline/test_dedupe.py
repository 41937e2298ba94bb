"""Exact and near-duplicate removal, groups, and diversity metrics."""

from __future__ import annotations

import random

from cai.pipeline.dedupe import DuplicateIndex, diversity, near_duplicate_groups, normalise


def _variants(text: str, count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        variant = text
        if i % 3 == 1:
            variant = variant.upper()
        if i % 4 == 2:
            variant = "  " + variant.replace(" ", "   ") + " "
        if i % 5 == 3:
            variant = variant.rstrip("?") + "??"
        if rng.random() < 0.3:
            variant = variant.replace("What is", "What's")
        out.append(variant)
    return out


def test_273_copies_of_one_question_collapse_to_one():
    index = DuplicateIndex(threshold=0.7)
    kept = []
    for i, text in enumerate(_variants("What is the capital of France?", 273)):
        if index.find(text) is None:
            index.add(f"qa-{i:05d}", text)
            kept.append(text)
    assert len(kept) == 1


def test_normalise_folds_case_punctuation_and_whitespace():
    assert normalise("  What IS the capital,  of France?! ") == "what is the capital of france"


def test_near_duplicate_is_found_and_named():
    index = DuplicateIndex(threshold=0.7)
    index.add("qa-00001", "Explain how a rainbow forms after a summer storm.")
    assert index.find("Explain how a rainbow forms after a summer storms.") == ("qa-00001", "near")
    assert index.find("explain how a RAINBOW forms after a summer storm") == ("qa-00001", "exact")


def test_different_questions_are_not_duplicates():
    index = DuplicateIndex(threshold=0.7)
    index.add("qa-00001", "What is the capital of France?")
    assert index.find("How many legs does a spider have?") is None
    assert index.find("Write a poem about the sea at night.") is None


def test_duplicate_detection_is_the_same_in_every_process():
    # crc32-based hashing: no dependence on PYTHONHASHSEED.
    a, b = DuplicateIndex(0.7), DuplicateIndex(0.7)
    a.add("x", "Describe the water cycle in simple terms.")
    b.add("x", "Describe the water cycle in simple terms.")
    probe = "Describe the water cycle in simple term."
    assert a.find(probe) == b.find(probe) == ("x", "near")


def test_groups_join_chains_of_near_duplicates_whatever_the_order():
    items = [
        ("i3", "List five fruits that are red."),
        ("i1", "List five fruits that are red"),
        ("i2", "How tall is Mount Everest?"),
        ("i4", "LIST FIVE FRUITS THAT ARE RED!"),
    ]
    groups = near_duplicate_groups(items, 0.5)
    assert groups["i1"] == groups["i3"] == groups["i4"] == "i1"
    assert groups["i2"] == "i2"
    assert near_duplicate_groups(list(reversed(items)), 0.5) == groups


def test_diversity_reports_unique_ratio_and_distinct_n():
    report = diversity(["a b c", "a b c", "d e f"])
    assert report["count"] == 3
    assert report["unique_ratio"] == 2 / 3
    assert report["distinct_1"] == 6 / 9
    assert report["distinct_2"] == 4 / 6
    assert diversity([])["count"] == 0
