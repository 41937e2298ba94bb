"""GeneratorClient against httpx.MockTransport: request shapes, parsing, retries, typed errors.

.venv/bin/pytest tests/unit/test_generator_client.py
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from cai.cli import app as cli_app
from cai.generator import (
    GeneratorAuthError,
    GeneratorBadRequest,
    GeneratorClient,
    GeneratorConnectionError,
    GeneratorNotFound,
    GeneratorRateLimited,
    GeneratorResponseError,
    GeneratorServerError,
    GeneratorTimeout,
)
from tests.conftest import free_port

BASE = "http://gen.test:8000"

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that answers from a script and keeps every request."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def make_client(
    recorder: Recorder, *, sleeps: Sleeps | None = None, **kwargs: Any
) -> GeneratorClient:
    kwargs.setdefault("max_retries", 3)
    kwargs.setdefault("backoff", 0.1)
    return GeneratorClient(
        BASE,
        transport=httpx.MockTransport(recorder),
        sleep=sleeps or Sleeps(),
        **kwargs,
    )


def vllm_error(
    status: int, message: str, type_: str = "BadRequestError", **headers: str
) -> httpx.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": status}}
    return httpx.Response(status, json=body, headers=headers)


def completion_body(prompts: int, n: int, text: str = "hello") -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "text": f"{text}-{i // n}-{i % n}",
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
        }
        for i in range(prompts * n)
    ]
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": "tiny",
        "choices": list(reversed(choices)),  # order must not matter, `index` does
        "usage": {
            "prompt_tokens": 3 * prompts,
            "completion_tokens": 4 * prompts * n,
            "total_tokens": 0,
        },
    }


OK_COMPLETION = httpx.Response(200, json=completion_body(1, 1))


# ---- requests and parsing -----------------------------------------------------------------


async def test_complete_sends_the_sampling_parameters_and_omits_unset_ones() -> None:
    rec = Recorder(httpx.Response(200, json=completion_body(2, 1)))
    async with make_client(rec) as gen:
        await gen.complete(
            ["a", "b"],
            model="tiny",
            temperature=0.7,
            top_p=0.9,
            max_tokens=12,
            stop=["###END###", "\n\n"],
            logprobs=2,
            seed=7,
            top_k=5,
        )
    body = json.loads(rec.requests[0].content)
    assert rec.requests[0].url == f"{BASE}/v1/completions"
    assert body == {
        "model": "tiny",
        "prompt": ["a", "b"],
        "n": 1,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 12,
        "stop": ["###END###", "\n\n"],
        "logprobs": 2,
        "seed": 7,
        "top_k": 5,
    }


async def test_complete_groups_choices_per_prompt_in_prompt_order() -> None:
    rec = Recorder(httpx.Response(200, json=completion_body(3, 2)))
    async with make_client(rec) as gen:
        result = await gen.complete(["p0", "p1", "p2"], model="tiny", n=2, temperature=1.0)
    assert result.texts == [
        ["hello-0-0", "hello-0-1"],
        ["hello-1-0", "hello-1-1"],
        ["hello-2-0", "hello-2-1"],
    ]
    assert result.prompts == ["p0", "p1", "p2"]
    assert result.usage.prompt_tokens == 9
    assert result.usage.completion_tokens == 24


async def test_complete_parses_stop_reason_and_token_logprobs() -> None:
    body = completion_body(1, 1)
    body["choices"][0].update(
        text="ab",
        finish_reason="stop",
        stop_reason="###END###",
        logprobs={
            "text_offset": [0, 1],
            "tokens": ["a", "b"],
            "token_logprobs": [-1.5, -0.25],
            "top_logprobs": [{"a": -1.5, "x": -1.0}, {"b": -0.25, "y": -2.0}],
        },
    )
    async with make_client(Recorder(httpx.Response(200, json=body))) as gen:
        choice = (await gen.complete(["p"], model="tiny", logprobs=1)).choices[0][0]
    assert choice.finish_reason == "stop"
    assert choice.stop_reason == "###END###"
    assert choice.token_logprobs == [-1.5, -0.25]
    assert choice.logprobs is not None
    assert choice.logprobs.top_logprobs[0] == {"a": -1.5, "x": -1.0}


async def test_prompt_logprobs_pick_the_actual_prompt_token_by_id() -> None:
    body = completion_body(1, 1)
    body["choices"][0].update(
        prompt_token_ids=[42, 458],
        # vLLM keys entries by token id: the prompt's own token plus the top-k alternatives.
        prompt_logprobs=[
            None,
            {
                "37": {"logprob": -1.0, "rank": 1, "decoded_token": "C"},
                "458": {"logprob": -6.5, "rank": 401, "decoded_token": "ell"},
            },
        ],
    )
    rec = Recorder(httpx.Response(200, json=body))
    async with make_client(rec) as gen:
        choice = (await gen.complete(["Hell"], model="tiny", prompt_logprobs=1)).choices[0][0]
    sent = json.loads(rec.requests[0].content)
    assert sent["prompt_logprobs"] == 1
    assert sent["return_token_ids"] is True
    assert choice.prompt_logprobs is not None
    first, second = choice.prompt_logprobs
    assert first is None
    assert second is not None
    assert (second.token_id, second.token, second.logprob) == (458, "ell", -6.5)
    assert second.top == {"C": -1.0}


async def test_a_body_that_is_not_a_completion_raises_a_response_error() -> None:
    async with make_client(Recorder(httpx.Response(200, json={"choices": "?"}))) as gen:
        with pytest.raises(GeneratorResponseError, match="/v1/completions"):
            await gen.complete(["p"], model="tiny")


async def test_models_lists_base_and_adapters_with_parent() -> None:
    body = {
        "object": "list",
        "data": [
            {"id": "tiny", "root": "/m/tiny", "parent": None, "max_model_len": 2048},
            {"id": "stage1-j1", "root": "/a/j1", "parent": "tiny", "max_model_len": None},
        ],
    }
    async with make_client(Recorder(httpx.Response(200, json=body))) as gen:
        cards = await gen.models()
    assert [(c.id, c.parent, c.root) for c in cards] == [
        ("tiny", None, "/m/tiny"),
        ("stage1-j1", "tiny", "/a/j1"),
    ]


async def test_adapter_and_sleep_endpoints_send_vllms_request_shapes() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/is_sleeping":
            return httpx.Response(200, json={"is_sleeping": True})
        return httpx.Response(200, text="Success")

    rec = Recorder(answer)
    async with make_client(rec) as gen:
        await gen.load_adapter("stage1-j1", "/a/j1")
        await gen.unload_adapter("stage1-j1")
        await gen.sleep(level=2)
        assert await gen.is_sleeping() is True
        await gen.wake_up()
    sent = [(r.method, r.url.path, r.url.query.decode(), r.content) for r in rec.requests]
    assert sent == [
        ("POST", "/v1/load_lora_adapter", "", b'{"lora_name":"stage1-j1","lora_path":"/a/j1"}'),
        ("POST", "/v1/unload_lora_adapter", "", b'{"lora_name":"stage1-j1"}'),
        ("POST", "/sleep", "level=2", b""),
        ("GET", "/is_sleeping", "", b""),
        ("POST", "/wake_up", "", b""),
    ]


async def test_max_lora_rank_is_read_from_server_info_or_unknown() -> None:
    info = {"vllm_config": {"lora_config": {"max_lora_rank": 16, "max_loras": 4}}}
    async with make_client(Recorder(httpx.Response(200, json=info))) as gen:
        assert await gen.max_lora_rank() == 16
    async with make_client(Recorder(vllm_error(404, "Not Found", "Not Found"))) as gen:
        assert await gen.max_lora_rank() is None


# ---- auth ---------------------------------------------------------------------------------


async def test_api_key_is_sent_as_bearer_token() -> None:
    rec = Recorder(OK_COMPLETION)
    async with make_client(rec, api_key="s3cret") as gen:
        await gen.complete(["p"], model="tiny")
    assert rec.requests[0].headers["Authorization"] == "Bearer s3cret"


async def test_no_authorization_header_without_a_key() -> None:
    rec = Recorder(OK_COMPLETION)
    async with make_client(rec) as gen:
        await gen.complete(["p"], model="tiny")
    assert "Authorization" not in rec.requests[0].headers


async def test_401_raises_auth_error_naming_the_fix_without_retrying() -> None:
    rec = Recorder(httpx.Response(401, json={"error": "Unauthorized"}))
    async with make_client(rec) as gen:
        with pytest.raises(GeneratorAuthError, match=r"Unauthorized.*API key") as info:
            await gen.models()
    assert info.value.server_message == "Unauthorized"
    assert len(rec.requests) == 1


# ---- retries ------------------------------------------------------------------------------


async def test_503_is_retried_until_success() -> None:
    rec = Recorder(
        vllm_error(503, "busy", "ServiceUnavailableError"),
        vllm_error(503, "busy", "ServiceUnavailableError"),
        OK_COMPLETION,
    )
    sleeps = Sleeps()
    async with make_client(rec, sleeps=sleeps) as gen:
        result = await gen.complete(["p"], model="tiny")
    assert result.texts == [["hello-0-0"]]
    assert len(rec.requests) == 3
    assert len(sleeps.delays) == 2


async def test_429_waits_as_long_as_retry_after_says() -> None:
    rec = Recorder(
        vllm_error(429, "slow down", "TooManyRequests", **{"Retry-After": "3"}), OK_COMPLETION
    )
    sleeps = Sleeps()
    async with make_client(rec, sleeps=sleeps) as gen:
        await gen.complete(["p"], model="tiny")
    assert sleeps.delays == [3.0]
    assert len(rec.requests) == 2


async def test_connection_errors_are_retried_until_success() -> None:
    rec = Recorder(httpx.ConnectError("refused"), httpx.RemoteProtocolError("reset"), OK_COMPLETION)
    async with make_client(rec) as gen:
        result = await gen.complete(["p"], model="tiny")
    assert result.texts == [["hello-0-0"]]
    assert len(rec.requests) == 3


async def test_backoff_doubles_with_jitter() -> None:
    rec = Recorder(vllm_error(502, "bad gateway", "Bad Gateway"))
    sleeps = Sleeps()
    async with make_client(rec, sleeps=sleeps, max_retries=4, backoff=1.0) as gen:
        with pytest.raises(GeneratorServerError):
            await gen.models()
    # Equal jitter: each wait lies in [base/2, base] for base = 1, 2, 4, 8.
    assert len(sleeps.delays) == 4
    for delay, base in zip(sleeps.delays, [1.0, 2.0, 4.0, 8.0], strict=True):
        assert base / 2 <= delay <= base


async def test_persistent_5xx_raises_the_last_error_with_the_servers_message() -> None:
    rec = Recorder(vllm_error(500, "engine died", "InternalServerError"))
    async with make_client(rec, max_retries=2) as gen:
        with pytest.raises(GeneratorServerError, match="engine died") as info:
            await gen.complete(["p"], model="tiny")
    assert info.value.status_code == 500
    assert info.value.error_type == "InternalServerError"
    assert len(rec.requests) == 3


async def test_persistent_429_raises_rate_limited() -> None:
    rec = Recorder(vllm_error(429, "queue full", "TooManyRequests"))
    async with make_client(rec, max_retries=1) as gen:
        with pytest.raises(GeneratorRateLimited, match="queue full"):
            await gen.models()
    assert len(rec.requests) == 2


async def test_400_is_not_retried_and_carries_the_servers_message() -> None:
    message = "n must be 1 when using greedy sampling, got 2."
    rec = Recorder(vllm_error(400, message))
    sleeps = Sleeps()
    async with make_client(rec, sleeps=sleeps) as gen:
        with pytest.raises(GeneratorBadRequest) as info:
            await gen.complete(["p"], model="tiny", n=2, temperature=0.0)
    assert info.value.server_message == message
    assert message in str(info.value)
    assert info.value.status_code == 400
    assert len(rec.requests) == 1
    assert sleeps.delays == []


async def test_unknown_model_raises_not_found_with_the_servers_message() -> None:
    message = "The model `nope` does not exist. Valid aliases: tiny."
    rec = Recorder(vllm_error(404, message, "NotFoundError"))
    async with make_client(rec) as gen:
        with pytest.raises(GeneratorNotFound, match="`nope` does not exist"):
            await gen.complete(["p"], model="nope")
    assert len(rec.requests) == 1


async def test_a_refused_adapter_load_is_not_retried() -> None:
    # vLLM reports an unloadable adapter (rank too high, bad modules) as a 500.
    message = "LoRA rank 32 is greater than max_lora_rank 16."
    rec = Recorder(vllm_error(500, message, "InternalServerError"))
    async with make_client(rec) as gen:
        with pytest.raises(GeneratorServerError, match="max_lora_rank 16"):
            await gen.load_adapter("x", "/a/x")
    assert len(rec.requests) == 1


async def test_health_is_not_retried() -> None:
    rec = Recorder(httpx.ConnectError("refused"))
    async with make_client(rec) as gen:
        with pytest.raises(GeneratorConnectionError):
            await gen.health()
    assert len(rec.requests) == 1


async def test_a_timeout_raises_generator_timeout_naming_the_url() -> None:
    rec = Recorder(httpx.ReadTimeout("slow"))
    async with make_client(rec, max_retries=1) as gen:
        with pytest.raises(GeneratorTimeout, match=BASE):
            await gen.complete(["p"], model="tiny")
    assert len(rec.requests) == 2


async def test_an_unreachable_generator_raises_an_error_naming_its_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with GeneratorClient(url, max_retries=1, backoff=0.0) as gen:
        with pytest.raises(GeneratorConnectionError, match=url) as info:
            await gen.complete(["p"], model="tiny")
    assert info.value.url == f"{url}/v1/completions"


# ---- concurrency --------------------------------------------------------------------------


async def test_one_client_serves_many_concurrent_calls() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        prompt = json.loads(request.content)["prompt"][0]
        return httpx.Response(200, json=completion_body(1, 1, text=prompt))

    async with make_client(Recorder(answer)) as gen:
        results = await asyncio.gather(*(gen.complete([f"p{i}"], model="tiny") for i in range(300)))
    assert [r.texts[0][0] for r in results] == [f"p{i}-0-0" for i in range(300)]


# ---- CLI ----------------------------------------------------------------------------------


def test_cli_health_of_an_unreachable_generator_exits_1_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli_app, ["generator", "health", "--base-url", url])
    assert result.exit_code == 1
    assert url in result.output
