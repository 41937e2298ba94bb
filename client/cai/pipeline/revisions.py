"""Step 4: the model rewrites the response following the critique (`rounds` may repeat 3-4).

prompt = build_prompt(template, pool, constitution, instruction, response, critique,
                      principle, few_shot=1)
"""

from __future__ import annotations

from pydantic import Field

from cai.pipeline.constitution import Constitution, Principle
from cai.pipeline.critiques import critique_example, principle_request
from cai.pipeline.prompts import Template, few_shot_prompt
from cai.pipeline.responses import parse as parse_text
from cai.pipeline.sections import SamplingConfig, Section
from cai.pipeline.seeds import SeedPool


class RevisionsConfig(Section):
    few_shot: int = Field(default=1, ge=0)
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=384)
    )


def build_prompt(
    template: Template,
    pool: SeedPool,
    constitution: Constitution,
    instruction: str,
    response: str,
    critique: str,
    principle: Principle,
    *,
    few_shot: int,
) -> str:
    examples = [
        critique_example(constitution, example)
        | {
            "revision_request": principle_request(constitution, example.principle, "revision"),
            "revision": example.revision,
        }
        for example in pool.critique_examples[:few_shot]
    ]
    query = template.render(
        "query",
        instruction=instruction,
        response=response,
        critique_request=principle.critique_request,
        critique=critique,
        revision_request=principle.revision_request,
    )
    return few_shot_prompt(template, examples, query, preamble=bool(few_shot))


def parse(text: str, stop: list[str] | tuple[str, ...] = ()) -> str:
    return parse_text(text, stop)
