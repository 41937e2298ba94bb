"""What every step of `cai run` shares, and what the run writes about itself as it goes.

`StageBookkeeping` holds the config, the clients and the reporter, and the run's own records:
state.json after every step (`save`; a run folder of another config is refused), a
steps.jsonl row per step with its wall and GPU seconds and cost (`record_step`), manifest.json
after every stage (`write_manifest`). The parts of a run are given it: `GeneratorFleet`
(cai.stages.serving), `TrainerJobs` (cai.stages.training) and `StageRunner` (cai.stages.runner,
the loop, which owns all three).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cai.evaluation.records import EvalSummary, JudgeCheck
from cai.generator import GeneratorClient
from cai.pipeline.manifest import package_versions
from cai.runfolder import MANIFEST_FILE, STEPS_FILE, stage_folder, write_json_atomic
from cai.stages.config import RunConfig
from cai.stages.reporter import Reporter
from cai.stages.state import RunState, load_state, save_state
from cai.trainer import TrainerClient


class RunError(RuntimeError):
    """The run cannot go on; the message says what happened and what to do."""


class StageBookkeeping:
    """A run's config, clients and reporter, its state, and the records of its steps."""

    def __init__(
        self,
        config: RunConfig,
        gen: GeneratorClient,
        trainer: TrainerClient,
        reporter: Reporter,
        replicas: list[GeneratorClient] | None = None,
    ) -> None:
        self.config = config
        self.gen = gen
        # Every server of the model: the pipeline uses them all, so each must serve each
        # adapter and sleep while a job trains. `gen` alone runs the evaluation.
        self.gens = [gen, *(replicas or [])]
        self.trainer = trainer
        self.reporter = reporter
        self.run_dir = config.run_dir
        self.state = self._load_or_start_state()
        self.judge_check: JudgeCheck | None = None

    def _load_or_start_state(self) -> RunState:
        state = load_state(self.run_dir)
        fingerprint = self.config.fingerprint()
        if state is None:
            return RunState(fingerprint=fingerprint)
        if state.fingerprint != fingerprint:
            raise RunError(
                f"{self.run_dir} was started with a different config (fingerprint "
                f"{state.fingerprint}, now {fingerprint}): resume with the same config, or "
                "give the run a new name"
            )
        return state

    def save(self) -> None:
        save_state(self.run_dir, self.state)

    def stage_dir(self, number: int) -> Path:
        return stage_folder(self.run_dir, number)

    def record_step(self, stage: int, step: str, started: float, **extra: Any) -> None:
        wall = time.monotonic() - started
        row: dict[str, Any] = {"stage": stage, "step": step, "wall_s": round(wall, 3)}
        gpu_s = extra.pop("gpu_s", wall)
        row["gpu_s"] = round(gpu_s, 3)
        row["cost_usd"] = round(gpu_s / 3600 * self.config.usd_per_gpu_hour, 6)
        row.update(extra)
        row["time"] = datetime.now(UTC).isoformat()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / STEPS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")

    def write_manifest(self, summaries: dict[int, EvalSummary]) -> None:
        stages = []
        for stage in self.state.stages:
            entry: dict[str, Any] = stage.model_dump(mode="json")
            entry["stage"] = stage.number
            entry["model"] = stage.served_name
            if stage.number in summaries:
                entry["evaluation"] = summaries[stage.number].model_dump(mode="json")
            stages.append(entry)
        manifest = {
            "name": self.config.name,
            "base_model": self.config.generator.base_model,
            "trainer_base_model": self.config.trainer.base_model,
            "config": self.config.model_dump(mode="json"),
            "fingerprint": self.config.fingerprint(),
            "versions": package_versions(),
            "judge_check": self.judge_check.brief() if self.judge_check else None,
            "baseline": summaries[0].model_dump(mode="json") if 0 in summaries else None,
            "stages": stages,
            "updated_at": datetime.now(UTC).isoformat(),
        }
        write_json_atomic(self.run_dir / MANIFEST_FILE, manifest)
