"""Type-specific rule checks on a response: cheap, explainable, and never about length.

    results = check(kind, instruction, response, finish_reason, RulesConfig())
    rules_ok(results)                           # every check passed

A check fails only for a defect a reader would point at: nothing written, template text
leaking into the answer, the model speaking for the user, degenerate repetition, echoing
the instruction, placeholders, and commentary on "the response" or "the critique" in place of
an answer (what a small base model writes when asked for a revision). There is deliberately no maximum length: a length-correlated
check produced a fake 81% -> 99% "improvement" in prior work (notes/prior-art.md). Hitting
`max_tokens` is recorded (`truncated`) and fails only with `rules.fail_truncated`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pydantic import Field

from cai.pipeline.dedupe import normalise
from cai.pipeline.schema import InstructionType
from cai.pipeline.sections import Section

# Headings of this project's templates: whole markers, so a Markdown '###' or a ':' in an
# answer is not residue.
TEMPLATE_MARKERS = (
    "### Instruction:",
    "### Response:",
    "### Critique request:",
    "### Critique:",
    "### Revision request:",
    "### Revision:",
    "### Revised response:",
    "### Task",
    "### Question:",
    "### Answer:",
)
_SPEAKER = re.compile(r"(?m)^\s*(Human|User|Assistant|AI|Q|A)\s*:\s")
_PLACEHOLDER = re.compile(
    r"\[(your|insert|name|company|date)[^\]]*\]|lorem ipsum|<insert", re.IGNORECASE
)
_WORD = re.compile(r"\w+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
# Fewer sentences than this say nothing about looping.
MIN_SENTENCES = 4


class RulesConfig(Section):
    fail_truncated: bool = Field(
        default=False,
        description="Fail a response that hit max_tokens. Off by default: it correlates with "
        "length, and a length-correlated check faked a gain in prior work; the flag is "
        "recorded either way.",
    )
    min_unique_sentence_ratio: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Fail text (4+ sentences) whose distinct sentences are fewer than this share.",
    )
    max_consecutive_repeats: int = Field(
        default=5,
        ge=2,
        description="Fail text repeating one phrase (1-5 words) more times in a row.",
    )


def nonempty(_: str, response: str) -> bool:
    return any(ch.isalnum() for ch in response)


def no_template_residue(_: str, response: str) -> bool:
    return not any(marker in response for marker in TEMPLATE_MARKERS)


def no_speaker_turns(_: str, response: str) -> bool:
    """A base model that writes 'Human: ...' lines is continuing the dialogue, not answering."""
    return _SPEAKER.search(response) is None


def not_an_echo(instruction: str, response: str) -> bool:
    norm_response, norm_instruction = normalise(response), normalise(instruction)
    return bool(norm_response) and not (
        norm_response == norm_instruction
        or (len(norm_instruction) >= 20 and norm_response.startswith(norm_instruction))
    )


def unique_sentence_ratio(text: str) -> float:
    """Distinct sentences over sentences: about 1 for prose, lists and long answers alike."""
    sentences = [normalise(s) for s in _SENTENCE.split(text) if normalise(s)]
    if len(sentences) < MIN_SENTENCES:
        return 1.0
    return len(set(sentences)) / len(sentences)


def repeats_more_than(text: str, times: int, max_n: int = 5) -> bool:
    """True when one phrase of 1..max_n words occurs more than `times` times back to back."""
    words = " ".join(_WORD.findall(text.casefold())) + " "
    pattern = _REPEAT_CACHE.get((times, max_n))
    if pattern is None:
        pattern = re.compile(rf"(?:^| )((?:\w+ ){{1,{max_n}}}?)\1{{{times},}}")
        _REPEAT_CACHE[(times, max_n)] = pattern
    return pattern.search(words) is not None


_REPEAT_CACHE: dict[tuple[int, int], re.Pattern[str]] = {}


def longest_consecutive_repeat(text: str, max_n: int = 5) -> int:
    """How many times in a row one n-gram (n <= max_n) repeats: 'the the the' -> 3."""
    words = _WORD.findall(text.casefold())
    best = 1 if words else 0
    for n in range(1, max_n + 1):
        for start in range(n):
            run, previous = 1, None
            for i in range(start, len(words) - n + 1, n):
                gram = tuple(words[i : i + n])
                run = run + 1 if gram == previous else 1
                best = max(best, run)
                previous = gram
    return best


_META = re.compile(
    r"\b(the|this|my|your) (original |previous |above |revised |assistant'?s? )?"
    r"(response|critique|revision)\b",
    re.IGNORECASE,
)

_META_TOPIC = re.compile(r"\b(response|critique|revision)s?\b", re.IGNORECASE)


def not_meta_commentary(instruction: str, response: str) -> bool:
    """'The response is kind.' talks about an answer instead of giving one. Allowed when the
    instruction itself speaks of a response (a task about writing one, say)."""
    if _META_TOPIC.search(instruction):
        return True
    return _META.search(response) is None


def no_placeholders(_: str, response: str) -> bool:
    return _PLACEHOLDER.search(response) is None


def not_only_a_question(_: str, response: str) -> bool:
    """A `qa` answer that is one question back did not answer."""
    stripped = response.strip()
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", stripped) if s]
    return not (len(sentences) == 1 and stripped.endswith("?"))


def no_restart(instruction: str, response: str) -> bool:
    """A `completion` continues the given text; it does not start it over."""
    passage = instruction.split(":", 1)[-1]
    head = normalise(passage).split()[:5]
    return len(head) < 3 or normalise(response).split()[: len(head)] != head


Rule = Callable[[str, str], bool]
COMMON: dict[str, Rule] = {
    "nonempty": nonempty,
    "no_template_residue": no_template_residue,
    "no_speaker_turns": no_speaker_turns,
    "not_an_echo": not_an_echo,
    "not_meta_commentary": not_meta_commentary,
}
BY_TYPE: dict[InstructionType, dict[str, Rule]] = {
    "qa": {"not_only_a_question": not_only_a_question},
    "completion": {"no_restart": no_restart},
    "generation": {"no_placeholders": no_placeholders},
    "response": {"no_placeholders": no_placeholders},
}


def check(
    kind: InstructionType,
    instruction: str,
    response: str,
    finish_reason: str | None,
    config: RulesConfig,
) -> dict[str, bool]:
    results = {name: rule(instruction, response) for name, rule in COMMON.items()}
    # Degenerate loops, not long answers: the same sentence over and over, or one phrase
    # repeated back to back. A long list with parallel phrasing passes both.
    results["not_repetitive"] = unique_sentence_ratio(
        response
    ) >= config.min_unique_sentence_ratio and not repeats_more_than(
        response, config.max_consecutive_repeats
    )
    results.update({name: rule(instruction, response) for name, rule in BY_TYPE[kind].items()})
    if config.fail_truncated:
        results["complete"] = finish_reason != "length"
    return results


def rules_ok(results: dict[str, bool]) -> bool:
    return all(results.values())
