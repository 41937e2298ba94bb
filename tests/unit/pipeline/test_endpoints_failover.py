"""Several endpoints: the slow one gets fewer requests, a dead one is skipped, then probed.

    .venv/bin/pytest tests/unit/pipeline/test_endpoints_failover.py

The fakes answer after a number of event-loop turns instead of seconds, and the breaker's
clock is a fake one the tests move by hand, so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cai.generator.errors import GeneratorConnectionError, GeneratorServerError
from cai.generator.types import Choice, CompletionResult, Usage
from cai.pipeline.config import RetryConfig
from cai.pipeline.endpoints import CallStats, Endpoint, EndpointPool, RequestFailed, RetryingCaller

NO_WAIT = RetryConfig(initial_backoff_s=0.0, max_backoff_s=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Replica:
    """A fake endpoint client: answers after `turns` loop turns; refuses while `down` and
    its first `refusals` calls."""

    def __init__(self, name: str, *, turns: int = 1, down: bool = False, refusals: int = 0) -> None:
        self.name = name
        self.turns = turns
        self.down = down
        self.refusals = refusals
        self.calls = 0
        self.answered = 0
        self.called = asyncio.Event()
        self.dies = asyncio.Event()  # set: requests in flight fail as the server goes away

    async def complete(self, prompts: list[str], *, model: str, **params: Any) -> CompletionResult:
        self.calls += 1
        self.called.set()
        if self.down or self.calls <= self.refusals:
            raise GeneratorConnectionError(f"cannot connect to {self.name}", url=self.name)
        for _ in range(self.turns):
            if self.dies.is_set():
                self.down = True
                raise GeneratorConnectionError(f"{self.name} reset the connection", url=self.name)
            await asyncio.sleep(0)
        self.answered += 1
        return CompletionResult(
            id="x",
            model=model,
            prompts=prompts,
            choices=[[Choice(text=self.name)] for _ in prompts],
            usage=Usage(),
        )


def _caller(pool: EndpointPool, config: RetryConfig = NO_WAIT) -> tuple[RetryingCaller, CallStats]:
    stats = CallStats()
    return RetryingCaller(pool, config, stats), stats


async def _complete(caller: RetryingCaller) -> str:
    result = await caller.complete(["p"], priority=(0,), model="m")
    return result.texts[0][0]


async def test_a_slow_endpoint_gets_fewer_requests() -> None:
    slow, fast = Replica("slow", turns=40), Replica("fast", turns=2)
    pool = EndpointPool([Endpoint("slow", slow, limit=4), Endpoint("fast", fast, limit=4)])
    caller, _ = _caller(pool)
    await asyncio.gather(*(_complete(caller) for _ in range(200)))
    assert slow.calls + fast.calls == 200
    assert slow.calls * 4 < fast.calls  # 20x slower: far fewer than its even share


async def test_requests_spread_over_equal_endpoints() -> None:
    a, b = Replica("a", turns=3), Replica("b", turns=3)
    pool = EndpointPool([Endpoint("a", a, limit=4), Endpoint("b", b, limit=4)])
    caller, _ = _caller(pool)
    await asyncio.gather(*(_complete(caller) for _ in range(100)))
    assert a.calls > 30 and b.calls > 30


async def test_a_dead_endpoint_costs_one_attempt_and_the_rest_go_to_the_live_one() -> None:
    dead, live = Replica("dead", down=True), Replica("live")
    pool = EndpointPool([Endpoint("dead", dead, limit=4), Endpoint("live", live, limit=4)])
    caller, stats = _caller(pool)
    answers = [await _complete(caller) for _ in range(20)]
    assert answers == ["live"] * 20
    assert dead.calls == 1  # after one refusal the live endpoint wins every tie
    assert stats.retries == 1 and stats.retry_reasons["GeneratorConnectionError"] == 1
    assert stats.failed == 0


async def test_k_connection_failures_in_a_row_trip_the_endpoint() -> None:
    clock = Clock()
    dead, live = Replica("dead", down=True), Replica("live")
    a, b = Endpoint("dead", dead, limit=8), Endpoint("live", live, limit=8)
    pool = EndpointPool([a, b], trip_after=3, cooldown_s=10.0, clock=clock)
    held = [await pool.acquire((0,)) for _ in range(4)]  # load on both: 2 and 2
    assert [e.url for e in held].count("dead") == 2
    for _ in range(2):
        pool.report(a, reachable=False)
    assert a.open_until is None  # two refusals: still in rotation
    pool.report(a, reachable=False)
    assert a.open_until == clock.now + 10.0 and a.trips == 1
    for endpoint in held:
        pool.release(endpoint)
    # Idle and tripped: the loaded live endpoint gets everything while the breaker is open.
    extra = [await pool.acquire((0,)) for _ in range(3)]
    assert {e.url for e in extra} == {"live"}


async def test_answers_with_errors_do_not_trip_the_breaker() -> None:
    class Failing:
        async def complete(self, prompts: list[str], *, model: str, **params: Any) -> Any:
            raise GeneratorServerError("500", url="a", status_code=500, server_message="boom")

    endpoint = Endpoint("a", Failing(), limit=4)
    pool = EndpointPool([endpoint], trip_after=1)
    caller, stats = _caller(pool, RetryConfig(max_attempts=5, initial_backoff_s=0.0))
    with pytest.raises(RequestFailed, match="5 attempts"):
        await _complete(caller)
    assert endpoint.open_until is None and endpoint.trips == 0 and stats.retries == 4


async def test_after_the_cool_down_one_request_probes_and_success_restores_it() -> None:
    clock = Clock()
    dead, live = Replica("dead", down=True), Replica("live")
    a, b = Endpoint("dead", dead, limit=8), Endpoint("live", live, limit=8)
    pool = EndpointPool([a, b], trip_after=1, cooldown_s=10.0, clock=clock)
    pool.report(a, reachable=False)
    assert (await pool.acquire((0,))).url == "live"
    clock.now += 10.0
    probe = await pool.acquire((0,))
    assert probe is a  # half-open: the next request probes it
    others = [await pool.acquire((0,)) for _ in range(3)]
    assert {e.url for e in others} == {"live"}  # one probe at a time
    pool.report(a, reachable=True)
    pool.release(probe)
    assert a.open_until is None and a.failures == 0
    assert (await pool.acquire((0,))).url == "dead"  # back in rotation, least loaded


async def test_a_failed_probe_trips_it_for_another_cool_down() -> None:
    clock = Clock()
    dead, live = Replica("dead", down=True), Replica("live")
    a, b = Endpoint("dead", dead, limit=8), Endpoint("live", live, limit=8)
    pool = EndpointPool([a, b], trip_after=2, cooldown_s=10.0, clock=clock)
    caller, stats = _caller(pool)
    pool.report(a, reachable=False)
    pool.report(a, reachable=False)
    clock.now += 10.0
    assert await _complete(caller) == "live"  # probed the dead one, moved on at once
    assert dead.calls == 1 and stats.retries == 1
    assert a.open_until == clock.now + 10.0 and a.trips == 1
    assert [await _complete(caller) for _ in range(5)] == ["live"] * 5
    assert dead.calls == 1


async def test_a_request_in_flight_on_a_dying_endpoint_is_retried_on_the_live_one() -> None:
    dying, live = Replica("dying", turns=10_000), Replica("live", turns=1)
    pool = EndpointPool([Endpoint("dying", dying, limit=4), Endpoint("live", live, limit=4)])
    caller, stats = _caller(pool)
    first = asyncio.create_task(_complete(caller))  # a tie: it goes to the first endpoint
    await dying.called.wait()
    dying.dies.set()
    assert await first == "live"
    assert dying.calls == 1 and live.answered == 1 and stats.retries == 1


async def test_a_waiter_gets_a_slot_on_the_live_endpoint_not_on_the_tripped_one() -> None:
    dead, live = Replica("dead"), Replica("live")
    a, b = Endpoint("dead", dead, limit=1), Endpoint("live", live, limit=1)
    pool = EndpointPool([a, b], trip_after=1, cooldown_s=60.0)
    on_dead, on_live = await pool.acquire((0,)), await pool.acquire((0,))
    assert (on_dead, on_live) == (a, b)
    waiter = asyncio.create_task(pool.acquire((0,)))
    await asyncio.sleep(0)
    pool.report(a, reachable=False)
    pool.release(on_dead)  # the failed request frees the dead endpoint's slot
    await asyncio.sleep(0)
    assert not waiter.done()
    pool.release(on_live)
    assert await waiter is b


async def test_waiters_are_woken_when_the_cool_down_ends() -> None:
    dead, live = Replica("dead"), Replica("live")
    a, b = Endpoint("dead", dead, limit=1), Endpoint("live", live, limit=1)
    pool = EndpointPool([a, b], trip_after=1, cooldown_s=0.05)
    held = await pool.acquire((0,))
    assert held is a
    pool.report(a, reachable=False)
    pool.release(held)
    busy = await pool.acquire((0,))
    assert busy is b
    # Nothing is released from here on: only the end of the cool-down can serve the waiter.
    assert await asyncio.wait_for(pool.acquire((0,)), timeout=10) is a


async def test_with_every_endpoint_down_requests_still_go_out_and_succeed_when_one_is_back() -> (
    None
):
    clock = Clock()
    first, second = Replica("first", down=True), Replica("second", refusals=5)
    a, b = Endpoint("first", first, limit=2), Endpoint("second", second, limit=2)
    pool = EndpointPool([a, b], trip_after=1, cooldown_s=3600.0, clock=clock)
    caller, stats = _caller(pool, RetryConfig(max_attempts=50, initial_backoff_s=0.0))
    assert await _complete(caller) == "second"  # both tripped at once: the retries went on
    assert second.calls == 6 and first.calls >= 1
    assert stats.failed == 0 and stats.retries == first.calls + 5
    assert a.open_until is not None and a.trips == 1
    assert b.open_until is None and b.trips == 1  # its answer closed the breaker


async def test_with_every_endpoint_down_the_retries_give_up_as_usual() -> None:
    dead = Replica("dead", down=True)
    pool = EndpointPool([Endpoint("dead", dead, limit=2)], trip_after=1)
    caller, stats = _caller(pool, RetryConfig(max_attempts=4, initial_backoff_s=0.0))
    with pytest.raises(RequestFailed, match=r"4 attempts.*GeneratorConnectionError"):
        await _complete(caller)
    assert dead.calls == 4 and stats.failed == 1
