"""The pipeline's lean HTTP transport, against the stub generator in its own process."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cai.generator import GeneratorClient, GeneratorConnectionError, GeneratorServerError
from cai.pipeline.transport import KeepAliveTransport
from tests.support.stub_generator import StubServer


async def test_many_concurrent_completions_reuse_few_connections():
    with StubServer(models=["tiny"]) as stub:
        transport = KeepAliveTransport(max_connections=8)
        async with GeneratorClient(stub.base_url, max_retries=0, transport=transport) as client:
            results = await asyncio.gather(
                *(
                    client.complete([f"prompt {i}"], model="tiny", max_tokens=8, seed=i)
                    for i in range(200)
                )
            )
            models = await client.models()
        assert all(r.choices[0][0].text for r in results)
        assert len({r.choices[0][0].text for r in results}) > 150
        assert [m.id for m in models] == ["tiny"]
        assert sum(len(h.idle) for h in transport._hosts.values()) <= 8


async def test_error_statuses_reach_the_client_as_typed_errors():
    with StubServer(models=["tiny"], fail_status=500, fail_first=1) as stub:
        async with GeneratorClient(
            stub.base_url, max_retries=0, transport=KeepAliveTransport()
        ) as client:
            with pytest.raises(GeneratorServerError, match="injected failure"):
                await client.complete(["x"], model="tiny", max_tokens=4)
            assert (await client.complete(["x"], model="tiny", max_tokens=4)).texts


async def test_a_server_restart_between_requests_is_survived():
    stub = StubServer(models=["tiny"]).start()
    try:
        async with GeneratorClient(
            stub.base_url, max_retries=0, transport=KeepAliveTransport()
        ) as client:
            first = await client.complete(["x"], model="tiny", max_tokens=4, seed=1)
            stub.stop()
            with pytest.raises(GeneratorConnectionError):
                await client.complete(["x"], model="tiny", max_tokens=4, seed=1)
            stub.start()  # same port: the idle connection is stale, a fresh one is made
            again = await client.complete(["x"], model="tiny", max_tokens=4, seed=1)
        assert again.texts == first.texts
    finally:
        stub.stop()


async def test_stop_strings_are_honoured_whole_by_the_stub():
    with StubServer(models=["tiny"]) as stub:
        async with httpx.AsyncClient(
            base_url=stub.base_url, transport=KeepAliveTransport()
        ) as http:
            prompt = "### Instruction:\nSay hi\n\n### Response:\n"
            stops = ["\n### Instruction:", "\n### Response:"]
            for seed in range(40):
                body = {
                    "model": "tiny",
                    "prompt": [prompt],
                    "max_tokens": 30,
                    "seed": seed,
                    "stop": stops,
                }
                choice = (await http.post("/v1/completions", json=body)).json()["choices"][0]
                assert all(s not in choice["text"] for s in stops)
                if choice["stop_reason"] is not None:
                    assert choice["stop_reason"] in stops and choice["finish_reason"] == "stop"
