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
from typing import Any

from cai.pipeline.config import PipelineConfig
from cai.pipeline.dedupe import NearDuplicateGroups, completed
from cai.pipeline.schema import derive_seed
from cai.pipeline.store import RunStore
from cai.runfolder import write_jsonl_atomic
from protocol.datasets import PreferencePair


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


def write_split(
    store: RunStore, config: PipelineConfig, grouper: NearDuplicateGroups | None = None
) -> dict[str, int]:
    """Write `train.jsonl` and `test.jsonl` from the run's ok pairs; return their row counts."""
    made = {pid: p for pid, p in store.files["pairs"].records.items() if p.status == "ok"}
    texts = {r.id: r.text for r in store.files["instructions"].records.values()}
    assignment, groups = split_groups(
        {pid: p.instruction_id for pid, p in made.items()},
        texts,
        train_ratio=config.split.train_ratio,
        seed=derive_seed(config.seed, "split"),
        group_threshold=config.split.group_threshold,
        grouper=grouper,
    )
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for pid in sorted(made):
        pair = made[pid]
        row = PreferencePair.model_validate(
            {
                "prompt": pair.prompt,
                "chosen": pair.chosen,
                "rejected": pair.rejected,
                "id": pid,
                "instruction_id": pair.instruction_id,
                "type": pair.type,
                "rule": pair.rule,
                "chosen_id": pair.chosen_id,
                "rejected_id": pair.rejected_id,
                "chosen_margin": pair.chosen_margin,
                "rejected_margin": pair.rejected_margin,
                "group": groups[pair.instruction_id],
                "model": config.model,
            }
        )
        rows[assignment[pid]].append(row.model_dump(mode="json"))
    for name, split_rows in rows.items():
        write_jsonl_atomic(store.path(name), split_rows)
    return {name: len(split_rows) for name, split_rows in rows.items()}
