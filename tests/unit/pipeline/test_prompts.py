"""Prompt templates and the prompt builders of every step."""

from __future__ import annotations

import pytest

from cai.pipeline import critiques, instructions, responses, revisions
from cai.pipeline.constitution import load_constitution
from cai.pipeline.prompts import TemplateError, load_template, parse_template
from cai.pipeline.seeds import load_seed_pool

POOL = load_seed_pool()
CONSTITUTION = load_constitution()


def test_every_packaged_template_has_a_name_version_and_sections():
    for name in ("instructions", "responses", "critiques", "revisions", "judge"):
        template = load_template(name)
        assert template.version.isdigit() and template.tag == f"{name}@{template.version}"
        assert "query" in template.sections
        assert len(template.sha256) == 64


def test_template_values_are_inserted_verbatim_not_expanded_again():
    template = parse_template("# name: t\n# version: 3\n=== query\nA {{x}} B\n")
    assert template.render("query", x="{{x}}") == "A {{x}} B"


def test_template_refuses_a_missing_value():
    template = parse_template("# name: t\n# version: 1\n=== query\n{{instruction}}\n")
    with pytest.raises(TemplateError, match="instruction"):
        template.render("query")


def test_template_without_version_is_refused():
    with pytest.raises(TemplateError, match="version"):
        parse_template("# name: t\n=== query\nx\n")


def test_a_trailing_empty_line_keeps_the_final_newline_of_a_section():
    template = parse_template("# name: t\n# version: 1\n=== a\nline\n\n=== b\nline\n")
    assert template.sections == {"a": "line\n", "b": "line"}


def test_instruction_prompt_shows_seeds_of_its_type_and_asks_for_the_next_task():
    template = load_template("instructions")
    prompt, shown = instructions.build_prompt(template, POOL, "qa", few_shot=3, seed=7)
    assert len(shown) == 3
    for index in shown:
        assert POOL.types["qa"].instructions[index] in prompt
    assert POOL.types["qa"].description in prompt
    assert prompt.endswith("### Task 4:\n")


def test_instruction_prompt_examples_depend_on_the_seed():
    template = load_template("instructions")
    shown = {
        tuple(instructions.build_prompt(template, POOL, "qa", few_shot=3, seed=s)[1])
        for s in range(20)
    }
    assert len(shown) > 5


def test_instruction_parser_trims_and_rejects_empty_text():
    assert instructions.parse("  Why is grass green?\n") == ("Why is grass green?", None)
    assert instructions.parse(" \n ...")[1] == "empty"
    assert instructions.parse("### Task 5: x y z abc def")[1] == "template_residue"


def test_response_prompt_ends_with_the_pair_prompt():
    template = load_template("responses")
    prompt, shown = responses.build_prompt(
        template, POOL, "generation", "Write a haiku.", few_shot=2, seed=1
    )
    pair_prompt = responses.pair_prompt(template, "Write a haiku.")
    assert prompt.endswith(pair_prompt)
    assert pair_prompt == "### Instruction:\nWrite a haiku.\n\n### Response:\n"
    assert len(shown) == 2
    for index in shown:
        assert POOL.types["generation"].examples[index].response in prompt


def test_response_prompt_without_examples_is_the_pair_prompt_alone():
    template = load_template("responses")
    prompt, shown = responses.build_prompt(template, POOL, "qa", "Why?", few_shot=0, seed=1)
    assert shown == []
    assert prompt == responses.pair_prompt(template, "Why?")


def test_stop_strings_are_passed_whole_not_as_last_token():
    # Prior art passed only the last token of each stop string (':' or '###') as an EOS id.
    template = load_template("responses")
    assert "\n### Instruction:" in template.stop
    assert all(len(stop) > 3 for stop in template.stop)
    for name in ("instructions", "critiques", "revisions"):
        assert all(stop not in (":", "###", "\n") for stop in load_template(name).stop)


def test_response_parser_keeps_colons_and_markdown_headings():
    stop = list(load_template("responses").stop)
    text = " Here are the steps:\n### Step one\nMix the flour:"
    assert responses.parse(text, stop) == "Here are the steps:\n### Step one\nMix the flour:"


def test_response_parser_cuts_at_a_stop_string_the_server_let_through():
    stop = list(load_template("responses").stop)
    assert responses.parse("Paris.\n### Instruction:\nWhat is", stop) == "Paris."


def test_critique_prompt_names_the_sampled_principle_and_the_response():
    template = load_template("critiques")
    principle = CONSTITUTION.principles[3]
    prompt = critiques.build_prompt(
        template, POOL, CONSTITUTION, "How do I bake bread?", "Use an oven.", principle, few_shot=1
    )
    assert prompt.endswith(
        f"### Response:\nUse an oven.\n\n### Critique request:\n{principle.critique_request}\n\n### Critique:\n"
    )
    assert POOL.critique_examples[0].critique in prompt


def test_revision_prompt_carries_the_critique_and_the_revision_request():
    template = load_template("revisions")
    principle = CONSTITUTION.principles[0]
    prompt = revisions.build_prompt(
        template, POOL, CONSTITUTION, "Q?", "A.", "It is too short.", principle, few_shot=1
    )
    assert (
        "### Critique:\nIt is too short.\n\n### Revision request:\n" + principle.revision_request
        in prompt
    )
    # The instruction again right before the rewrite: it reads as an answer, not a comment.
    assert prompt.endswith("### Instruction:\nQ?\n\n### Revised response:\n")
    assert POOL.critique_examples[0].revision in prompt


def test_critique_and_revision_parsers_trim_and_cut_at_stop():
    stop = list(load_template("critiques").stop)
    assert critiques.parse(" Too vague.\n### Revision request: x", stop) == "Too vague."
    assert (
        revisions.parse(" Better.\n### Instruction:\nnext", list(load_template("revisions").stop))
        == "Better."
    )


def test_a_critique_that_restates_the_request_or_copies_the_response_is_rejected():
    principle = CONSTITUTION.get("calibrated-confidence")
    response = "The closest planet to the Sun is Earth."
    assert critiques.problem(principle.critique_request.rstrip("?") + ".", principle, response) == (
        "restates_request"
    )
    assert (
        critiques.problem(
            "The response is more or less confident than it should be.", principle, response
        )
        == "restates_request"
    )
    assert critiques.problem(response, principle, response) == "copies_response"
    assert critiques.problem("ok", principle, response) == "empty"
    assert (
        critiques.problem("Fine.\n### Critique:\nFine.", principle, response) == "template_residue"
    )
    useful = "It states Earth is closest to the Sun with full confidence, but Mercury is."
    assert critiques.problem(useful, principle, response) is None


def test_no_template_has_more_stop_strings_than_vllm_accepts():
    # vLLM's completions API answers 400 to a request with more than 4 stop strings: seen on
    # the first real-model run, where every held-out answer failed that way.
    for name in ("instructions", "responses", "critiques", "revisions", "judge"):
        assert len(load_template(name).stop) <= 4, name


def test_a_template_with_more_stop_strings_than_vllm_accepts_is_refused():
    text = '# name: t\n# version: 1\n# stop: ["a1", "b2", "c3", "d4", "e5"]\n=== query\nx\n'
    with pytest.raises(TemplateError, match="at most 4"):
        parse_template(text)
