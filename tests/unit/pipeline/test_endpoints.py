"""The endpoint pool: one limit per endpoint, least outstanding first, priority, retries."""

from __future__ import annotations

import asyncio

import pytest

from cai.generator.errors import GeneratorBadRequest, GeneratorServerError
from cai.generator.types import Choice, CompletionResult, Usage
from cai.pipeline.config import RetryConfig
from cai.pipeline.endpoints import CallStats, Endpoint, EndpointPool, RequestFailed, RetryingCaller


class FakeClient:
    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.failures = list(failures or [])
        self.calls = 0

    async def complete(self, prompts, *, model, **params):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return CompletionResult(
            id="x",
            model=model,
            prompts=prompts,
            choices=[[Choice(text="ok")] for _ in prompts],
            usage=Usage(),
        )


def _server_error():
    return GeneratorServerError("500", url="u", status_code=500, server_message="boom")


async def test_least_outstanding_endpoint_is_chosen():
    a, b = Endpoint("a", FakeClient(), limit=2), Endpoint("b", FakeClient(), limit=2)
    pool = EndpointPool([a, b])
    first = await pool.acquire((0,))
    second = await pool.acquire((0,))
    assert {first.url, second.url} == {"a", "b"}


async def test_the_limit_holds_and_waiters_are_served_by_priority():
    endpoint = Endpoint("a", FakeClient(), limit=1)
    pool = EndpointPool([endpoint])
    held = await pool.acquire((0,))
    order = []

    async def wait(priority, name):
        got = await pool.acquire(priority)
        order.append(name)
        pool.release(got)

    tasks = [
        asyncio.create_task(wait((0, 1), "new response")),
        asyncio.create_task(wait((-3, 2), "critique")),
    ]
    await asyncio.sleep(0)
    assert endpoint.outstanding == 1
    pool.release(held)
    await asyncio.gather(*tasks)
    assert order == ["critique", "new response"]
    assert endpoint.outstanding == 0


async def test_retries_server_errors_then_succeeds_and_counts():
    client = FakeClient([_server_error(), _server_error()])
    stats = CallStats()
    caller = RetryingCaller(
        EndpointPool([Endpoint("a", client, 4)]), RetryConfig(initial_backoff_s=0.0), stats
    )
    result = await caller.complete(["p"], priority=(0,), model="m")
    assert result.texts == [["ok"]]
    assert stats.retries == 2 and stats.retry_reasons["500"] == 2 and stats.failed == 0


async def test_gives_up_after_max_attempts_with_the_reason():
    client = FakeClient([_server_error()] * 5)
    stats = CallStats()
    caller = RetryingCaller(
        EndpointPool([Endpoint("a", client, 4)]),
        RetryConfig(max_attempts=3, initial_backoff_s=0.0),
        stats,
    )
    with pytest.raises(RequestFailed, match="3 attempts"):
        await caller.complete(["p"], priority=(0,), model="m")
    assert client.calls == 3 and stats.failed == 1


async def test_a_bad_request_is_not_retried():
    client = FakeClient(
        [GeneratorBadRequest("400", url="u", status_code=400, server_message="too long")]
    )
    caller = RetryingCaller(
        EndpointPool([Endpoint("a", client, 4)]), RetryConfig(initial_backoff_s=0.0), CallStats()
    )
    with pytest.raises(RequestFailed, match=r"too long|400"):
        await caller.complete(["p"], priority=(0,), model="m")
    assert client.calls == 1
