"""Where `cai run` stands, saved after every step so an interrupted run resumes there.

`runs/<name>/state.json` is replaced atomically (cai.runfolder.write_json_atomic): a kill at any
moment leaves either the old or the new state, never a torn one. A DPO job already submitted
is found again through its id here, and through the idempotency key if the kill came
between the submit and the save.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from cai.runfolder import STATE_FILE, read_record, write_json_atomic


class StageState(BaseModel):
    number: int
    generating_model: str | None = Field(default=None, description="Served name that generated.")
    generated: bool = False
    train_dataset_id: str | None = None
    test_dataset_id: str | None = None
    train_pairs: int | None = None
    test_pairs: int | None = None
    merge_job_id: str | None = None
    merged_model: str | None = Field(default=None, description="Trainer name of the merged base.")
    job_id: str | None = None
    job_state: str | None = None
    adapter: str | None = Field(default=None, description="Trainer registry name of the adapter.")
    adapter_path: str | None = None
    served_name: str | None = Field(default=None, description="vLLM name: stage<N>-<job id>.")
    evaluated: bool = False


class RunState(BaseModel):
    fingerprint: str
    baseline_done: bool = False
    stages: list[StageState] = Field(default_factory=list)

    def stage(self, number: int) -> StageState:
        while len(self.stages) < number:
            self.stages.append(StageState(number=len(self.stages) + 1))
        return self.stages[number - 1]


def load_state(run_dir: Path) -> RunState | None:
    return read_record(run_dir / STATE_FILE, RunState)


def save_state(run_dir: Path, state: RunState) -> None:
    write_json_atomic(run_dir / STATE_FILE, state.model_dump(mode="json"))
