"""A new step is one module and one line in the chain (cai.pipeline.steps).

`Echoes` stands for such a module: after the last revision it asks the model to repeat the
revised text and writes one `echoes.jsonl` record per chain. Registered in a test's own
chain, it runs against the stub generator like the steps of the default pipeline: its
records are written, resumed and never asked for twice, and the other steps' records are
those of the default pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import Field

from cai.pipeline import PipelineConfig, run_pipeline
from cai.pipeline.endpoints import Priority
from cai.pipeline.records import RECORD_TYPES, STEPS, GeneratedRecord, Record, derive_seed
from cai.pipeline.sections import SamplingConfig, Section
from cai.pipeline.steps import DEFAULT_CHAIN, PIPELINE, Pipeline
from cai.pipeline.steps.base import Chain, Step, StepContext, generated, sampling
from tests.support.stub_generator import StubServer

# ---- the step: what steps/echoes.py would hold ---------------------------------------------


class EchoesConfig(Section):
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=0.0, max_tokens=8, stop=["\n"])
    )


class EchoRecord(GeneratedRecord):
    target_id: str = Field(description="The revision that was echoed.")


class Echoes(Step):
    name: ClassVar[str] = "echoes"
    record_type: ClassVar[type[Record]] = EchoRecord

    def __init__(self, config: EchoesConfig | None = None) -> None:
        self.config = config or EchoesConfig()

    def record_id(self, chain: Chain) -> str:
        return f"{chain.iid}.e"

    async def make(self, run: StepContext, chain: Chain, priority: Priority) -> Record:
        target = chain.current
        assert target is not None
        rid = self.record_id(chain)
        record = EchoRecord(
            id=rid,
            instruction_id=chain.iid,
            parent_id=target.id,
            target_id=target.id,
            model=run.config.model,
            sampling=sampling(
                self.config.sampling,
                run.templates["responses"],
                derive_seed(run.config.seed, rid, self.name),
            ),
        )
        return await generated(run, self.name, record, f"Repeat: {target.text}\n", priority)


# ---- the registration: one line in the chain ------------------------------------------------

WITH_ECHOES = Pipeline((*DEFAULT_CHAIN[:2], Echoes(), *DEFAULT_CHAIN[2:]))


def _config(url: str) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "echo",
            "seed": 7,
            "model": "tiny",
            "endpoints": [{"url": url, "concurrency": 8}],
            "instructions": {"counts": {"qa": 3, "completion": 3, "generation": 3, "response": 3}},
            "critiques": {"rounds": 2},
            "retry": {"initial_backoff_s": 0.01, "max_backoff_s": 0.05},
        }
    )


def _lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines())


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(path)]


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with StubServer(models=["tiny"]) as server:
        yield server


def test_the_default_pipeline_is_the_run_folder_s_steps() -> None:
    assert PIPELINE.names == STEPS
    assert PIPELINE.record_types == RECORD_TYPES
    assert "echoes" not in PIPELINE.names and WITH_ECHOES.names[4] == "echoes"


async def test_an_added_step_writes_one_record_per_chain_after_the_last_revision(
    stub: StubServer, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    summary = await run_pipeline(_config(stub.base_url), run, steps=WITH_ECHOES)
    assert summary.status == "complete"
    echoes = _records(run / "echoes.jsonl")
    final_revisions = {
        r["id"] for r in _records(run / "revisions.jsonl") if r["id"].endswith(".v2")
    }
    assert echoes and {e["target_id"] for e in echoes} <= final_revisions
    assert all(e["status"] == "ok" and e["text"] for e in echoes)
    # Every judged chain went through its echo first; the funnel counts the new step.
    judged = {r["instruction_id"] for r in _records(run / "judgements.jsonl")}
    assert judged == {e["instruction_id"] for e in echoes}
    assert dict(summary.funnel)["echoes"] == len(echoes)
    assert summary.tokens["echoes"].requests == len(echoes)


async def test_the_other_steps_write_what_the_default_pipeline_writes(
    stub: StubServer, tmp_path: Path
) -> None:
    await run_pipeline(_config(stub.base_url), tmp_path / "echo", steps=WITH_ECHOES)
    await run_pipeline(_config(stub.base_url), tmp_path / "default")
    for step in STEPS:
        assert _lines(tmp_path / "echo" / f"{step}.jsonl") == _lines(
            tmp_path / "default" / f"{step}.jsonl"
        ), step


async def test_an_added_step_resumes_without_asking_again(stub: StubServer, tmp_path: Path) -> None:
    run = tmp_path / "run"
    await run_pipeline(_config(stub.base_url), run, steps=WITH_ECHOES)
    whole = {name: _lines(run / f"{name}.jsonl") for name in (*WITH_ECHOES.names, "train", "test")}
    # An interrupted run: half its echoes written, nothing after them.
    kept = whole["echoes"][: len(whole["echoes"]) // 2]
    (run / "echoes.jsonl").write_text("".join(line + "\n" for line in kept))
    for name in ("judgements", "pairs", "train", "test"):
        (run / f"{name}.jsonl").unlink()
    summary = await run_pipeline(_config(stub.base_url), run, steps=WITH_ECHOES)
    assert summary.status == "complete"
    for name, lines in whole.items():
        assert _lines(run / f"{name}.jsonl") == lines, name
    session = json.loads((run / "manifest.json").read_text())["sessions"][-1]
    assert session["tokens"]["echoes"]["requests"] == len(whole["echoes"]) - len(kept)
    assert "responses" not in session["tokens"]  # the earlier steps were read back, not asked
