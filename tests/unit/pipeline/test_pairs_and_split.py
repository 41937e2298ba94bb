"""Pair rules (DESIGN.md) and the seeded split by instruction and near-duplicate group."""

from __future__ import annotations

import pytest

from cai.pipeline.dedupe import NearDuplicateGroups
from cai.pipeline.pairs import decide
from cai.pipeline.split import split_groups


@pytest.mark.parametrize(
    ("original_ok", "revision_ok", "rule", "chosen"),
    [
        (False, True, "revision_ok_original_not", "revision"),
        (True, False, "original_ok_revision_not", "original"),
        (True, True, "both_ok", "revision"),
        (False, False, "neither_ok", None),
    ],
)
def test_pair_rules_follow_the_design(original_ok, revision_ok, rule, chosen):
    decision = decide("original text", "revised text", original_ok, revision_ok)
    assert (decision.rule, decision.chosen) == (rule, chosen)


@pytest.mark.parametrize(("a", "b"), [(True, True), (False, True), (True, False)])
def test_identical_texts_are_skipped_whatever_the_verdicts(a, b):
    decision = decide("Same answer.", "  Same answer.\n", a, b)
    assert decision.skipped and decision.rule == "identical"


def test_an_empty_side_cannot_make_a_pair():
    assert decide("", "A real answer.", False, True).rule == "empty"


def _instructions(n):
    import random

    rng = random.Random(n)
    words = [
        "river",
        "volcano",
        "bread",
        "chess",
        "bee",
        "tide",
        "glass",
        "comet",
        "map",
        "salt",
        "owl",
        "cloud",
        "tram",
        "violin",
        "moss",
    ]
    return {
        f"qa-{i:05d}": " ".join(
            rng.choice(words) + rng.choice("aeiou") * rng.randint(1, 3) for _ in range(6)
        )
        + "?"
        for i in range(n)
    }


def test_split_is_about_90_10_and_seeded():
    texts = _instructions(200)
    pairs = {f"{iid}.p": iid for iid in texts}
    split, _ = split_groups(pairs, texts, train_ratio=0.9, seed=5, group_threshold=0.5)
    test = [p for p, s in split.items() if s == "test"]
    assert 15 <= len(test) <= 25
    again, _ = split_groups(pairs, texts, train_ratio=0.9, seed=5, group_threshold=0.5)
    other, _ = split_groups(pairs, texts, train_ratio=0.9, seed=6, group_threshold=0.5)
    assert again == split
    assert other != split


def test_no_instruction_in_both_splits():
    texts = _instructions(60)
    # several pairs per instruction, and near-duplicate instructions under different ids
    pairs = {f"{iid}.p{k}": iid for iid in texts for k in range(3)}
    for i in range(10):
        twin = f"qa-9{i:04d}"
        texts[twin] = texts[f"qa-{i:05d}"].upper() + "!"
        pairs[f"{twin}.p"] = twin
    split, groups = split_groups(pairs, texts, train_ratio=0.9, seed=1, group_threshold=0.5)
    sides_by_group: dict[str, set[str]] = {}
    for pid, iid in pairs.items():
        sides_by_group.setdefault(groups[iid], set()).add(split[pid])
    assert all(len(sides) == 1 for sides in sides_by_group.values())
    for i in range(10):
        assert groups[f"qa-9{i:04d}"] == groups[f"qa-{i:05d}"]
    assert {"train", "test"} == set(split.values())


def test_two_pairs_give_one_each_side():
    texts = _instructions(2)
    pairs = {f"{iid}.p": iid for iid in texts}
    split, _ = split_groups(pairs, texts, train_ratio=0.9, seed=0, group_threshold=0.5)
    assert sorted(split.values()) == ["test", "train"]


def test_a_grouper_built_during_the_run_gives_the_same_split():
    texts = _instructions(80)
    for i in range(8):
        texts[f"qa-9{i:04d}"] = texts[f"qa-{i:05d}"].upper()
    pairs = {f"{iid}.p": iid for iid in texts}
    expected = split_groups(pairs, texts, train_ratio=0.9, seed=2, group_threshold=0.5)
    # the runner's grouper saw some of the pairs (the rest come from an earlier session)
    grouper = NearDuplicateGroups(0.5)
    for iid in list(texts)[::2]:
        grouper.add(iid, texts[iid])
    got = split_groups(pairs, texts, train_ratio=0.9, seed=2, group_threshold=0.5, grouper=grouper)
    assert got == expected


def test_a_grouper_holding_an_instruction_without_a_pair_is_not_used():
    # "bridge" is near both of the others: with it, they would share a group
    texts = {
        "a": "red apples and green pears in the basket",
        "b": "red apples and green pears in the bucket today",
        "c": "blue whales sing in the cold northern sea",
    }
    pairs = {"a.p": "a", "c.p": "c"}
    grouper = NearDuplicateGroups(0.5)
    grouper.add("b", texts["b"])
    _, groups = split_groups(
        pairs, texts, train_ratio=0.5, seed=0, group_threshold=0.5, grouper=grouper
    )
    assert set(groups) == {"a", "c"}
