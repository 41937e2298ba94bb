"""Step 2: the model answers each instruction, few-shot, with the template's real stop strings.

    prompt, shown = build_prompt(template, pool, "qa", instruction, few_shot=2, seed=seed)
    text = parse(choice.text)

`pair_prompt(template, instruction)` is the template's `query` section alone: the `prompt`
of every training pair, i.e. exactly the text the trained model continues. A later stage
prompts the adapter with the same section (examples in front or not), so the training
format and the generation format cannot drift apart.
"""

from __future__ import annotations

from pydantic import Field

from cai.pipeline.prompts import Template, few_shot_prompt
from cai.pipeline.schema import InstructionType
from cai.pipeline.sections import SamplingConfig, Section
from cai.pipeline.seeds import SeedPool


class ResponsesConfig(Section):
    few_shot: int = Field(
        default=2, ge=0, description="Seed examples before the instruction (0 for a tuned adapter)."
    )
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=384)
    )


def pair_prompt(template: Template, instruction: str) -> str:
    return template.render("query", instruction=instruction)


def build_prompt(
    template: Template,
    pool: SeedPool,
    kind: InstructionType,
    instruction: str,
    *,
    few_shot: int,
    seed: int,
) -> tuple[str, list[int]]:
    examples = pool.types[kind].examples
    shown = pool.sample_indices(len(examples), few_shot, seed) if few_shot else []
    fields = [
        {"instruction": examples[i].instruction, "response": examples[i].response} for i in shown
    ]
    prompt = few_shot_prompt(
        template, fields, pair_prompt(template, instruction), preamble=bool(shown)
    )
    return prompt, shown


def parse(text: str, stop: list[str] | tuple[str, ...] = ()) -> str:
    """The response text: whitespace trimmed, cut at a stop string the server let through.

    vLLM removes the stop string it matched; the cut here only guards servers that do not
    honour `stop` (it never cuts at a bare '###' or ':', which real answers contain).
    """
    cut = len(text)
    for marker in stop:
        position = text.find(marker)
        if position != -1:
            cut = min(cut, position)
    return text[:cut].strip()
