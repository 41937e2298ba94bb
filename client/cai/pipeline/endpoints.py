"""Endpoints (vLLM replicas): least-outstanding choice, a circuit breaker, retries with backoff.

    pool = EndpointPool([Endpoint(url, client, limit=64), ...], trip_after=3, cooldown_s=5.0)
    caller = RetryingCaller(pool, RetryConfig(), stats)
    result = await caller.complete(prompts, priority=(-2, seq), model="tiny", max_tokens=64)

`acquire` hands out a slot on the endpoint with the fewest requests in flight (relative to
its limit): a slow replica keeps its slots longer and so gets fewer requests. When every slot
is busy the caller waits in a priority queue, so a critique of a response that exists is
sent before the next new response (smaller priority first): records stream through the
steps and finished work is never stuck behind new work.

Circuit breaker, per endpoint: `trip_after` connection failures in a row (refused, reset,
timed out; a 429 or 5xx is an answer and resets the count) trip it. A tripped endpoint gets
no requests for `cooldown_s` while another endpoint is reachable; then it is half-open: one
request probes it (when none is in flight there); success puts it back in rotation, failure
trips it for another `cooldown_s`. When every endpoint is tripped the breaker steps aside and
requests go out as before, so a single generator's outage is ridden out by the retries alone.

`RetryingCaller` retries connection errors, timeouts, 429 and 5xx until `max_attempts` or
`max_total_s`, then raises `RequestFailed` with the last reason, and the runner writes the
record as failed. Other errors (400, 404, ...) fail at once. A connection error while another
endpoint is reachable is retried there at once (a request in flight on a replica that dies
moves to a live one); otherwise the retry waits an exponential backoff, jittered from a
seeded generator, off the slot (a waiting retry does not hold a slot).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
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
from cai.retry import backoff_delay

logger = logging.getLogger(__name__)

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
    failures: int = 0  # connection failures in a row
    open_until: float | None = None  # tripped: skipped until then, half-open after
    trips: int = 0


@dataclass
class CallStats:
    retries: int = 0
    retry_reasons: Counter[str] = field(default_factory=Counter)
    failed: int = 0


class EndpointPool:
    def __init__(
        self,
        endpoints: list[Endpoint],
        *,
        trip_after: int = 3,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.endpoints = endpoints
        self.trip_after = trip_after
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._waiters: list[tuple[Priority, int, asyncio.Future[Endpoint]]] = []
        self._seq = itertools.count()

    @classmethod
    def from_config(cls, endpoints: list[Endpoint], retry: RetryConfig) -> EndpointPool:
        return cls(endpoints, trip_after=retry.trip_after, cooldown_s=retry.cooldown_s)

    @property
    def capacity(self) -> int:
        return sum(e.limit for e in self.endpoints)

    @property
    def in_flight(self) -> int:
        return sum(e.outstanding for e in self.endpoints)

    # ---- circuit breaker ----------------------------------------------------------------

    def _usable(self, endpoint: Endpoint, now: float) -> bool:
        """Closed, or half-open with nothing in flight (the next request is its probe)."""
        if endpoint.open_until is None:
            return True
        return now >= endpoint.open_until and endpoint.outstanding == 0

    def can_fail_over(self, failed: Endpoint) -> bool:
        """Whether another endpoint would take a retry now (capacity aside)."""
        now = self._clock()
        return any(e is not failed and self._usable(e, now) for e in self.endpoints)

    def report(self, endpoint: Endpoint, *, reachable: bool) -> None:
        """Record a request's outcome: the server answered (any status), or could not be reached."""
        if reachable:
            endpoint.failures = 0
            if endpoint.open_until is not None:
                endpoint.open_until = None
                logger.info("endpoint %s answers again: back in rotation", endpoint.url)
                self._dispatch()
            return
        endpoint.failures += 1
        now = self._clock()
        if endpoint.open_until is None:
            if endpoint.failures < self.trip_after:
                return
            endpoint.trips += 1
            logger.warning(
                "endpoint %s unreachable %d times in a row: skipped for %.1fs while another "
                "answers",
                endpoint.url,
                endpoint.failures,
                self.cooldown_s,
            )
        elif now < endpoint.open_until:
            return  # a request sent before it tripped (or while every endpoint was down)
        else:
            logger.info(
                "probe of %s failed: skipped for another %.1fs", endpoint.url, self.cooldown_s
            )
        endpoint.open_until = now + self.cooldown_s
        # Nothing else wakes waiters when the cool-down ends on an idle pool.
        asyncio.get_running_loop().call_later(self.cooldown_s, self._dispatch)

    # ---- slots --------------------------------------------------------------------------

    def _free(self) -> Endpoint | None:
        """The endpoint the next request goes to, or None when every usable one is full.

        Order: a half-open endpoint first (its probe), then the least outstanding relative
        to its limit, then the fewest failures in a row (a retry moves off the endpoint
        that just refused it, before that one has tripped).
        """
        now = self._clock()
        # Every endpoint tripped: the breaker steps aside and the retries' backoff paces.
        candidates = [e for e in self.endpoints if self._usable(e, now)] or self.endpoints
        best: Endpoint | None = None
        best_key: tuple[bool, float, int] | None = None
        for endpoint in candidates:
            if endpoint.outstanding >= endpoint.limit:
                continue
            key = (
                endpoint.open_until is None,
                endpoint.outstanding / endpoint.limit,
                endpoint.failures,
            )
            if best_key is None or key < best_key:
                best, best_key = endpoint, key
        return best

    def _dispatch(self) -> None:
        """Hand free slots to waiters, smallest priority first."""
        while self._waiters:
            endpoint = self._free()
            if endpoint is None:
                return
            _, _, future = heapq.heappop(self._waiters)
            if future.done():
                continue  # cancelled while waiting
            endpoint.outstanding += 1
            future.set_result(endpoint)

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
        # The freed slot is not passed on as it is: the next waiter gets the best endpoint
        # now, which is not this one if it has just tripped.
        endpoint.outstanding -= 1
        self._dispatch()

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
                    result = await endpoint.client.complete(prompts, model=model, **params)
                except GeneratorConnectionError as exc:
                    self.pool.report(endpoint, reachable=False)
                    error: Exception = exc
                except RETRYABLE as exc:
                    self.pool.report(endpoint, reachable=True)
                    error = exc
                except GeneratorError as exc:
                    self.pool.report(endpoint, reachable=True)
                    self.stats.failed += 1
                    raise RequestFailed(f"{type(exc).__name__}: {exc}") from exc
                else:
                    self.pool.report(endpoint, reachable=True)
                    return result
            elapsed = time.monotonic() - started
            if attempt >= self.config.max_attempts or elapsed >= self.config.max_total_s:
                self.stats.failed += 1
                raise RequestFailed(
                    f"gave up after {attempt} attempts in {elapsed:.0f}s: {type(error).__name__}: {error}"
                ) from error
            self.stats.retries += 1
            self.stats.retry_reasons[_reason(error)] += 1
            if isinstance(error, GeneratorConnectionError) and self.pool.can_fail_over(endpoint):
                continue  # another endpoint is reachable: no reason to wait
            await asyncio.sleep(
                backoff_delay(
                    self.config.initial_backoff_s,
                    attempt - 1,
                    cap=self.config.max_backoff_s,
                    rng=self._jitter,
                )
            )


def _reason(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    return str(status) if status is not None else type(error).__name__
