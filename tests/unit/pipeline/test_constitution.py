"""The constitution file and principle sampling."""

from __future__ import annotations

from collections import Counter

import pytest

from cai.pipeline.constitution import ConstitutionError, load_constitution
from cai.pipeline.critiques import pick_principle


def test_packaged_constitution_has_about_16_principles_covering_every_tag():
    constitution = load_constitution()
    assert 14 <= len(constitution.principles) <= 20
    tags = {tag for p in constitution.principles for tag in p.tags}
    assert tags == {"helpful", "harmless", "honest"}


def test_principles_are_sampled_not_always_the_first():
    constitution = load_constitution()
    picks = Counter(pick_principle(constitution, 1234, f"qa-{i:05d}", 1).id for i in range(400))
    assert len(picks) == len(constitution.principles)
    assert picks[constitution.principles[0].id] < 100


def test_principle_choice_is_reproducible_and_differs_by_round():
    constitution = load_constitution()
    first = [pick_principle(constitution, 7, "qa-00001", r).id for r in range(1, 6)]
    assert first == [pick_principle(constitution, 7, "qa-00001", r).id for r in range(1, 6)]
    assert len(set(first)) > 1


def test_principle_tags_restrict_the_sample():
    constitution = load_constitution()
    for i in range(50):
        principle = pick_principle(constitution, 3, f"qa-{i:05d}", 1, ["honest"])
        assert "honest" in principle.tags


def test_a_user_constitution_replaces_the_packaged_one(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nversion: 2\nprinciples:\n"
        "  - id: be-brief\n    tags: [helpful]\n"
        "    critique_request: Is the response longer than it needs to be?\n"
        "    revision_request: Rewrite the response to be brief.\n"
    )
    constitution = load_constitution(path)
    assert constitution.tag == "mine@2"
    assert constitution.sample(1).id == "be-brief"


def test_a_malformed_constitution_names_the_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nversion: 1\nprinciples:\n  - id: a\n    tags: [funny]\n")
    with pytest.raises(ConstitutionError, match=r"bad\.yaml"):
        load_constitution(path)


def test_duplicate_principle_ids_are_refused(tmp_path):
    entry = "  - id: a\n    tags: [helpful]\n    critique_request: critique this please\n    revision_request: revise this please\n"
    path = tmp_path / "dup.yaml"
    path.write_text("name: x\nversion: 1\nprinciples:\n" + entry + entry)
    with pytest.raises(ConstitutionError, match="twice"):
        load_constitution(path)
