"""The runner keeps the generator busy from its first moment to its last.

Reading and de-duplicating a large instruction file, grouping pairs for the split and
tallying diversity used to run while no request was in flight (before the first, after
the last answer): 2-3% of a 20,000-completion run (docs/benchmarks.md, item 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai.generator.types import CompletionResult
from cai.pipeline.config import PipelineConfig
from cai.pipeline.endpoints import CallStats, RequestFailed
from cai.pipeline.runner import PipelineRunner

INSTRUCTIONS = 40


class FirstCallRecorder:
    """A generator whose first request notes how many instructions were read by then; every
    request fails for good, so each chain ends at its response."""

    def __init__(self) -> None:
        self.stats = CallStats()
        self.pool = type("NoEndpoints", (), {"endpoints": []})()
        self.runner: PipelineRunner | None = None
        self.read_at_first_request: int | None = None

    async def complete(self, prompts: list[str], **params: Any) -> CompletionResult:
        if self.read_at_first_request is None:
            assert self.runner is not None
            self.read_at_first_request = len(self.runner.store.files["instructions"].records)
        raise RequestFailed("not served in this test")


async def test_the_first_request_leaves_before_the_whole_file_is_read(tmp_path: Path) -> None:
    file = tmp_path / "instructions.jsonl"
    file.write_text(
        "".join(
            json.dumps({"type": "qa", "text": f"Question {i}: name {i} rivers of region {i}?"})
            + "\n"
            for i in range(INSTRUCTIONS)
        )
    )
    config = PipelineConfig.small_test(instructions={"source": "file", "file": str(file)})
    generator = FirstCallRecorder()
    runner = PipelineRunner(config, tmp_path / "run", generator=generator)  # type: ignore[arg-type]
    generator.runner = runner
    await runner.run()
    assert len(runner.store.files["instructions"].records) == INSTRUCTIONS
    assert generator.read_at_first_request is not None
    assert generator.read_at_first_request < INSTRUCTIONS / 2
