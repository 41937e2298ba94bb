"""Async client for the generator: vLLM's OpenAI-compatible server plus its LoRA and sleep endpoints.

    async with GeneratorClient("http://127.0.0.1:8000") as gen:
        result = await gen.complete(["Q: 2+2?\\nA:"], model="tiny", max_tokens=16, stop=["\\n"])
        print(result.texts[0][0], result.usage.completion_tokens)

One client is meant to be shared by many concurrent callers (the pipeline runs hundreds of
requests at once under its own limit): it holds one connection pool and no per-call state.
Connection errors, 429 and 5xx are retried with exponential backoff and jitter (a
`Retry-After` header wins); other 4xx are raised at once as typed errors carrying vLLM's
message (see `cai.generator.errors`).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import Any

import httpx
from pydantic import ValidationError

from cai.generator.errors import (
    GeneratorConnectionError,
    GeneratorError,
    GeneratorResponseError,
    GeneratorStatusError,
    GeneratorTimeout,
    status_error_class,
)
from cai.generator.types import (
    CompletionRequest,
    CompletionResponse,
    CompletionResult,
    ErrorBody,
    ModelCard,
    ModelList,
    Tokenization,
)
from cai.http import BearerHttpClient, Sleep
from cai.retry import backoff_delay

logger = logging.getLogger(__name__)

# Statuses worth another try: the server (or a proxy in front of it) is overloaded,
# restarting or briefly failing. Other 4xx are the caller's mistake and fail at once.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class GeneratorClient(BearerHttpClient):
    """Typed async client of one generator endpoint.

    Args:
        base_url: e.g. `http://127.0.0.1:8000` (no `/v1`).
        api_key: sent as `Authorization: Bearer <key>` when given (vLLM's `--api-key`).
        timeout: seconds for a whole request (a long completion batch needs minutes);
            connecting gives up after at most 10 s.
        max_retries: extra attempts after the first on connection errors, 429 and 5xx.
        backoff: first wait in seconds; doubles each retry (capped at 30 s), with jitter.
        max_connections: size of the connection pool; keep it above the caller's concurrency.
        transport: an `httpx.AsyncBaseTransport` (tests pass `httpx.MockTransport`).
        sleep: what waits between retries (tests pass a recorder).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_connections: int = 512,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            transport=transport,
            sleep=sleep,
            max_connections=max_connections,
        )

    # ---- completions -------------------------------------------------------------------

    async def complete(
        self,
        prompts: list[str],
        *,
        model: str,
        n: int = 1,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        stop: list[str] | None = None,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        echo: bool | None = None,
        seed: int | None = None,
        logit_bias: dict[str, float] | None = None,
        **extra: Any,
    ) -> CompletionResult:
        """Complete every prompt `n` times; `result.choices[i]` belongs to `prompts[i]`.

        `stop` strings are matched on the text, so multi-token strings end generation
        exactly where they start and are not part of the text (`choice.stop_reason` names
        the one that matched). `logprobs=k` returns each generated token's log-prob plus
        the top k; `prompt_logprobs=k` (vLLM) or `echo=True` with `logprobs` scores the
        prompt's own tokens (`max_tokens=0` with `echo=True` scores without generating).
        `max_tokens=None` leaves vLLM's default of 16. Further vLLM sampling parameters
        (`top_k`, `min_p`, `repetition_penalty`, ...) go through `extra`.
        """
        request = CompletionRequest(
            model=model,
            prompt=list(prompts),
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            stop=stop,
            logprobs=logprobs,
            echo=echo,
            prompt_logprobs=prompt_logprobs,
            # Token ids let the client tell the actual prompt token from its alternatives.
            return_token_ids=True if prompt_logprobs is not None else None,
            seed=seed,
            logit_bias=logit_bias,
            extra=extra,
        )
        data = await self._json("POST", "/v1/completions", json=request.body())
        try:
            response = CompletionResponse.model_validate(data)
            return CompletionResult.from_response(response, request.prompt, n)
        except (ValidationError, ValueError) as exc:
            raise GeneratorResponseError(
                f"unexpected /v1/completions answer from {self.base_url}: {exc}"
            ) from exc

    async def tokenize(
        self, text: str, *, model: str, add_special_tokens: bool = False
    ) -> list[int]:
        """The served tokenizer's ids for `text` (vLLM's /tokenize): count tokens, build
        `logit_bias`, check that a stop string spans several tokens."""
        result = await self.tokenization(text, model=model, add_special_tokens=add_special_tokens)
        return result.tokens

    async def tokenization(
        self, text: str, *, model: str, add_special_tokens: bool = False
    ) -> Tokenization:
        """vLLM's whole /tokenize answer for `text`: the ids and the served context length."""
        data = await self._json(
            "POST",
            "/tokenize",
            json={"model": model, "prompt": text, "add_special_tokens": add_special_tokens},
        )
        try:
            return Tokenization.model_validate(data)
        except ValidationError as exc:
            raise GeneratorResponseError(
                f"unexpected /tokenize answer from {self.base_url}: {data!r}"[:300]
            ) from exc

    # ---- models and adapters -----------------------------------------------------------

    async def models(self) -> list[ModelCard]:
        """What the server serves: the base model (parent None) and every loaded adapter."""
        data = await self._json("GET", "/v1/models")
        try:
            return ModelList.model_validate(data).data
        except ValidationError as exc:
            raise GeneratorResponseError(
                f"unexpected /v1/models answer from {self.base_url}: {exc}"
            ) from exc

    async def load_adapter(self, name: str, path: str) -> None:
        """Load the PEFT adapter folder `path` (as the server sees it) under `name`.

        vLLM reports an adapter it cannot load (bad path, rank too high, wrong modules) as a
        500 with the reason; that is deterministic, so it is raised, not retried.
        """
        await self._request(
            "POST",
            "/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": path},
            retry_statuses=RETRY_STATUSES - {500},
        )

    async def unload_adapter(self, name: str) -> None:
        await self._request(
            "POST",
            "/v1/unload_lora_adapter",
            json={"lora_name": name},
            retry_statuses=RETRY_STATUSES - {500},
        )

    async def max_lora_rank(self) -> int | None:
        """The server's --max-lora-rank, from /server_info (vLLM dev mode); None if unknown."""
        try:
            data = await self._json(
                "GET", "/server_info", params={"config_format": "json"}, retries=False
            )
        except GeneratorStatusError as exc:
            if exc.status_code in (404, 405):
                return None
            raise
        try:
            lora = data["vllm_config"]["lora_config"]
        except (KeyError, TypeError):
            return None
        if not isinstance(lora, dict):
            return None  # LoRA disabled: load_adapter will say so
        rank = lora.get("max_lora_rank")
        return int(rank) if isinstance(rank, int) else None

    # ---- sleep mode and health ---------------------------------------------------------

    async def sleep(self, level: int = 1) -> None:
        """Free the GPU for training: level 1 keeps weights in CPU memory, level 2 drops them.

        While asleep, completions wait until `wake_up` (on CPU vLLM pauses but frees nothing).
        """
        if level not in (1, 2):
            raise ValueError("sleep level is 1 (offload weights) or 2 (discard weights)")
        await self._request("POST", "/sleep", params={"level": level})

    async def wake_up(self) -> None:
        await self._request("POST", "/wake_up")

    async def is_sleeping(self) -> bool:
        data = await self._json("GET", "/is_sleeping")
        if not isinstance(data, dict) or "is_sleeping" not in data:
            raise GeneratorResponseError(
                f"unexpected /is_sleeping answer from {self.base_url}: {data!r}"
            )
        return bool(data["is_sleeping"])

    async def health(self) -> None:
        """Return if the server is healthy; raise a `GeneratorError` (naming the URL) if not.

        Not retried: a health check answers about now.
        """
        await self._request("GET", "/health", retries=False)

    # ---- transport ---------------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        retries: bool = True,
    ) -> Any:
        response = await self._request(method, path, json=json, params=params, retries=retries)
        try:
            return response.json()
        except ValueError as exc:
            raise GeneratorResponseError(
                f"{method} {self.base_url}{path} answered {response.status_code} with a body "
                f"that is not JSON: {response.text[:200]!r}"
            ) from exc

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        retries: bool = True,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
    ) -> httpx.Response:
        url = f"{self.base_url}{path}"
        attempts = 1 + (self.max_retries if retries else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._http.request(method, path, json=json, params=params)
            except httpx.TimeoutException as exc:
                error: GeneratorError = GeneratorTimeout(
                    f"generator at {self.base_url} did not answer {method} {path} in time "
                    f"({type(exc).__name__}); is it overloaded or asleep? "
                    "Raise the client timeout for long batches.",
                    url=url,
                )
                error.__cause__ = exc
                retry_after = None
            except httpx.TransportError as exc:
                error = GeneratorConnectionError(
                    f"cannot reach the generator at {self.base_url} ({method} {path}: "
                    f"{type(exc).__name__}: {exc}); is it running? Start it with `make serve` "
                    "or give the right URL (CAI_GENERATOR_URL).",
                    url=url,
                )
                error.__cause__ = exc
                retry_after = None
            else:
                if response.is_success:
                    return response
                error = _status_error(response, method, url)
                if response.status_code not in retry_statuses:
                    raise error
                retry_after = _retry_after(response)
            if last:
                raise error
            delay = self._delay(attempt, retry_after)
            logger.warning(
                "%s %s failed (%s); retry %d/%d in %.2fs",
                method,
                url,
                error,
                attempt + 1,
                attempts - 1,
                delay,
            )
            await self._sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        return backoff_delay(self.backoff, attempt, retry_after)


def _status_error(response: httpx.Response, method: str, url: str) -> GeneratorStatusError:
    server_message, error_type, body = _server_message(response)
    cls = status_error_class(response.status_code)
    hint = ""
    if response.status_code in (401, 403):
        # The variable, not a flag: `cai generator`, `cai generate` and `cai run` all read it.
        hint = " (pass the generator's API key: set CAI_GENERATOR_API_KEY)"
    message = f"{method} {url} failed with {response.status_code}: {server_message}{hint}"
    return cls(
        message,
        url=url,
        status_code=response.status_code,
        server_message=server_message,
        error_type=error_type,
        body=body,
    )


def _server_message(response: httpx.Response) -> tuple[str, str | None, Any]:
    """vLLM's `{"error": {"message", "type"}}`, the auth middleware's `{"error": "..."}`,
    FastAPI's `{"detail": ...}`, or the raw text."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return (text[:500] or response.reason_phrase or "no message"), None, text
    try:
        info = ErrorBody.model_validate(body).error
        return info.message, info.type, body
    except ValidationError:
        pass
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if key in body:
                value = body[key]
                return (value if isinstance(value, str) else str(value)), None, body
    return str(body)[:500], None, body


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


__all__ = ["RETRY_STATUSES", "GeneratorClient"]
