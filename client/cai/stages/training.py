"""The trainer jobs of `cai run`: a stage's DPO job, and the merge of the previous adapter.

A job is submitted with an idempotency key derived from its spec, so a run killed between the
submit and the state save finds the same job again instead of training twice. Its progress
events are appended to the stage's train_events.jsonl (a torn last line is rewritten on
resume); the generators sleep while it holds the GPU (`GeneratorFleet.asleep`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from cai.runfolder import TRAIN_EVENTS_FILE, write_atomic
from cai.stages.bookkeeping import RunError, StageBookkeeping
from cai.stages.config import RunConfig, stage_job_data
from cai.stages.serving import GeneratorFleet
from cai.stages.state import StageState
from protocol.jobs import DpoJobSpec, JobRecord, JobState, MergeJobSpec


def stage_dpo_spec(
    config: RunConfig, number: int, stage: StageState, parent: str | None, base: str
) -> DpoJobSpec:
    """Stage `number`'s DPO job, trained on `base` from `parent` (None: a fresh adapter)."""
    assert stage.train_dataset_id is not None
    fields = stage_job_data(
        config,
        number,
        base_model=base,
        dataset_id=stage.train_dataset_id,
        eval_dataset_id=stage.test_dataset_id,
        parent_adapter=parent,
        output_name="pending",
    )
    spec = DpoJobSpec.model_validate(fields)
    # The name is derived from the spec's content: a resubmit of the same spec names the
    # same adapter (and, with the idempotency key, finds the same job).
    digest = _digest(spec.model_dump(mode="json", exclude={"output_name"}))
    return spec.model_copy(update={"output_name": f"{config.name}-s{number}-{digest[:10]}"})


class TrainerJobs:
    """The steps that run trainer jobs (the fleet asleep meanwhile, re-probed after)."""

    def __init__(self, book: StageBookkeeping, fleet: GeneratorFleet) -> None:
        self.book = book
        self.fleet = fleet

    def merged_base(self, number: int) -> str | None:
        """The trainer's name of the newest merged model among stages 1..number, if any."""
        merged = None
        for stage in self.book.state.stages[:number]:
            if stage.merged_model is not None:
                merged = stage.merged_model
        return merged

    async def merge(self, number: int, stage: StageState, previous: StageState) -> None:
        """Merge stage N-1's adapter into its base (a trainer merge job)."""
        if stage.merged_model is not None:
            return
        if previous.adapter is None:
            raise RunError(f"stage {number}: chain merge needs stage {number - 1}'s adapter")
        book = self.book
        started = time.monotonic()
        spec = MergeJobSpec(adapter=previous.adapter, output_name=f"{previous.adapter}-merged")
        key = f"cai-run/{book.config.name}/stage{number}/merge/{_digest(spec.model_dump())[:16]}"
        job = await book.trainer.submit_job(spec, idempotency_key=key)
        stage.merge_job_id = job.id
        book.save()
        book.reporter.step(number, "merge", f"merge job {job.id}: {previous.adapter} into its base")
        async with self.fleet.asleep(number, "merge"):
            job = await book.trainer.wait_for_job(job.id)
        stage.merged_model = spec.output_name
        book.save()
        book.record_step(number, "merge", started)

    async def train(
        self, number: int, stage: StageState, parent: str | None, trainer_base: str
    ) -> None:
        book = self.book
        started = time.monotonic()
        events_path = book.stage_dir(number) / TRAIN_EVENTS_FILE
        if stage.job_id is None:
            spec = stage_dpo_spec(book.config, number, stage, parent, trainer_base)
            key = f"cai-run/{book.config.name}/stage{number}/dpo/{_digest(spec.model_dump())[:16]}"
            job = await book.trainer.submit_job(spec, idempotency_key=key)
            stage.job_id = job.id
            stage.adapter = spec.output_name
            stage.job_state = job.state
            book.save()
            book.reporter.step(number, "train", f"DPO job {job.id} submitted ({spec.output_name})")
        else:
            book.reporter.step(number, "train", f"following DPO job {stage.job_id}")
        assert stage.job_id is not None

        async with self.fleet.asleep(number, "train") as slept:
            job = await self._follow(number, stage.job_id, events_path)
        stage.job_state = job.state
        book.save()
        if job.state != JobState.succeeded:
            raise RunError(
                f"stage {number}: DPO job {job.id} ended {job.state.value}: {job.error}. "
                f"See `cai trainer jobs show {job.id}`; fix the cause and run `cai run` again "
                "(a failed job is not resubmitted automatically: remove the stage's job_id "
                "from state.json to train again)"
            )
        if slept:
            await self.fleet.reprobe_previous(number)
        train_s = _job_seconds(job)
        book.record_step(number, "train", started, gpu_s=train_s or 0.0)

    async def _follow(self, number: int, job_id: str, events_path: Path) -> JobRecord:
        after = _last_seq(events_path)
        events_path.parent.mkdir(parents=True, exist_ok=True)
        with events_path.open("a", encoding="utf-8") as log:
            async for event in self.book.trainer.events(job_id, after=after):
                if event.seq <= after:
                    continue
                after = event.seq
                if event.type == "progress" and event.progress is not None:
                    row = event.progress.model_dump(mode="json")
                    row["seq"] = event.seq
                    log.write(json.dumps(row, sort_keys=True) + "\n")
                    log.flush()
                self.book.reporter.training(number, event)
        return await self.book.trainer.get_job(job_id)


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _last_seq(path: Path) -> int:
    """The last event seq saved (a torn last line from a kill is ignored and rewritten)."""
    if not path.exists():
        return 0
    last = 0
    good: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            last = int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            break
        if not line.endswith("\n"):
            break
        good.append(line)
    write_atomic(path, "".join(good))
    return last


def _job_seconds(job: JobRecord) -> float | None:
    if job.started_at and job.finished_at:
        return (job.finished_at - job.started_at).total_seconds()
    return None
