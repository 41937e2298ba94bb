"""A deterministic, fast, OpenAI-compatible stand-in for vLLM, run in its own process.

    python -m tests.support.stub_generator --port 8123 --models tiny \
        --delay lognormal:0.05:1.0 --delay-scale-tokens 256 --max-in-service 64 \
        --fail-status 500 --fail-first 20

    with StubServer(models=["tiny"], delay="const:0.01") as stub:   # from a test
        stub.base_url; stub.stats(); stub.stop(); stub.start()      # same port again

Endpoints: POST /v1/completions, GET /v1/models, GET /health, GET /version, GET /stats,
POST /stats/reset. What it answers:
- Text is a function of (model, prompt, seed + sample index): the same request always gets
  the same answer, different seeds get different ones. About half the completions go on to
  copy a `### ...` heading line of the prompt, as a base model continuing a few-shot pattern
  does, so stop strings matter; `stop` is honoured as whole strings (the text ends where the
  first one starts; `finish_reason` "stop", `stop_reason` the string). Words are tokens.
- `logprobs=k`: each generated token with k alternatives; the first position's alternatives
  always include ' A' and ' B' (for A/B judges). `echo` prepends the prompt and, with
  `logprobs`, scores its tokens (first one None) with OpenAI-style `text_offset`.
- `usage` counts words.
- Delays: `none`, `const:S`, `lognormal:MEDIAN_S:SIGMA` per request, times
  max_tokens / `--delay-scale-tokens` if given; at most `--max-in-service` requests are
  served at once (a vLLM batch), the rest queue. `/stats` reports the sum of delays.
- Faults: the first `--fail-first` completion requests, or all of them during the first
  `--fail-for-s` seconds, answer `--fail-status` (500 or 429) with vLLM's error body.
It prints `READY <port>` on stdout once it listens: the parent waits for that line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

VOCAB = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "at",
    "by",
    "this",
    "be",
    "are",
    "from",
    "or",
    "an",
    "have",
    "not",
    "they",
    "which",
    "one",
    "you",
    "were",
    "all",
    "we",
    "when",
    "there",
    "can",
    "more",
    "if",
    "out",
    "so",
    "what",
    "about",
    "up",
    "no",
    "time",
    "people",
    "water",
    "answer",
    "question",
    "light",
    "city",
    "river",
    "paper",
    "music",
    "garden",
    "simple",
    "careful",
    "kind",
    "honest",
    "helpful",
    "clear",
    "first",
    "second",
    "because",
    "therefore",
    "however",
    "example:",
    "note:",
    "steps:",
    "list",
    "plan",
    "idea",
    "story",
    "poem",
    "letter",
    "friend",
    "morning",
    "evening",
    "house",
    "school",
    "market",
    "###",
    "rules",
]
_HEADING = re.compile(r"(?m)^### [^\n]*$")
_TOKEN = re.compile(r"\s*\S+|\s+")


def _rng(*parts: object) -> random.Random:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _logprob(*parts: object) -> float:
    return -0.1 - 7.9 * _rng("lp", *parts).random()


def generate(
    model: str, prompt: str, seed: int, max_tokens: int, duplicate_rate: float
) -> tuple[list[str], bool]:
    """The completion's tokens (each a word with its leading space) and whether it hit max_tokens."""
    rng = _rng(model, seed, prompt)
    if duplicate_rate and rng.random() < duplicate_rate:
        words = ["What", "is", "the", "capital", "of", "France?"]
        return [" " + w for w in words][:max_tokens], len(words) >= max_tokens
    length = rng.randint(max(1, max_tokens // 3), max_tokens)
    tokens = [" " + rng.choice(VOCAB) for _ in range(length)]
    headings = _HEADING.findall(prompt)
    if headings and rng.random() < 0.5 and length > 2:
        at = rng.randint(1, length - 1)
        tokens[at] = "\n" + rng.choice(headings)
    return tokens[:max_tokens], length >= max_tokens


def apply_stop(text: str, stop: list[str]) -> tuple[str, str | None]:
    cut, which = len(text), None
    for s in stop:
        position = text.find(s)
        if position != -1 and position < cut:
            cut, which = position, s
    return text[:cut], which


def lognormal_delay(rng: random.Random, median: float, sigma: float, cap: float | None) -> float:
    """One draw of `--delay lognormal:MEDIAN:SIGMA[:CAP]`, before scaling by max_tokens (also
    what bench/streaming_ceiling.py simulates)."""
    base = median * math.exp(sigma * rng.gauss(0.0, 1.0))
    return min(base, cap * median) if cap is not None else base


class Stub:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.models = args.models.split(",")
        self.started = time.monotonic()
        self.delay_rng = random.Random(args.delay_seed)
        self.in_service = asyncio.Semaphore(args.max_in_service) if args.max_in_service else None
        self.reset()

    def reset(self) -> None:
        self.stats: dict[str, Any] = {
            "completion_requests": 0,
            "prompts": 0,
            "completions": 0,
            "failures": 0,
            "sum_delay_s": 0.0,
            "max_in_service": 0,
        }
        self._busy = 0

    def delay(self, max_tokens: int) -> float:
        kind, _, rest = self.args.delay.partition(":")
        if kind == "none":
            return 0.0
        if kind == "const":
            base = float(rest)
        elif kind == "lognormal":
            # lognormal:MEDIAN:SIGMA[:CAP]: CAP bounds a delay at CAP x MEDIAN, as max_tokens
            # bounds a real generation (a server cannot write past it).
            median, sigma, *cap = (float(x) for x in rest.split(":"))
            base = lognormal_delay(self.delay_rng, median, sigma, cap[0] if cap else None)
        else:
            raise SystemExit(f"unknown --delay {self.args.delay!r}")
        if self.args.delay_scale_tokens:
            base *= max_tokens / self.args.delay_scale_tokens
        return base

    def failing(self) -> bool:
        if not self.args.fail_status:
            return False
        if self.stats["completion_requests"] <= self.args.fail_first:
            return True
        return time.monotonic() - self.started < self.args.fail_for_s

    async def completions(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        self.stats["completion_requests"] += 1
        if self.failing():
            self.stats["failures"] += 1
            headers = (
                {"Retry-After": str(self.args.retry_after)} if self.args.fail_status == 429 else {}
            )
            return self.args.fail_status, _error("injected failure", self.args.fail_status), headers
        model = str(body.get("model"))
        if model not in self.models:
            return 404, _error(f"The model `{model}` does not exist.", 404), {}
        prompts = body.get("prompt")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts:
            return 400, _error("prompt must be a non-empty string or list", 400), {}
        max_tokens = int(body.get("max_tokens") or 16)
        wait = self.delay(max_tokens)
        if wait > 0:
            await self._serve(wait)
        n = int(body.get("n") or 1)
        seed = int(body.get("seed") or 0)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        logprobs = body.get("logprobs")
        echo = bool(body.get("echo"))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for p_index, prompt in enumerate(prompts):
            prompt_words = _TOKEN.findall(prompt)
            prompt_tokens += len(prompt_words)
            for j in range(n):
                tokens, hit_limit = generate(
                    model, prompt, seed + j, max_tokens, self.args.duplicate_rate
                )
                text, stop_reason = apply_stop("".join(tokens), stop)
                if stop_reason is None:
                    finish = "length" if hit_limit else "stop"
                    kept = tokens
                else:
                    finish, kept = "stop", _TOKEN.findall(text)
                completion_tokens += len(kept)
                choice: dict[str, Any] = {
                    "index": p_index * n + j,
                    "text": (prompt + text) if echo else text,
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": stop_reason,
                }
                if logprobs is not None:
                    choice["logprobs"] = _logprobs(
                        prompt_words if echo else [], kept, int(logprobs), model, prompt, seed + j
                    )
                choices.append(choice)
        self.stats["prompts"] += len(prompts)
        self.stats["completions"] += len(choices)
        return (
            200,
            {
                "id": f"cmpl-{self.stats['completion_requests']}",
                "object": "text_completion",
                "created": 0,
                "model": model,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
            {},
        )

    async def _serve(self, wait: float) -> None:
        if self.in_service is None:
            await self._sleep(wait)
            return
        async with self.in_service:
            await self._sleep(wait)

    async def _sleep(self, wait: float) -> None:
        self._busy += 1
        self.stats["max_in_service"] = max(self.stats["max_in_service"], self._busy)
        self.stats["sum_delay_s"] += wait
        try:
            await asyncio.sleep(wait)
        finally:
            self._busy -= 1

    async def handle(self, method: str, path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        route = path.split("?", 1)[0]
        if method == "POST" and route == "/v1/completions":
            try:
                data = json.loads(body or b"{}")
            except ValueError:
                return 400, _error("body is not JSON", 400), {}
            return await self.completions(data)
        if method == "GET" and route == "/v1/models":
            cards = [
                {
                    "id": m,
                    "object": "model",
                    "root": m,
                    "parent": None,
                    "max_model_len": 4096,
                    "owned_by": "stub",
                }
                for m in self.models
            ]
            return 200, {"object": "list", "data": cards}, {}
        if method == "GET" and route == "/health":
            return 200, None, {}
        if method == "GET" and route == "/version":
            return 200, {"version": "stub"}, {}
        if method == "GET" and route == "/stats":
            return 200, self.stats, {}
        if method == "POST" and route == "/stats/reset":
            self.reset()
            return 200, self.stats, {}
        return 404, _error(f"no route {method} {route}", 404), {}

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, _, value = line.partition(":")
                        headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                status, payload, extra = await self.handle(method, path, body)
                data = b"" if payload is None else json.dumps(payload).encode()
                out = [
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
                    "content-type: application/json",
                    f"content-length: {len(data)}",
                ]
                out += [f"{k}: {v}" for k, v in extra.items()]
                close = headers.get("connection", "").lower() == "close"
                if close:
                    out.append("connection: close")
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + data)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


def _error(message: str, code: int) -> dict[str, Any]:
    kind = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError"}.get(
        code, "InternalServerError"
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _logprobs(
    prompt_tokens: list[str], tokens: list[str], k: int, model: str, prompt: str, seed: int
) -> dict[str, Any]:
    all_tokens = prompt_tokens + tokens
    token_logprobs: list[float | None] = []
    top: list[dict[str, float] | None] = []
    offsets: list[int] = []
    offset = 0
    for i, token in enumerate(all_tokens):
        offsets.append(offset)
        offset += len(token)
        if i == 0 and prompt_tokens:
            token_logprobs.append(None)
            top.append(None)
            continue
        lp = _logprob(model, prompt, seed, i, token)
        token_logprobs.append(lp)
        alternatives = {token: lp}
        position = i - len(prompt_tokens)
        if position == 0 and k >= 2:
            alternatives[" A"] = _logprob(model, prompt, seed, "A")
            alternatives[" B"] = _logprob(model, prompt, seed, "B")
        rng = _rng(model, prompt, seed, i)
        while len(alternatives) < k + 1:
            alternatives.setdefault(" " + rng.choice(VOCAB), -8.0 - rng.random())
        top.append(alternatives)
    return {
        "tokens": all_tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


async def serve(args: argparse.Namespace) -> None:
    stub = Stub(args)
    server = await asyncio.start_server(
        stub.connection, args.host, args.port, reuse_address=True, backlog=2048
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    async with server:
        await server.serve_forever()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--models", default="tiny", help="comma-separated served names")
    parser.add_argument(
        "--delay", default="none", help="none | const:S | lognormal:MEDIAN_S:SIGMA[:CAP]"
    )
    parser.add_argument("--delay-scale-tokens", type=int, default=0)
    parser.add_argument("--delay-seed", type=int, default=0)
    parser.add_argument("--max-in-service", type=int, default=0, help="0: unlimited")
    parser.add_argument("--fail-status", type=int, default=0)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--fail-for-s", type=float, default=0.0)
    parser.add_argument("--retry-after", type=float, default=0.05)
    parser.add_argument("--duplicate-rate", type=float, default=0.0)
    return parser.parse_args(argv)


class StubServer:
    """Runs the stub in a subprocess; `start()` again after `stop()` reuses the port."""

    def __init__(
        self, *, port: int | None = None, models: list[str] | None = None, **options: Any
    ) -> None:
        self.port = port or _free_port()
        self.models = models or ["tiny"]
        self.options = options
        self.process: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "tests.support.stub_generator",
            "--port",
            str(self.port),
            "--models",
            ",".join(self.models),
        ]
        for key, value in self.options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        return argv

    def start(self) -> StubServer:
        root = Path(__file__).resolve().parents[2]
        self.process = subprocess.Popen(self.argv(), cwd=root, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until it listens (or dies)
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"stub generator did not start: {line!r}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.base_url}/stats").json())

    def reset_stats(self) -> None:
        httpx.post(f"{self.base_url}/stats/reset")

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parse_args()))
