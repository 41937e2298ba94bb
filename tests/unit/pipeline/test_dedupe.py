"""Exact and near-duplicate removal, groups, and diversity metrics."""

from __future__ import annotations

import random

from cai.pipeline.dedupe import (
    DiversityTally,
    DuplicateIndex,
    NearDuplicateGroups,
    diversity,
    near_duplicate_groups,
    normalise,
)


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


def _mixed_texts() -> list[tuple[str, str]]:
    rng = random.Random(3)
    base = [
        "List five fruits that are red.",
        "How tall is Mount Everest?",
        "Write a haiku about the sea.",
        "Explain how a bicycle gear works.",
    ]
    items = []
    for i in range(40):
        text = rng.choice(base)
        items.append((f"i{i:03d}", text.upper() if i % 3 else text + " " * (i % 4)))
    words = ["river", "volcano", "bread", "chess", "owl", "cloud", "tram", "violin", "moss"]
    for i in range(20):  # unlike each other and the four above
        text = " ".join(rng.choice(words) + str(rng.randint(0, 999)) for _ in range(8))
        items.append((f"u{i:03d}", text))
    rng.shuffle(items)
    return items


def test_groups_built_one_text_at_a_time_equal_groups_built_at_once():
    items = _mixed_texts()
    grouper = NearDuplicateGroups(0.5)
    for key, text in items:  # the order the pipeline writes pairs in, not sorted
        grouper.add(key, text)
        grouper.add(key, text)  # a key added twice counts once
    assert grouper.groups() == near_duplicate_groups(items, 0.5)
    assert len(set(grouper.groups().values())) == 4 + 20


def test_a_diversity_tally_matches_diversity_of_the_list():
    items = _mixed_texts()
    tally = DiversityTally()
    for key, text in items:
        tally.add(key, text)
    tally.add(items[0][0], "other text under a key already counted")
    assert tally.metrics() == diversity([text for _, text in items])
    assert DiversityTally().metrics()["count"] == 0


def test_find_then_add_of_one_text_measures_it_once(monkeypatch):
    import cai.pipeline.dedupe as dedupe

    calls = []
    original = dedupe.minhash
    monkeypatch.setattr(dedupe, "minhash", lambda items: calls.append(1) or original(items))
    index = DuplicateIndex(0.7)
    assert index.find("What is the capital of France?") is None
    index.add("q1", "What is the capital of France?")
    assert len(calls) == 1
    assert index.find("what is the capital of france") == ("q1", "exact")
