"""Every file a pipeline config names, read and checked in one place before a run starts.

    inputs = PipelineInputs.load(config)     # templates, constitution, seed pool, held-out
    inputs.instructions                      # the instruction file's rows (source: file)

A bad file (not UTF-8, not valid YAML, a wrong field, a garbage line) raises its loader's
typed error, one line naming the file and line; nothing has been written by then. `cai
generate` loads them as the runner starts, `cai run` for every stage before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cai.pipeline.config import PipelineConfig
from cai.pipeline.constitution import Constitution, load_constitution
from cai.pipeline.heldout import HeldoutSet, load_heldout
from cai.pipeline.instructions import read_instruction_file
from cai.pipeline.prompts import Template, load_template
from cai.pipeline.records import InstructionType
from cai.pipeline.seeds import SeedPool, load_seed_pool

TEMPLATE_NAMES = ("instructions", "responses", "critiques", "revisions", "judge")


@dataclass(frozen=True)
class PipelineInputs:
    templates: dict[str, Template]
    constitution: Constitution
    pool: SeedPool
    heldout: HeldoutSet
    instructions: list[tuple[str | None, InstructionType, str]]

    @classmethod
    def load(cls, config: PipelineConfig) -> PipelineInputs:
        tdir = Path(config.templates_dir) if config.templates_dir else None
        source = config.instructions
        return cls(
            templates={name: load_template(name, tdir) for name in TEMPLATE_NAMES},
            constitution=load_constitution(config.constitution),
            pool=load_seed_pool(config.seed_pool),
            heldout=load_heldout(config.heldout),
            instructions=read_instruction_file(str(source.file)) if source.source == "file" else [],
        )
