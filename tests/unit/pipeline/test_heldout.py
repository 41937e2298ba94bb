"""The held-out set: its shape, its version, and that no training input can contain it."""

from __future__ import annotations

import pytest

from cai.pipeline.heldout import (
    INSTRUCTION_TYPES,
    HeldoutError,
    HeldoutGuard,
    load_heldout,
    normalise,
)
from tests.support.seed_pool import SEED_POOL, seed_pool_texts


def test_packaged_set_is_versioned_with_twelve_instructions_per_type():
    heldout = load_heldout()
    assert heldout.version == "heldout-v1"
    groups = heldout.by_type()
    assert {kind: len(items) for kind, items in groups.items()} == dict.fromkeys(
        INSTRUCTION_TYPES, 12
    )


def test_every_qa_item_has_a_reference_answer():
    heldout = load_heldout()
    assert all(item.reference for item in heldout.by_type()["qa"])


def test_held_out_items_are_not_near_duplicates_of_each_other():
    heldout = load_heldout()
    for item in heldout.instructions:
        others = heldout.model_copy(
            update={"instructions": [o for o in heldout.instructions if o.id != item.id]}
        )
        assert HeldoutGuard(others).match(item.instruction) is None, item.id


def test_no_seed_pool_text_is_a_held_out_instruction():
    if not SEED_POOL.exists():
        pytest.skip(f"{SEED_POOL} not written yet (the pipeline's seed pool)")
    guard = HeldoutGuard(load_heldout())
    texts = seed_pool_texts()
    assert texts, "the seed pool holds no text"
    leaks = {text: guard.match(text) for text in texts if guard.match(text)}
    assert leaks == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What is the chemical symbol for the element gold?", "ho1-qa-01"),
        ("what is the CHEMICAL symbol for the element gold", "ho1-qa-01"),
        ("What's the chemical symbol for gold?", "ho1-qa-01"),
        ("Please tell me: in which city is the Eiffel Tower located?", "ho1-qa-04"),
        ("Write a 4-line poem about a city at night time", "ho1-generation-01"),
    ],
)
def test_guard_catches_exact_and_rephrased_held_out_instructions(text, expected):
    assert HeldoutGuard(load_heldout()).match(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Write a poem about the ocean.",
        "Explain how a bill becomes a law in the United States.",
        "List five fruits that are high in vitamin C.",
    ],
)
def test_guard_lets_unrelated_instructions_through(text):
    guard = HeldoutGuard(load_heldout())
    assert guard.match(text) is None
    assert text not in guard


def test_normalise_ignores_case_punctuation_and_spacing():
    assert normalise("  Hello,   WORLD!! ") == normalise("hello world")


def test_bad_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "version: x\ninstructions:\n  - id: a\n    type: poetry\n    instruction: hi there\n"
    )
    with pytest.raises(HeldoutError, match=r"bad\.yaml"):
        load_heldout(path)


def test_repeated_instructions_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(
        "version: x\ninstructions:\n"
        '  - {id: a, type: qa, instruction: "What is two plus two?"}\n'
        "  - {id: b, type: qa, instruction: what is two plus two}\n"
    )
    with pytest.raises(HeldoutError, match="unique"):
        load_heldout(path)
