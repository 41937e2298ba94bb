"""Before `cai run` touches its run folder: is every server it will need answering?

A run against a generator or trainer that is not listening used to fail only at its first
request, after the client's retries, and a judge server named only in a stage's pipeline
failed after the baseline had run. `check_services` asks each once (`/health`), so a run
that cannot work says which server and which setting at once, and writes nothing.
"""

from __future__ import annotations

import os

from cai.generator import GeneratorClient
from cai.generator.errors import GeneratorError
from cai.stages.config import RunConfig, stage_pipeline_config
from cai.trainer import TrainerClient
from cai.trainer.errors import TrainerError


class ServicesUnreachable(RuntimeError):
    """A server the run needs does not answer; nothing was written."""


def _first_line(exc: Exception) -> str:
    # What happened, without the client's hint (which names another command's settings).
    return str(exc).split("; ", 1)[0]


def judge_servers(config: RunConfig) -> dict[str, str | None]:
    """Judge servers named in any stage's pipeline (url -> its key variable), beyond the
    generator's own."""
    servers: dict[str, str | None] = {}
    for number in range(1, len(config.stages) + 1):
        pipeline = stage_pipeline_config(config, number, config.generator.base_model)
        for endpoint in pipeline.judge.endpoints:
            servers.setdefault(endpoint.url, endpoint.api_key_env)
    return servers


async def check_services(config: RunConfig, trainer: TrainerClient) -> None:
    """Raise `ServicesUnreachable` naming every server of `config` that does not answer."""
    problems: list[str] = []
    generators: dict[str, str | None] = {
        url: config.generator.api_key_env
        for url in [config.generator.url, *config.generator.replicas]
    }
    where = {url: "generator.url / CAI_GENERATOR_URL" for url in generators}
    where |= {url: "generator.replicas / --replica" for url in config.generator.replicas}
    for url, key_env in judge_servers(config).items():
        if url not in generators:
            generators[url] = key_env
            where[url] = "a stage's pipeline.judge.endpoints"
    for url, key_env in generators.items():
        key = os.environ.get(key_env) if key_env else None
        async with GeneratorClient(url, api_key=key) as client:
            try:
                await client.health()
            except GeneratorError as exc:
                problems.append(f"{_first_line(exc)} (set by {where[url]})")
    try:
        await trainer.health()
    except TrainerError as exc:
        problems.append(f"{_first_line(exc)} (set by trainer.url / CAI_TRAINER_URL)")
    if problems:
        raise ServicesUnreachable(
            "cannot start the run: "
            + " | ".join(problems)
            + ". Start the services (`make serve`) or point the run at ones that are up; "
            "nothing was written"
        )
