"""A real trainer service for integration tests: `python -m services.trainer` in its own
process on a free port, with its own data dir, over real HTTP.

    def test_x(start_trainer):
        trainer = start_trainer(fake_bodies=True)    # stand-in bodies (tests/unit/trainer)
        trainer.client().get("/health")
        trainer.kill(); trainer.restart()             # SIGKILL, then start on the same data

`fake_bodies=False` runs the real DPO and merge bodies.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from embedded.launch import start_service, stop_process, trainer_spec
from tests.conftest import free_port

FAKE = "tests.unit.trainer.fake_bodies:run"


@dataclass
class TrainerService:
    data_dir: Path
    log_path: Path
    env: dict[str, str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    api_key: str | None = None
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TrainerService:
        self.port = free_port()
        spec = trainer_spec(self.port, self.data_dir, **self.env)
        self.proc = start_service(spec, self.log_path)
        return self

    def client(self, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self._clients.append(client)
        return client

    def kill(self) -> None:
        """SIGKILL the service process (not its job children: they must die by themselves)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.proc is not None:
            stop_process(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
            self.proc = None

    def restart(self) -> TrainerService:
        self.stop()
        return self.start()

    def integrity(self) -> str:
        with contextlib.closing(sqlite3.connect(self.data_dir / "trainer.db")) as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


@contextlib.contextmanager
def trainer_factory(tmp_path: Path, tiny_model: Path) -> Iterator[Callable[..., TrainerService]]:
    """`start(body, api_key=None, **settings)` starts a trainer on a free port with its own data
    dir, running `body` (`module:function`) for every job kind, or the real bodies if None.
    Every trainer started is stopped on exit."""
    services: list[TrainerService] = []

    def start(body: str | None, api_key: str | None = None, **env: Any) -> TrainerService:
        values = {
            "CAI_TRAINER_MODEL_ROOTS": str(tiny_model.parent),
            "CAI_TRAINER_DEVICE": "cpu",
            "CAI_TRAINER_CANCEL_GRACE_S": "2",
        }
        if body is not None:
            values["CAI_TRAINER_JOB_BODIES"] = json.dumps({"dpo": body, "merge": body})
        if api_key:
            values["CAI_TRAINER_API_KEY"] = api_key
        values |= {f"CAI_TRAINER_{k.upper()}": str(v) for k, v in env.items()}
        service = TrainerService(
            data_dir=tmp_path / f"trainer-{len(services)}",
            log_path=tmp_path / f"trainer-{len(services)}.log",
            env=values,
            api_key=api_key,
        )
        services.append(service)
        return service.start()

    try:
        yield start
    finally:
        for service in services:
            service.stop()


@pytest.fixture
def start_trainer(tmp_path: Path, tiny_model: Path) -> Iterator[Callable[..., TrainerService]]:
    with trainer_factory(tmp_path, tiny_model) as start:

        def start_fake_or_real(
            fake_bodies: bool = True, api_key: str | None = None, **env: Any
        ) -> TrainerService:
            return start(FAKE if fake_bodies else None, api_key, **env)

        yield start_fake_or_real


def wait_until(check: Callable[[], Any], timeout_s: float = 60.0, what: str = "") -> Any:
    """Poll `check` until it returns something truthy (a readiness poll, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check}")


def job_state(client: httpx.Client, job_id: str) -> str:
    return str(client.get(f"/v1/jobs/{job_id}").json()["state"])


def wait_state(
    client: httpx.Client, job_id: str, *states: str, timeout_s: float = 60.0
) -> dict[str, Any]:
    wait_until(lambda: job_state(client, job_id) in states, timeout_s, f"{job_id} in {states}")
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job


def pid_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status
