"""Rule checks: they catch real defects and never fail a long correct answer."""

from __future__ import annotations

import pytest

from cai.pipeline import rules
from cai.pipeline.config import RulesConfig
from cai.pipeline.records import INSTRUCTION_TYPES
from cai.pipeline.rules import check, longest_consecutive_repeat, rules_ok, unique_sentence_ratio

CONFIG = RulesConfig()

LONG_ANSWER = " ".join(
    f"Point {i}: the {topic} matters because it changes how {subject} behaves over {span}."
    for i, (topic, subject, span) in enumerate(
        (t, s, p)
        for t in ("pressure", "temperature", "humidity", "altitude", "salinity", "wind")
        for s in ("water", "air", "soil", "ice", "rock")
        for p in ("a day", "a season", "a decade")
    )
)


@pytest.mark.parametrize("kind", INSTRUCTION_TYPES)
def test_long_correct_answer_is_not_failed(kind):
    # Prior art failed every answer over 500 characters: a fake 81% -> 99% gain.
    assert len(LONG_ANSWER) > 5000
    results = check(kind, "Explain how weather works, in detail.", LONG_ANSWER, "stop", CONFIG)
    assert rules_ok(results), results


def test_a_long_answer_that_hit_max_tokens_passes_by_default_and_is_flagged_only_when_asked():
    assert rules_ok(check("qa", "Explain.", LONG_ANSWER, "length", CONFIG))
    strict = check("qa", "Explain.", LONG_ANSWER, "length", RulesConfig(fail_truncated=True))
    assert strict["complete"] is False


def test_no_rule_depends_on_length_alone():
    short = check("qa", "What is 2+2?", "4", "stop", CONFIG)
    assert rules_ok(short), short


def test_empty_response_fails():
    assert check("qa", "Why?", "  \n", "stop", CONFIG)["nonempty"] is False


def test_template_residue_fails_but_markdown_headings_and_colons_pass():
    assert (
        check("qa", "Q?", "Paris.\n### Instruction:\nNext", "stop", CONFIG)["no_template_residue"]
        is False
    )
    ok = check(
        "generation",
        "Write notes.",
        "### Notes\nFirst: buy milk.\nSecond: call Sam:",
        "stop",
        CONFIG,
    )
    assert ok["no_template_residue"] is True


def test_speaking_for_the_user_fails():
    text = "Sure, here it is.\nHuman: thanks! and now another question"
    assert check("response", "Help me.", text, "stop", CONFIG)["no_speaker_turns"] is False


def test_degenerate_repetition_fails_and_prose_does_not():
    loop = "I am a model. " * 40
    assert unique_sentence_ratio(loop) < 0.1
    assert check("qa", "Who are you?", loop, "stop", CONFIG)["not_repetitive"] is False
    stutter = "The answer is " + "very " * 12 + "simple."
    assert longest_consecutive_repeat(stutter) == 12
    assert check("qa", "Why?", stutter, "stop", CONFIG)["not_repetitive"] is False
    assert unique_sentence_ratio(LONG_ANSWER) == 1.0
    assert longest_consecutive_repeat(LONG_ANSWER) <= 2


def test_echoing_the_instruction_fails():
    instruction = "Describe the water cycle in three sentences."
    assert check("generation", instruction, instruction, "stop", CONFIG)["not_an_echo"] is False


def test_qa_answer_that_is_only_a_question_fails():
    assert (
        check("qa", "What is the capital of Peru?", "Why do you want to know?", "stop", CONFIG)[
            "not_only_a_question"
        ]
        is False
    )
    assert (
        check("qa", "What is the capital of Peru?", "Lima. Have you been?", "stop", CONFIG)[
            "not_only_a_question"
        ]
        is True
    )


def test_completion_that_restarts_the_passage_fails():
    instruction = "Continue this sentence: The best way to learn a new language is"
    assert (
        check(
            "completion",
            instruction,
            "The best way to learn a new language is to practise.",
            "stop",
            CONFIG,
        )["no_restart"]
        is False
    )
    assert (
        check("completion", instruction, "to speak it every day.", "stop", CONFIG)["no_restart"]
        is True
    )


def test_placeholders_fail_in_generated_text():
    assert (
        check("generation", "Write an email.", "Dear [Your Name], ...", "stop", CONFIG)[
            "no_placeholders"
        ]
        is False
    )


def test_commentary_on_the_response_is_not_an_answer():
    # What Gemma-3-270M (base) wrote as "revisions": remarks about an answer, not answers.
    for text in (
        "The response is kind.",
        "This response is not credible.",
        "Your revision is better.",
    ):
        assert not rules.not_meta_commentary("What is the capital of Australia?", text)
    assert rules.not_meta_commentary("What is the capital of Australia?", "Canberra.")
    assert rules.not_meta_commentary("Q?", "I sent a quick response to her email.")
    # A task about writing a response may speak of one.
    assert rules.not_meta_commentary(
        "Write a response to this complaint.", "The response is polite."
    )
