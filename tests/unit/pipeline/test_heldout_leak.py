"""No generated instruction may be (nearly) a held-out evaluation question."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cai.pipeline.config import PipelineConfig
from cai.pipeline.dedupe import DuplicateIndex
from cai.pipeline.heldout import load_heldout
from cai.pipeline.records import InstructionRecord
from cai.pipeline.runner import PipelineRunner


def _runner(tmp_path: Path) -> PipelineRunner:
    caller: Any = SimpleNamespace(stats=None)
    return PipelineRunner(PipelineConfig.small_test(), tmp_path, generator=caller)


def _record(text: str) -> InstructionRecord:
    return InstructionRecord(id="qa-0", instruction_id="qa-0", type="qa", attempt=0, text=text)


def test_generated_copy_of_a_heldout_question_is_rejected(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    question = load_heldout().instructions[0].instruction
    record = _record(question.upper() + "  ")  # case and spacing do not hide a copy
    index = DuplicateIndex(0.7)
    runner._judge_instruction(record, None, index, DuplicateIndex(0.7))
    assert (record.status, record.reason) == ("rejected", "matches_heldout")
    assert index.find(question) is None  # not added to the accepted instructions


def test_unrelated_instruction_is_accepted(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    record = _record("Write a limerick about a cat who learns to play the cello.")
    runner._judge_instruction(record, None, DuplicateIndex(0.7), DuplicateIndex(0.7))
    assert record.status == "ok"
