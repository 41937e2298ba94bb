"""`cai run`: baseline, then per stage generate → upload → train → publish → evaluate.

    await run_stages(load_run_config("configs/demo.yaml"), reporter=ConsoleReporter())

Run folder (`runs/<name>/`): its layout and file names are in cai.runfolder.

Resume: every step records its outcome in state.json before the next begins. A DPO job is
submitted with an idempotency key derived from its spec, so a run killed between the submit
and the save finds the same job again instead of training twice. The pipeline and the
evaluation resume record by record on their own.

This module is the loop and the steps that call the pipeline and the evaluation. The runner
owns one of each of the other parts, which stand apart: `book`, cai.stages.bookkeeping
(state.json, steps.jsonl, manifest.json, `RunError`); `fleet`, cai.stages.serving (the
generator fleet: publish, sleep, probe, base restart); `jobs`, cai.stages.training (the DPO
and merge jobs); and the reporter, cai.stages.reporter (what a person sees).
"""

from __future__ import annotations

import os
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from cai.evaluation.evaluate import evaluate_stage
from cai.evaluation.judge_check import check_judge, reusable_check
from cai.evaluation.records import EvalSummary, JudgeCheck
from cai.generator import GeneratorClient
from cai.pipeline import PipelineConfig, RunSummary, run_pipeline
from cai.runfolder import step_path
from cai.stages.bookkeeping import RunError, StageBookkeeping
from cai.stages.config import RunConfig, stage_pipeline_config
from cai.stages.preflight import check_services
from cai.stages.reporter import Reporter, SilentReporter
from cai.stages.serving import GeneratorFleet
from cai.stages.state import RunState, StageState
from cai.stages.training import TrainerJobs
from cai.trainer import TrainerClient
from protocol.jobs import JobState


@dataclass
class RunResult:
    run_dir: Path
    baseline: EvalSummary
    stages: list[EvalSummary]
    judge_check: JudgeCheck | None = None


def _env_key(name: str) -> str | None:
    return os.environ.get(name) or None


class StageRunner:
    """The stage loop: judge check, baseline, then each stage's steps in order, each skipped
    when state.json says it is done."""

    def __init__(self, book: StageBookkeeping) -> None:
        # The book holds the run's config, clients, reporter and state; the runner and its
        # parts read them there, so each has one holder.
        self.book = book
        self.fleet = GeneratorFleet(book)
        self.jobs = TrainerJobs(book, self.fleet)

    @property
    def config(self) -> RunConfig:
        return self.book.config

    @property
    def gen(self) -> GeneratorClient:
        return self.book.gen

    @property
    def trainer(self) -> TrainerClient:
        return self.book.trainer

    @property
    def reporter(self) -> Reporter:
        return self.book.reporter

    @property
    def run_dir(self) -> Path:
        return self.book.run_dir

    @property
    def state(self) -> RunState:
        return self.book.state

    def pipeline_config(self, number: int, model: str) -> PipelineConfig:
        return stage_pipeline_config(self.config, number, model)

    async def run(self) -> RunResult:
        for gen in self.book.gens:
            if await gen.is_sleeping():
                # A run killed while its job trained leaves vLLM asleep; nothing else can run.
                self.reporter.step(
                    0, "resume", f"waking the generator {gen.base_url} left asleep by a killed run"
                )
                await gen.wake_up()
        summaries: dict[int, EvalSummary] = {}
        self.book.judge_check = await self.measure_judge()
        summaries[0] = await self.baseline()
        self.book.write_manifest(summaries)
        for number in range(1, len(self.config.stages) + 1):
            summaries[number] = await self.run_stage(number)
            self.book.write_manifest(summaries)
        return RunResult(
            run_dir=self.run_dir,
            baseline=summaries[0],
            stages=[summaries[n] for n in range(1, len(self.config.stages) + 1)],
            judge_check=self.book.judge_check,
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
            self.book.record_step(
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
            self.book.save()
            self.book.record_step(0, "baseline", started)
        return summary

    async def run_stage(self, number: int) -> EvalSummary:
        stage = self.state.stage(number)
        previous = self.state.stages[number - 2] if number > 1 else None
        chain = self.config.stages[number - 1].chain
        generating_model = previous.served_name if previous else self.config.generator.base_model
        assert generating_model is not None
        stage_dir = self.book.stage_dir(number)

        if not stage.generated:
            # Stage N-1's adapter was trained on the latest merged model: vLLM must serve it.
            await self.fleet.ensure_generator_base(self.jobs.merged_base(number - 1))
            await self._generate(number, stage, generating_model, stage_dir)
        if stage.train_dataset_id is None:
            await self._upload(number, stage, stage_dir)

        parent: str | None = None
        if previous is not None and chain == "continue":
            parent = previous.adapter
        elif previous is not None and chain == "merge":
            await self.jobs.merge(number, stage, previous)
        trainer_base = self.jobs.merged_base(number) or self.config.trainer.base_model
        await self.fleet.ensure_generator_base(self.jobs.merged_base(number))

        if stage.job_state != JobState.succeeded:
            await self.jobs.train(number, stage, parent, trainer_base)
        if stage.served_name is None or not await self.fleet.served(stage.served_name):
            await self.fleet.publish_stage(number, stage)
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
        self.book.save()
        tokens = summary.tokens
        self.book.record_step(
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
        self.book.save()
        self.book.record_step(number, "upload", started, gpu_s=0.0)
        self.reporter.step(
            number, "upload", f"train {stage.train_dataset_id}, test {stage.test_dataset_id}"
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
            self.book.save()
            self.book.record_step(number, "evaluate", started)
        return summary


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
        runner = StageRunner(StageBookkeeping(config, gen, trainer, reporter, replicas))
        return await runner.run()


__all__ = ["RunError", "RunResult", "StageRunner", "run_stages"]
