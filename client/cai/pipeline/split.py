"""Train/test split by instruction and near-duplicate group, seeded (train_ratio 0.9).

    assignment = split_groups(pairs, instruction_texts, train_ratio=0.9, seed=1234,
                              group_threshold=0.5)
    assignment["qa-00012.p"]  # "train" or "test"

Pairs are grouped by the near-duplicate group of their instruction (instructions that are
exact or near duplicates of each other, transitively, at `group_threshold`), so no
instruction, and nothing nearly the same as one, is in both files. Groups are shuffled
with the seed and the test file takes whole groups in that order, skipping one that would
overfill it, up to its share of pairs; with at least two groups, each file gets at least one.
"""

from __future__ import annotations

import math
import random

from cai.pipeline.dedupe import NearDuplicateGroups, completed


def split_groups(
    pairs: dict[str, str],
    instruction_texts: dict[str, str],
    *,
    train_ratio: float,
    seed: int,
    group_threshold: float,
    grouper: NearDuplicateGroups | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Return (pair id -> "train"/"test", instruction id -> group id).

    `pairs` maps pair id -> instruction id; `instruction_texts` maps instruction id -> text.
    `grouper`: the groups of some of these instructions, built while the pairs were made
    (the runner's); the rest are added to it. One holding any other instruction is not used:
    an instruction without a pair could join two groups.
    """
    groups = completed(
        grouper,
        lambda: NearDuplicateGroups(group_threshold),
        ((iid, instruction_texts[iid]) for iid in set(pairs.values())),
    ).groups()
    members: dict[str, list[str]] = {}
    for pid in sorted(pairs):
        members.setdefault(groups[pairs[pid]], []).append(pid)
    order = sorted(members)
    random.Random(seed).shuffle(order)
    target = len(pairs) - math.floor(len(pairs) * train_ratio + 1e-9)
    if len(order) >= 2:
        target = max(target, 1)
    # Fill test with whole groups, skipping any that would overshoot its share; train keeps
    # at least one group.
    to_test: set[str] = set()
    in_test = 0
    for group in order[:-1]:
        size = len(members[group])
        if in_test + size <= target:
            to_test.add(group)
            in_test += size
    if not to_test and target and len(order) >= 2:
        to_test.add(min(order, key=lambda g: (len(members[g]), order.index(g))))
    assignment = {
        pid: ("test" if group in to_test else "train") for group in order for pid in members[group]
    }
    return assignment, groups
