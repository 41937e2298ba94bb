"""The runner's side of one job's child process (`python -m services.trainer.child`): its
environment, starting it in a session of its own, the signals that reach it and its helpers,
and the event pipe it reports on, one JSON object a line:

    {"type": "progress", "progress": {...}}   stored as the job's progress and an event
    {"type": "log", "message": "..."}         stored as a log event
    {"type": "result", "result": {...}}       what the job produced (metrics, config)
    {"type": "error", "message": "..."}       why the job failed, in words a person can act on
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from protocol.jobs import JobProgress
from services.trainer.compile_cache import compile_cache_env
from services.trainer.core.config import TrainerSettings
from services.trainer.store import Store

logger = logging.getLogger(__name__)

SOURCE_ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.5


def child_env(settings: TrainerSettings, device: str, slot: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAI_TRAINER_API_KEY")}
    # Bodies named in `job_bodies` may live outside the installed packages (tests/).
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH", "")) if p
    )
    if not settings.allow_hub_models:
        env["HF_HUB_OFFLINE"] = "1"  # base models come from the model roots only
    env["PYTHONUNBUFFERED"] = "1"
    # The next job reuses this one's compiled kernels; an operator's own setting wins.
    for name, value in compile_cache_env(settings.compile_cache_dir).items():
        env.setdefault(name, value)
    if device == "cuda" and settings.workers > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(slot)
    return env


def start_child(
    job_dir: Path, log_path: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the child on `job_dir` (its child.json written), output appended to the job's
    log; returns the process and the read end of its event pipe."""
    read_fd, write_fd = os.pipe()
    try:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "services.trainer.child", str(job_dir)),
                    *("--events-fd", str(write_fd)),
                ],
                cwd=job_dir / "work",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return proc, read_fd


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The child leads its own process group: the signal reaches its helpers too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def describe_exit(returncode: int, error: str | None, log_path: Path) -> str:
    """A reason a person can act on, from what the child said and how it ended."""
    if error:
        return error
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory, or killed by hand)" if name == "SIGKILL" else ""
        return f"the job's process was killed by {name}{hint}; see {log_path}"
    if returncode == 0:
        return f"the job's process exited without a result; see {log_path}"
    return f"the job's process exited with code {returncode}; see {log_path}"


def follow(
    store: Store, job_id: str, proc: subprocess.Popen[bytes], read_fd: int
) -> tuple[dict[str, Any] | None, str | None]:
    """Store the child's events until it exits; (its result, its error). A grandchild may
    hold the pipe open after the child died, so the loop ends on the child's exit, not on
    EOF. Closes `read_fd`."""
    result: dict[str, Any] | None = None
    error: str | None = None
    buffer = b""
    os.set_blocking(read_fd, False)
    with selectors.DefaultSelector() as selector:
        selector.register(read_fd, selectors.EVENT_READ)
        eof = False
        while True:
            exited = proc.poll() is not None
            if not eof and (exited or selector.select(POLL_S)):
                while True:
                    try:
                        chunk = os.read(read_fd, 1 << 16)
                    except BlockingIOError:
                        break
                    if not chunk:
                        eof = True
                        break
                    buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    kind, value = _handle(store, job_id, line)
                    if kind == "result":
                        result = value
                    elif kind == "error":
                        error = value
            if exited or eof:
                if eof and not exited:
                    proc.wait()
                break
    os.close(read_fd)
    return result, error


def _handle(store: Store, job_id: str, line: bytes) -> tuple[str, Any]:
    try:
        message = json.loads(line)
        kind = message["type"]
    except (ValueError, KeyError, TypeError):
        logger.warning("job %s: unreadable event line %r", job_id, line[:200])
        return "", None
    if kind == "progress":
        try:
            progress = JobProgress.model_validate(message["progress"])
        except Exception:
            logger.warning("job %s: bad progress %r", job_id, line[:200])
            return "", None
        store.record_progress(job_id, progress)
    elif kind == "log":
        store.record_log(job_id, str(message.get("message", ""))[:2000])
    elif kind == "result":
        return kind, message.get("result") or {}
    elif kind == "error":
        return kind, str(message.get("message") or "the job failed")
    return kind, None
