"""`cai run`: baseline, then per stage generate → upload → train → publish → evaluate.

    await run_stages(load_run_config("configs/demo.yaml"), reporter=ConsoleReporter())

Run folder (`runs/<name>/`): its layout and file names are in cai.runfolder.

Resume: every step records its outcome in state.json before the next begins. A DPO job is
submitted with an idempotency key derived from its spec, so a run killed between the submit
and the save finds the same job again instead of training twice. The pipeline and the
evaluation resume record by record on their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from cai.evaluation.evaluate import evaluate_stage
from cai.evaluation.judge_check import check_judge, reusable_check
from cai.evaluation.records import EvalSummary, JudgeCheck
from cai.generator import GeneratorClient, adapter_version_name, probe_adapter, publish
from cai.pipeline import PipelineConfig, RunSummary, run_pipeline
from cai.pipeline.manifest import package_versions
from cai.pipeline.runner import ProgressSink
from cai.runfolder import (
    MANIFEST_FILE,
    STEPS_FILE,
    TRAIN_EVENTS_FILE,
    stage_folder,
    step_path,
    write_atomic,
    write_json_atomic,
)
from cai.stages.config import RunConfig, stage_job_data, stage_pipeline_config
from cai.stages.preflight import check_services
from cai.stages.state import RunState, StageState, load_state, save_state
from cai.trainer import TrainerClient
from embedded.launch import restart_generator
from protocol.jobs import DpoJobSpec, JobEvent, JobRecord, JobState, MergeJobSpec

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    """The run cannot go on; the message says what happened and what to do."""


class Reporter(Protocol):
    """What `cai run` shows a person. The CLI draws it with rich; tests record it."""

    def step(self, stage: int, step: str, message: str) -> None: ...

    def pipeline_progress(self, stage: int) -> ProgressSink | None: ...

    def training(self, stage: int, event: JobEvent) -> None: ...


class SilentReporter:
    def step(self, stage: int, step: str, message: str) -> None:
        logger.info("stage %d %s: %s", stage, step, message)

    def pipeline_progress(self, stage: int) -> ProgressSink | None:
        return None

    def training(self, stage: int, event: JobEvent) -> None:
        return None


@dataclass
class RunResult:
    run_dir: Path
    baseline: EvalSummary
    stages: list[EvalSummary]
    judge_check: JudgeCheck | None = None


def _env_key(name: str) -> str | None:
    return os.environ.get(name) or None


class StageRunner:
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

    # ---- state and bookkeeping ----------------------------------------------------------

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

    def _save(self) -> None:
        save_state(self.run_dir, self.state)

    def _stage_dir(self, number: int) -> Path:
        return stage_folder(self.run_dir, number)

    def _record_step(self, stage: int, step: str, started: float, **extra: Any) -> None:
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

    def _write_manifest(self, summaries: dict[int, EvalSummary]) -> None:
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

    # ---- configs of the parts -----------------------------------------------------------

    def pipeline_config(self, number: int, model: str) -> PipelineConfig:
        return stage_pipeline_config(self.config, number, model)

    def dpo_spec(self, number: int, stage: StageState, parent: str | None, base: str) -> DpoJobSpec:
        assert stage.train_dataset_id is not None
        fields = stage_job_data(
            self.config,
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
        return spec.model_copy(
            update={"output_name": f"{self.config.name}-s{number}-{digest[:10]}"}
        )

    # ---- the run ------------------------------------------------------------------------

    async def run(self) -> RunResult:
        for gen in self.gens:
            if await gen.is_sleeping():
                # A run killed while its job trained leaves vLLM asleep; nothing else can run.
                self.reporter.step(
                    0, "resume", f"waking the generator {gen.base_url} left asleep by a killed run"
                )
                await gen.wake_up()
        summaries: dict[int, EvalSummary] = {}
        self.judge_check = await self.measure_judge()
        summaries[0] = await self.baseline()
        self._write_manifest(summaries)
        for number in range(1, len(self.config.stages) + 1):
            summaries[number] = await self.run_stage(number)
            self._write_manifest(summaries)
        return RunResult(
            run_dir=self.run_dir,
            baseline=summaries[0],
            stages=[summaries[n] for n in range(1, len(self.config.stages) + 1)],
            judge_check=self.judge_check,
        )

    async def measure_judge(self) -> JudgeCheck | None:
        """The evaluation's judge measured on hand-checkable cases (none: no judge runs).

        The evaluation's judge (the generator at `url`; `judge.model`, else the base: also the
        model judging stage 1's pairs), asked as the pipeline asks it; judge_check.json is
        reused on resume.
        """
        if not self.config.evaluation.judge:
            return None
        started = time.monotonic()
        base = self.config.generator.base_model
        pipeline = self.pipeline_config(1, base)
        model = pipeline.judge.model or base
        cached = reusable_check(self.run_dir, model=model, pipeline=pipeline)
        if cached is None:
            self.reporter.step(0, "judge check", f"asking {model} about hand-checkable cases")
        check = cached or await check_judge(
            self.gen.complete, model=model, pipeline=pipeline, run_dir=self.run_dir
        )
        if cached is None:
            self._record_step(
                0,
                "judge check",
                started,
                prompt_tokens=check.prompt_tokens,
                completion_tokens=check.completion_tokens,
            )
        self.reporter.step(0, "judge check", ("cached: " if cached else "") + check.verdict)
        return check

    async def baseline(self) -> EvalSummary:
        started = time.monotonic()
        base = self.config.generator.base_model
        already = self.state.baseline_done
        self.reporter.step(0, "baseline", "cached" if already else f"evaluating {base}")
        summary = await evaluate_stage(
            self.gen,
            self.run_dir,
            stage=0,
            model=base,
            base_model=base,
            pipeline=self.pipeline_config(1, base),
            settings=self.config.evaluation,
        )
        if not already:
            self.state.baseline_done = True
            self._save()
            self._record_step(0, "baseline", started)
        return summary

    async def run_stage(self, number: int) -> EvalSummary:
        stage = self.state.stage(number)
        previous = self.state.stages[number - 2] if number > 1 else None
        chain = self.config.stages[number - 1].chain
        generating_model = previous.served_name if previous else self.config.generator.base_model
        assert generating_model is not None
        stage_dir = self._stage_dir(number)

        if not stage.generated:
            # Stage N-1's adapter was trained on the latest merged model: vLLM must serve it.
            await self._ensure_generator_base(self._merged_base(number - 1))
            await self._generate(number, stage, generating_model, stage_dir)
        if stage.train_dataset_id is None:
            await self._upload(number, stage, stage_dir)

        parent: str | None = None
        if previous is not None and chain == "continue":
            parent = previous.adapter
        elif previous is not None and chain == "merge":
            await self._merge(number, stage, previous)
        trainer_base = self._merged_base(number) or self.config.trainer.base_model
        await self._ensure_generator_base(self._merged_base(number))

        if stage.job_state != JobState.succeeded:
            await self._train(number, stage, parent, trainer_base)
        if stage.served_name is None or not await self._served(stage.served_name):
            await self._publish(number, stage, trainer_base)
        summary = await self._evaluate(number, stage, stage_dir)
        return summary

    async def _generate(
        self, number: int, stage: StageState, model: str, stage_dir: Path
    ) -> RunSummary:
        started = time.monotonic()
        self.reporter.step(number, "generate", f"pairs from {model} into {stage_dir}")
        config = self.pipeline_config(number, model)
        summary = await run_pipeline(
            config, stage_dir, progress=self.reporter.pipeline_progress(number)
        )
        if summary.status != "complete":
            raise RunError(
                f"stage {number}: the pipeline ended {summary.status}: {summary.status_reason}"
            )
        if summary.train_rows == 0:
            raise RunError(
                f"stage {number}: the pipeline produced no training pairs (funnel "
                f"{summary.funnel}, skip reasons {summary.skip_reasons}); see "
                f"{stage_dir}/pairs.jsonl and raise the instruction counts"
            )
        stage.generating_model = model
        stage.generated = True
        stage.train_pairs = summary.train_rows
        stage.test_pairs = summary.test_rows
        self._save()
        tokens = summary.tokens
        self._record_step(
            number,
            "generate",
            started,
            gpu_s=summary.gpu_s,
            prompt_tokens=sum(t.prompt_tokens for t in tokens.values()),
            completion_tokens=sum(t.completion_tokens for t in tokens.values()),
        )
        self.reporter.step(
            number, "generate", f"{summary.train_rows} train / {summary.test_rows} test pairs"
        )
        return summary

    async def _upload(self, number: int, stage: StageState, stage_dir: Path) -> None:
        started = time.monotonic()
        train = await self.trainer.upload_dataset(
            step_path(stage_dir, "train"), name=f"{self.config.name}-s{number}-train"
        )
        stage.train_dataset_id = train.id
        test_path = step_path(stage_dir, "test")
        if test_path.exists() and test_path.stat().st_size > 0:
            test = await self.trainer.upload_dataset(
                test_path, name=f"{self.config.name}-s{number}-test"
            )
            stage.test_dataset_id = test.id
        self._save()
        self._record_step(number, "upload", started, gpu_s=0.0)
        self.reporter.step(
            number, "upload", f"train {stage.train_dataset_id}, test {stage.test_dataset_id}"
        )

    def _merged_base(self, number: int) -> str | None:
        """The trainer's name of the newest merged model among stages 1..number, if any."""
        merged = None
        for stage in self.state.stages[:number]:
            if stage.merged_model is not None:
                merged = stage.merged_model
        return merged

    async def _merge(self, number: int, stage: StageState, previous: StageState) -> None:
        """Merge stage N-1's adapter into its base (a trainer merge job)."""
        if stage.merged_model is not None:
            return
        if previous.adapter is None:
            raise RunError(f"stage {number}: chain merge needs stage {number - 1}'s adapter")
        started = time.monotonic()
        spec = MergeJobSpec(adapter=previous.adapter, output_name=f"{previous.adapter}-merged")
        key = f"cai-run/{self.config.name}/stage{number}/merge/{_digest(spec.model_dump())[:16]}"
        job = await self.trainer.submit_job(spec, idempotency_key=key)
        stage.merge_job_id = job.id
        self._save()
        self.reporter.step(number, "merge", f"merge job {job.id}: {previous.adapter} into its base")
        async with self._asleep(number, "merge"):
            job = await self.trainer.wait_for_job(job.id)
        stage.merged_model = spec.output_name
        self._save()
        self._record_step(number, "merge", started)

    async def _ensure_generator_base(self, merged: str | None) -> None:
        """Make vLLM's base the merged model `merged` (None: the run's own base, unchecked)."""
        if merged is None:
            return
        record = await self.trainer.get_adapter(merged)
        served = {card.id: card for card in await self.gen.models()}
        base = served.get(self.config.generator.base_model)
        if base is not None and base.root and _same_path(base.root, record.path):
            return
        if not self.config.generator.embedded:
            raise RunError(
                f"the next adapters are trained on merged model {merged!r}, but the generator at "
                f"{self.config.generator.url} does not serve it. Restart vLLM on {record.path} "
                f"under the name {self.config.generator.base_model!r} (CAI_GENERATOR_MODEL), then "
                "run `cai run` again to continue"
            )
        port = urlsplit(self.config.generator.url).port or 8000
        self.reporter.step(0, "merge", f"restarting the embedded generator on {record.path}")
        await asyncio.to_thread(restart_generator, record.path, port)

    @asynccontextmanager
    async def _asleep(self, number: int, step: str) -> AsyncIterator[bool]:
        """vLLM (every replica) asleep while a job holds the GPU, awake again whatever happens."""
        slept: list[GeneratorClient] = []
        try:
            if self.config.sleep_during_training:
                for gen in self.gens:
                    await gen.sleep(level=1)
                    slept.append(gen)
                self.reporter.step(number, step, "generator asleep while the job runs")
            yield bool(slept)
        finally:
            for gen in slept:
                await gen.wake_up()
            if slept:
                self.reporter.step(number, step, "generator awake")

    async def _train(
        self, number: int, stage: StageState, parent: str | None, trainer_base: str
    ) -> None:
        started = time.monotonic()
        events_path = self._stage_dir(number) / TRAIN_EVENTS_FILE
        if stage.job_id is None:
            spec = self.dpo_spec(number, stage, parent, trainer_base)
            key = f"cai-run/{self.config.name}/stage{number}/dpo/{_digest(spec.model_dump())[:16]}"
            job = await self.trainer.submit_job(spec, idempotency_key=key)
            stage.job_id = job.id
            stage.adapter = spec.output_name
            stage.job_state = job.state
            self._save()
            self.reporter.step(number, "train", f"DPO job {job.id} submitted ({spec.output_name})")
        else:
            self.reporter.step(number, "train", f"following DPO job {stage.job_id}")
        assert stage.job_id is not None

        async with self._asleep(number, "train") as slept:
            job = await self._follow(number, stage.job_id, events_path)
        stage.job_state = job.state
        self._save()
        if job.state != JobState.succeeded:
            raise RunError(
                f"stage {number}: DPO job {job.id} ended {job.state.value}: {job.error}. "
                f"See `cai trainer jobs show {job.id}`; fix the cause and run `cai run` again "
                "(a failed job is not resubmitted automatically: remove the stage's job_id "
                "from state.json to train again)"
            )
        if slept:
            await self._reprobe_previous(number)
        train_s = _job_seconds(job)
        self._record_step(number, "train", started, gpu_s=train_s or 0.0)

    async def _follow(self, number: int, job_id: str, events_path: Path) -> JobRecord:
        after = _last_seq(events_path)
        events_path.parent.mkdir(parents=True, exist_ok=True)
        with events_path.open("a", encoding="utf-8") as log:
            async for event in self.trainer.events(job_id, after=after):
                if event.seq <= after:
                    continue
                after = event.seq
                if event.type == "progress" and event.progress is not None:
                    row = event.progress.model_dump(mode="json")
                    row["seq"] = event.seq
                    log.write(json.dumps(row, sort_keys=True) + "\n")
                    log.flush()
                self.reporter.training(number, event)
        return await self.trainer.get_job(job_id)

    async def _reprobe_previous(self, number: int) -> None:
        """After a wake-up, the adapter that served before must still change outputs."""
        previous = self.state.stages[number - 2] if number > 1 else None
        if previous is None or previous.served_name is None:
            return
        for gen in self.gens:
            if not await _serves(gen, previous.served_name):
                continue
            probe = await probe_adapter(gen, previous.served_name, self.config.generator.base_model)
            if not probe.differs:
                raise RunError(
                    f"after waking the generator {gen.base_url}, adapter "
                    f"{previous.served_name!r} no longer changes the base's outputs: restart "
                    "the generator and run `cai run` again"
                )

    async def _served(self, name: str) -> bool:
        """Whether every server (`url` and the replicas) serves `name`."""
        for gen in self.gens:
            if not await _serves(gen, name):
                return False
        return True

    async def _publish(self, number: int, stage: StageState, trainer_base: str) -> None:
        assert stage.adapter is not None and stage.job_id is not None
        started = time.monotonic()
        record = await self.trainer.get_adapter(stage.adapter)
        name = adapter_version_name(number, stage.job_id)
        # A server restarted between publish and the state save has nothing loaded; one that
        # serves the name already got it from this run.
        missing = [gen for gen in self.gens if not await _serves(gen, name)]
        if not missing:
            stage.served_name = name
            self._save()
            return
        for gen in missing:
            published = await publish(
                gen, record.path, name, base_model_name=self.config.generator.base_model
            )
        stage.adapter_path = record.path
        stage.served_name = name
        self._save()
        self._record_step(number, "publish", started, gpu_s=0.0)
        self.reporter.step(
            number,
            "publish",
            f"{name} serving on {len(self.gens)} server(s) (rank {published.rank}, probe max "
            f"|dlogp| {published.probe.max_abs_logprob_diff:.3f}, {published.seconds:.2f}s)",
        )

    async def _evaluate(self, number: int, stage: StageState, stage_dir: Path) -> EvalSummary:
        assert stage.served_name is not None
        started = time.monotonic()
        self.reporter.step(number, "evaluate", f"{stage.served_name} on the held-out set")
        test_pairs = step_path(stage_dir, "test")
        reference = self.config.generator.base_model
        previous = self.state.stages[number - 2] if number > 1 else None
        if (
            self.config.pair_accuracy_reference == "training"
            and previous is not None
            and self.config.stages[number - 1].chain == "continue"
            and previous.served_name is not None
        ):
            reference = previous.served_name
        summary = await evaluate_stage(
            self.gen,
            self.run_dir,
            stage=number,
            model=stage.served_name,
            base_model=self.config.generator.base_model,
            pipeline=self.pipeline_config(number, stage.served_name),
            test_pairs=test_pairs if test_pairs.exists() else None,
            settings=self.config.evaluation,
            reference_model=reference,
        )
        if not stage.evaluated:
            stage.evaluated = True
            self._save()
            self._record_step(number, "evaluate", started)
        return summary


async def _serves(gen: GeneratorClient, name: str) -> bool:
    return any(card.id == name for card in await gen.models())


def _same_path(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


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


async def run_stages(config: RunConfig, reporter: Reporter | None = None) -> RunResult:
    """Run (or resume) every stage of `config`."""
    reporter = reporter or SilentReporter()
    key = _env_key(config.generator.api_key_env)
    async with (
        GeneratorClient(config.generator.url, api_key=key) as gen,
        TrainerClient(config.trainer.url, api_key=_env_key(config.trainer.api_key_env)) as trainer,
        AsyncExitStack() as stack,
    ):
        await check_services(config, trainer)  # before the run folder is touched
        replicas = [
            await stack.enter_async_context(GeneratorClient(url, api_key=key))
            for url in config.generator.replicas
        ]
        runner = StageRunner(config, gen, trainer, reporter, replicas)
        return await runner.run()
