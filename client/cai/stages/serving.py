"""The generator fleet of `cai run`: the `url` server and its replicas, kept in step.

Every server must serve each stage's adapter (`_publish`, `_served`), sleep while a trainer
job holds the GPU and wake whatever happens (`_asleep`), still show the previous adapter
changing outputs after a wake-up (`_reprobe_previous`), and serve the latest merged model as
its base (`_ensure_generator_base`: the embedded generator is restarted on it).
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


class GeneratorFleet(StageBookkeeping):
    """The steps that keep every generator server (`self.gens`) serving what the run needs."""

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


async def _serves(gen: GeneratorClient, name: str) -> bool:
    return any(card.id == name for card in await gen.models())


def _same_path(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()
