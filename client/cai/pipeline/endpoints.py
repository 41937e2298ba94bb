"""One concurrency limit per generator endpoint, least-outstanding choice, retries with backoff.

    pool = EndpointPool([Endpoint(url, client, limit=64), ...])
    caller = RetryingCaller(pool, RetryConfig(), stats)
    result = await caller.complete(prompts, priority=(-2, seq), model="tiny", max_tokens=64)

`acquire` hands out a slot on the endpoint with the fewest requests in flight (relative to
its limit); when every slot is busy the caller waits in a priority queue, so a critique of a
response that exists is sent before the next new response (smaller priority first): records
stream through the steps and finished work is never stuck behind new work.

`RetryingCaller` retries connection errors, timeouts, 429 and 5xx with exponential backoff
(jittered from a seeded generator, off the slot: a waiting retry does not hold a slot) until
`max_attempts` or `max_total_s`; then it raises `RequestFailed` with the last reason, and the
runner writes the record as failed. Other errors (400, 404, ...) fail at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from cai.generator.errors import (
    GeneratorConnectionError,
    GeneratorError,
    GeneratorRateLimited,
    GeneratorServerError,
)
from cai.generator.types import CompletionResult
from cai.pipeline.config import RetryConfig

RETRYABLE = (GeneratorConnectionError, GeneratorRateLimited, GeneratorServerError)
Priority = tuple[int, ...]


class Completer(Protocol):
    """What an endpoint needs: `GeneratorClient.complete` (tests may pass a fake)."""

    async def complete(
        self, prompts: list[str], *, model: str, **params: Any
    ) -> CompletionResult: ...


class RequestFailed(Exception):
    """A request failed for good (retries exhausted, or an error that retrying cannot fix)."""


@dataclass
class Endpoint:
    url: str
    client: Completer
    limit: int
    gpus: float = 1.0
    outstanding: int = 0
    served: int = 0


@dataclass
class CallStats:
    retries: int = 0
    retry_reasons: Counter[str] = field(default_factory=Counter)
    failed: int = 0


class EndpointPool:
    def __init__(self, endpoints: list[Endpoint]) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = endpoints
        self._waiters: list[tuple[Priority, int, asyncio.Future[Endpoint]]] = []
        self._seq = itertools.count()

    @property
    def capacity(self) -> int:
        return sum(e.limit for e in self.endpoints)

    @property
    def in_flight(self) -> int:
        return sum(e.outstanding for e in self.endpoints)

    def _free(self) -> Endpoint | None:
        best: Endpoint | None = None
        for endpoint in self.endpoints:
            if endpoint.outstanding < endpoint.limit and (
                best is None
                or endpoint.outstanding / endpoint.limit < best.outstanding / best.limit
            ):
                best = endpoint
        return best

    async def acquire(self, priority: Priority) -> Endpoint:
        endpoint = self._free() if not self._waiters else None
        if endpoint is not None:
            endpoint.outstanding += 1
            return endpoint
        future: asyncio.Future[Endpoint] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), future))
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result())  # got a slot while being cancelled: give it back
            raise

    def release(self, endpoint: Endpoint) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(endpoint)  # the slot passes straight to the next waiter
                return
        endpoint.outstanding -= 1

    @asynccontextmanager
    async def slot(self, priority: Priority) -> AsyncIterator[Endpoint]:
        endpoint = await self.acquire(priority)
        try:
            yield endpoint
        finally:
            endpoint.served += 1
            self.release(endpoint)


class RetryingCaller:
    def __init__(
        self, pool: EndpointPool, config: RetryConfig, stats: CallStats, *, seed: int = 0
    ) -> None:
        self.pool = pool
        self.config = config
        self.stats = stats
        self._jitter = random.Random(seed)

    async def complete(
        self, prompts: list[str], *, priority: Priority, model: str, **params: Any
    ) -> CompletionResult:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            async with self.pool.slot(priority) as endpoint:
                try:
                    return await endpoint.client.complete(prompts, model=model, **params)
                except RETRYABLE as exc:
                    error: Exception = exc
                except GeneratorError as exc:
                    self.stats.failed += 1
                    raise RequestFailed(f"{type(exc).__name__}: {exc}") from exc
            elapsed = time.monotonic() - started
            if attempt >= self.config.max_attempts or elapsed >= self.config.max_total_s:
                self.stats.failed += 1
                raise RequestFailed(
                    f"gave up after {attempt} attempts in {elapsed:.0f}s: {type(error).__name__}: {error}"
                ) from error
            self.stats.retries += 1
            self.stats.retry_reasons[_reason(error)] += 1
            base = min(
                self.config.initial_backoff_s * 2 ** (attempt - 1), self.config.max_backoff_s
            )
            await asyncio.sleep(base / 2 + self._jitter.uniform(0.0, base / 2))


def _reason(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    return str(status) if status is not None else type(error).__name__
