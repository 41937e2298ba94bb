"""Step 3: the model critiques a response against one principle sampled from the constitution.

principle = pick_principle(constitution, run_seed, instruction_id, round_, tags)
prompt = build_prompt(template, pool, instruction, response, principle, few_shot=1)
reason = problem(parse(text), principle)     # None: a usable critique

A small base model often answers a critique request by restating it ("The response is more or
less confident than it should be.") or by copying the response back: neither tells a revision
what to change, so such a critique is rejected (with its reason, in the funnel) instead of
producing a revision and a pair from nothing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cai.pipeline.constitution import Constitution, Principle
from cai.pipeline.dedupe import normalise, shingles
from cai.pipeline.instructions import MIN_CHARS
from cai.pipeline.prompts import Template, few_shot_prompt
from cai.pipeline.responses import parse as parse_text
from cai.pipeline.rules import no_template_residue
from cai.pipeline.schema import derive_seed
from cai.pipeline.sections import SamplingConfig, Section
from cai.pipeline.seeds import CritiqueExample, SeedPool


class CritiquesConfig(Section):
    rounds: int = Field(default=1, ge=1, description="Critique -> revision rounds.")
    few_shot: int = Field(default=1, ge=0, description="Worked critique examples shown.")
    principle_tags: list[Literal["helpful", "harmless", "honest"]] = Field(
        default_factory=list, description="Sample only principles with one of these tags."
    )
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.3, top_p=0.95, max_tokens=256)
    )


def pick_principle(
    constitution: Constitution, run_seed: int, iid: str, round_: int, tags: list[str] | None = None
) -> Principle:
    """The principle for one critique round of one instruction: sampled, reproducible."""
    return constitution.sample(derive_seed(run_seed, iid, "principle", round_), tags)


def build_prompt(
    template: Template,
    pool: SeedPool,
    constitution: Constitution,
    instruction: str,
    response: str,
    principle: Principle,
    *,
    few_shot: int,
) -> str:
    examples = [
        critique_example(constitution, example) for example in pool.critique_examples[:few_shot]
    ]
    query = template.render(
        "query",
        instruction=instruction,
        response=response,
        critique_request=principle.critique_request,
    )
    return few_shot_prompt(template, examples, query, preamble=bool(few_shot))


def critique_example(constitution: Constitution, example: CritiqueExample) -> dict[str, str]:
    """A seed example's fields as the critique template's `example` section takes them."""
    return {
        "instruction": example.instruction,
        "response": example.response,
        "critique_request": principle_request(constitution, example.principle, "critique"),
        "critique": example.critique,
    }


def principle_request(constitution: Constitution, principle_id: str, kind: str) -> str:
    try:
        principle = constitution.get(principle_id)
    except KeyError:
        # A user's constitution need not contain the seed example's principle: fall back
        # to the first one so the example still shows the format.
        principle = constitution.principles[0]
    return principle.critique_request if kind == "critique" else principle.revision_request


def parse(text: str, stop: list[str] | tuple[str, ...] = ()) -> str:
    return parse_text(text, stop)


# At or above this share of its 5-character shingles found in another text, a critique says
# nothing that text did not already say.
RESTATES_THRESHOLD = 0.7


def restates(text: str, other: str, threshold: float = RESTATES_THRESHOLD) -> bool:
    """Most of `text` is already in `other` (containment, not Jaccard: a short restatement of
    a long request shares little of the request but is almost wholly inside it)."""
    a, b = normalise(text), normalise(other)
    if not a or not b:
        return False
    mine = shingles(a)
    return len(mine & shingles(b)) / len(mine) >= threshold


def problem(text: str, principle: Principle, response: str) -> str | None:
    """Why a critique cannot guide a revision, or None when it can."""
    if sum(ch.isalnum() for ch in text) < MIN_CHARS:
        return "empty"
    if not no_template_residue("", text):
        return "template_residue"
    if restates(text, principle.critique_request):
        return "restates_request"
    if restates(text, response):
        return "copies_response"
    return None
