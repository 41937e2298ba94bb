"""A lean HTTP/1.1 keep-alive transport for httpx, for hundreds of concurrent small requests.

    client = GeneratorClient(url, transport=KeepAliveTransport(max_connections=72))

httpx's default pool (httpcore) scans every connection for every queued request, which at
64+ requests in flight costs more CPU than the requests themselves (the pipeline must
sustain over 1,000 completions/s on two cores). This transport keeps a plain stack of idle
asyncio connections per host and does nothing else: HTTP/1.1, Content-Length or chunked
bodies, no TLS proxying tricks (https works through `ssl`), no HTTP/2. Failures are raised
as httpx's own exceptions, so `GeneratorClient` maps and retries them as usual.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

import httpx

_HEAD_LIMIT = 64 * 1024


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False


@dataclass
class _Host:
    idle: list[_Connection] = field(default_factory=list)
    slots: asyncio.Semaphore | None = None


class KeepAliveTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int = 256) -> None:
        self.max_connections = max_connections
        self._hosts: dict[tuple[str, str, int], _Host] = {}
        self._ssl: ssl.SSLContext | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.host, port)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(slots=asyncio.Semaphore(self.max_connections))
        timeouts = request.extensions.get("timeout", {})
        total = timeouts.get("read") or None
        body = (
            request.content
            if isinstance(request.stream, httpx.ByteStream)
            else await request.aread()
        )
        head = _head(request, len(body))
        assert host.slots is not None
        async with host.slots:
            for attempt in range(2):
                connection = host.idle.pop() if host.idle else None
                if connection is None:
                    connection = await self._connect(key, timeouts.get("connect"))
                try:
                    async with asyncio.timeout(total):
                        connection.writer.write(head + body)
                        status, headers, content, keep = await _read_response(connection.reader)
                except TimeoutError as exc:
                    connection.writer.close()
                    raise httpx.ReadTimeout(
                        f"no answer from {url.host}:{port} in {total}s", request=request
                    ) from exc
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    connection.writer.close()
                    if connection.reused and attempt == 0:
                        continue  # the server closed an idle keep-alive connection: redo once
                    raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc
                if keep:
                    connection.reused = True
                    host.idle.append(connection)
                else:
                    connection.writer.close()
                return httpx.Response(status, headers=headers, content=content, request=request)
        raise httpx.ReadError("unreachable", request=request)

    async def _connect(self, key: tuple[str, str, int], connect_s: float | None) -> _Connection:
        scheme, hostname, port = key
        context = None
        if scheme == "https":
            self._ssl = self._ssl or ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(connect_s):
                reader, writer = await asyncio.open_connection(
                    hostname, port, ssl=context, limit=_HEAD_LIMIT * 16
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {hostname}:{port} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {hostname}:{port}: {exc}") from exc
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        for host in self._hosts.values():
            for connection in host.idle:
                connection.writer.close()
            host.idle.clear()


def _head(request: httpx.Request, length: int) -> bytes:
    target = request.url.raw_path.decode("ascii")
    lines = [f"{request.method} {target} HTTP/1.1"]
    seen = set()
    for name, value in request.headers.multi_items():
        lower = name.lower()
        if lower in ("content-length", "transfer-encoding", "connection"):
            continue
        seen.add(lower)
        lines.append(f"{name}: {value}")
    if "host" not in seen:
        lines.append(f"Host: {request.url.netloc.decode('ascii')}")
    if length or request.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_response(
    reader: asyncio.StreamReader,
) -> tuple[int, list[tuple[str, str]], bytes, bool]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    version, status_text = lines[0].split(" ", 2)[:2]
    headers = []
    length: int | None = None
    chunked = False
    keep = version == "HTTP/1.1"
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        value = value.strip()
        lower = name.strip().lower()
        if lower == "content-length":
            length = int(value)
        elif lower == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
            continue  # the body handed to httpx is already de-chunked
        elif lower == "connection":
            keep = value.lower() == "keep-alive" or (keep and value.lower() != "close")
        headers.append((name.strip(), value))
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        content = b"".join(parts)
    elif length is not None:
        content = await reader.readexactly(length)
    else:
        content = await reader.read()  # until close
        keep = False
    return int(status_text), headers, content, keep
