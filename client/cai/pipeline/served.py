"""Before a run writes anything: does every endpoint answer, and serve the configured model?

    served = await served_models(config, {"generator": generator, "judge": judge})

A generator (or judge) none of whose endpoints answers `GET /v1/models` stops the run at
once (`GeneratorUnreachable`), instead of every request failing after its retries and the
folder filling with them; a model no endpoint serves is `ModelNotServed`.
"""

from __future__ import annotations

import logging
from typing import Any

from cai.generator import GeneratorError
from cai.pipeline.config import PipelineConfig
from cai.pipeline.endpoints import RetryingCaller

logger = logging.getLogger(__name__)


class ModelNotServed(ValueError):
    """An endpoint answers but does not serve the configured model or adapter."""


class GeneratorUnreachable(RuntimeError):
    """No endpoint of the generator (or of the judge) answers `GET /v1/models`."""


async def served_models(
    config: PipelineConfig, callers: dict[str, RetryingCaller]
) -> list[dict[str, Any]]:
    """What each endpoint actually serves (for the manifest), asked once per endpoint.

    Refused: a generator (or judge) none of whose endpoints answers, and a model no
    endpoint serves. An endpoint that does not answer while another does is only
    logged: a replica may be restarting, and the pool skips it until it is back.
    """
    seen: list[dict[str, Any]] = []
    wanted = {config.model} | {config.judge_model()}
    served: set[str] = set()
    for role, caller in callers.items():
        problems: list[str] = []
        listed = False  # a client that cannot list (a test double) is taken as answering
        for endpoint in caller.pool.endpoints:
            models = getattr(endpoint.client, "models", None)
            if models is None:
                listed = True
                continue
            try:
                cards = await models()
            except GeneratorError as exc:
                logger.warning("listing the models of %s failed: %s", endpoint.url, exc)
                problems.append(str(exc).split("; ", 1)[0])  # what happened, not the hint
                continue
            listed = True
            for card in cards:
                served.add(card.id)
                if card.id in wanted:
                    seen.append({"endpoint": endpoint.url, **card.model_dump(mode="json")})
        if problems and not listed:
            where = (
                "the config's `judge.endpoints`"
                if role == "judge"
                else ("CAI_GENERATOR_URL or the config's `endpoints`")
            )
            raise GeneratorUnreachable(
                f"the {role} cannot be used: {' | '.join(problems)}. Start it "
                f"(`make serve`) or point the run at one that is up ({where}); "
                "nothing was written"
            )
    if served and not wanted <= served:
        raise ModelNotServed(
            f"no endpoint serves {sorted(wanted - served)} (served: {sorted(served)}); "
            "load the adapter or fix `model` / `judge.model` in the config"
        )
    return seen
