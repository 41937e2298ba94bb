"""What the generator and trainer clients share: one httpx client and its lifetime.

Both send `Authorization: Bearer <key>` when given a key, give a request `timeout` seconds
and connecting at most 10 s of them, retry with `cai.retry.backoff_delay` and can be used as
`async with`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import httpx

Sleep = Callable[[float], Awaitable[None]]
# Connecting gives up after at most this many seconds, whatever the request's timeout.
CONNECT_TIMEOUT_S = 10.0


class BearerHttpClient:
    """Base of GeneratorClient and TrainerClient: `self._http`, the retry settings, `aclose`.

    `max_connections` sizes httpx's pool (keep-alive included); None keeps httpx's defaults.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        backoff: float,
        transport: httpx.AsyncBaseTransport | None,
        sleep: Sleep = asyncio.sleep,
        max_connections: int | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if backoff < 0:
            raise ValueError("backoff must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff = backoff
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        pool: dict[str, Any] = {}
        if max_connections is not None:
            pool["limits"] = httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT_S, timeout)),
            transport=transport,
            **pool,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
