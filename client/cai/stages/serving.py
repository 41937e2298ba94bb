"""The generator fleet of `cai run`: the `url` server and its replicas, kept in step.

Every server must serve each stage's adapter (`publish_stage`, `served`), sleep while a trainer
job holds the GPU and wake whatever happens (`asleep`), still show the previous adapter
changing outputs after a wake-up (`reprobe_previous`), and serve the latest merged model as
its base (`ensure_generator_base`: the embedded generator is restarted on it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from cai.generator import GeneratorClient, adapter_version_name, probe_adapter, publish
from cai.stages.bookkeeping import RunError, StageBookkeeping
from cai.stages.state import StageState
from embedded.launch import restart_generator


class GeneratorFleet:
    """The steps that keep every generator server (`book.gens`) serving what the run needs."""

    def __init__(self, book: StageBookkeeping) -> None:
        self.book = book

    async def served(self, name: str) -> bool:
        """Whether every server (`url` and the replicas) serves `name`."""
        for gen in self.book.gens:
            if not await _serves(gen, name):
                return False
        return True

    async def publish_stage(self, number: int, stage: StageState) -> None:
        assert stage.adapter is not None and stage.job_id is not None
        book = self.book
        started = time.monotonic()
        record = await book.trainer.get_adapter(stage.adapter)
        name = adapter_version_name(number, stage.job_id)
        # A server restarted between publish and the state save has nothing loaded; one that
        # serves the name already got it from this run.
        missing = [gen for gen in book.gens if not await _serves(gen, name)]
        if not missing:
            stage.served_name = name
            book.save()
            return
        for gen in missing:
            published = await publish(
                gen, record.path, name, base_model_name=book.config.generator.base_model
            )
        stage.adapter_path = record.path
        stage.served_name = name
        book.save()
        book.record_step(number, "publish", started, gpu_s=0.0)
        book.reporter.step(
            number,
            "publish",
            f"{name} serving on {len(book.gens)} server(s) (rank {published.rank}, probe max "
            f"|dlogp| {published.probe.max_abs_logprob_diff:.3f}, {published.seconds:.2f}s)",
        )

    @asynccontextmanager
    async def asleep(self, number: int, step: str) -> AsyncIterator[bool]:
        """vLLM (every replica) asleep while a job holds the GPU, awake again whatever happens."""
        book = self.book
        slept: list[GeneratorClient] = []
        try:
            if book.config.sleep_during_training:
                for gen in book.gens:
                    await gen.sleep(level=1)
                    slept.append(gen)
                book.reporter.step(number, step, "generator asleep while the job runs")
            yield bool(slept)
        finally:
            for gen in slept:
                await gen.wake_up()
            if slept:
                book.reporter.step(number, step, "generator awake")

    async def reprobe_previous(self, number: int) -> None:
        """After a wake-up, the adapter that served before must still change outputs."""
        book = self.book
        previous = book.state.stages[number - 2] if number > 1 else None
        if previous is None or previous.served_name is None:
            return
        for gen in book.gens:
            if not await _serves(gen, previous.served_name):
                continue
            probe = await probe_adapter(gen, previous.served_name, book.config.generator.base_model)
            if not probe.differs:
                raise RunError(
                    f"after waking the generator {gen.base_url}, adapter "
                    f"{previous.served_name!r} no longer changes the base's outputs: restart "
                    "the generator and run `cai run` again"
                )

    async def ensure_generator_base(self, merged: str | None) -> None:
        """Make vLLM's base the merged model `merged` (None: the run's own base, unchecked)."""
        if merged is None:
            return
        book = self.book
        generator = book.config.generator
        record = await book.trainer.get_adapter(merged)
        served = {card.id: card for card in await book.gen.models()}
        base = served.get(generator.base_model)
        if base is not None and base.root and _same_path(base.root, record.path):
            return
        if not generator.embedded:
            raise RunError(
                f"the next adapters are trained on merged model {merged!r}, but the generator at "
                f"{generator.url} does not serve it. Restart vLLM on {record.path} "
                f"under the name {generator.base_model!r} (CAI_GENERATOR_MODEL), then "
                "run `cai run` again to continue"
            )
        port = urlsplit(generator.url).port or 8000
        book.reporter.step(0, "merge", f"restarting the embedded generator on {record.path}")
        await asyncio.to_thread(restart_generator, record.path, port)


async def _serves(gen: GeneratorClient, name: str) -> bool:
    return any(card.id == name for card in await gen.models())


def _same_path(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()
