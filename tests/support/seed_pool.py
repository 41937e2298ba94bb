"""The packaged seed pool's texts, for the tests that check no other packaged set copies them."""

from __future__ import annotations

from pathlib import Path

import yaml

SEED_POOL = Path(__file__).resolve().parents[2] / "client" / "cai" / "pipeline" / "seed_pool.yaml"


def strings(node: object) -> list[str]:
    """Every string in a YAML tree: the seed pool's layout may change, its texts may not leak."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings(value)]
    return []


def seed_pool_texts() -> list[str]:
    return strings(yaml.safe_load(SEED_POOL.read_text("utf-8")))
