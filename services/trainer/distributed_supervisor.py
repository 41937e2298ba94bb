"""The supervisor of a multi-process DPO job (the job's child process, distributed.py): it runs
`accelerate launch`, forwards rank 0's events to the runner and ends with exactly one result
or error.

Why the events go through a file: torchrun (what `accelerate launch` runs) starts each rank
with `Popen(close_fds=True, start_new_session=True)`, so the runner's pipe descriptor never
reaches the ranks, whatever `pass_fds` says one level up. Rank 0 appends one JSON object a
line to its own file and the supervisor tails it into the pipe: nothing to inherit, the
runner's protocol is unchanged, and the file stays in the job folder for a post-mortem.

Cancel and crashes: the launcher shares the child's process group, so the runner's SIGTERM
reaches it; the launcher dies with the child (PR_SET_PDEATHSIG) and every rank with the
launcher, so no rank outlives a killed job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from services.trainer.distributed_launch import LaunchPlan, rank_events_path

logger = logging.getLogger(__name__)

POLL_S = 0.2


class EventTail:
    """Complete JSON lines appended to a file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        messages = []
        for line in lines:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                logger.warning("unreadable event line from %s: %r", self.path.name, line[:200])
                continue
            if isinstance(message, dict) and "type" in message:
                messages.append(message)
        return messages


def _die_with_supervisor() -> None:
    """preexec_fn of the launcher: SIGKILL when the supervisor (the job's child) dies."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def first_error(events_dir: Path, skip_rank: int = 0) -> str | None:
    """The first `error` another rank wrote (rank 0 died first, or never got that far)."""
    for path in sorted(events_dir.glob("rank-*.jsonl")):
        if path == rank_events_path(events_dir, skip_rank):
            continue
        for message in EventTail(path).read():
            if message.get("type") == "error":
                rank = path.stem.removeprefix("rank-")
                return f"rank {rank}: {message.get('message') or 'failed'}"
    return None


def supervise(
    plan: LaunchPlan,
    forward: Callable[[dict[str, Any]], None],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    poll_s: float = POLL_S,
) -> int:
    """Run the launcher, forward rank 0's events until it exits, and end with exactly one
    `result` or `error`. Returns 0 only when rank 0 sent a result and every rank exited 0."""
    logger.info("launching %d processes: %s", plan.num_processes, " ".join(plan.argv))
    proc = subprocess.Popen(
        plan.argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        # preexec_fn is unsafe only in threaded parents; the supervisor starts no thread.
        preexec_fn=_die_with_supervisor,
    )
    tail = EventTail(rank_events_path(plan.events_dir, 0))
    outcome: str | None = None
    for messages in _poll(proc, tail, poll_s):
        for message in messages:
            kind = message.get("type")
            if kind in ("result", "error"):
                if outcome is not None:
                    continue  # exactly one outcome reaches the runner
                outcome = str(kind)
            forward(message)
    returncode = proc.returncode
    if outcome == "result" and returncode == 0:
        return 0
    if outcome is None:
        reason = first_error(plan.events_dir) or (
            f"the distributed launch ({plan.num_processes} processes) exited with code "
            f"{returncode} before rank 0 reported; see the job log"
        )
        forward({"type": "error", "message": reason})
    elif outcome == "result":
        forward(
            {
                "type": "error",
                "message": f"rank 0 finished but the launch exited with code {returncode}; "
                "see the job log",
            }
        )
    return 1


def _poll(
    proc: subprocess.Popen[bytes], tail: EventTail, poll_s: float
) -> Iterator[list[dict[str, Any]]]:
    """Rank 0's new events every `poll_s` while the launcher runs, then a last read."""
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=poll_s)
        yield tail.read()
        if proc.returncode is not None:
            yield tail.read()
            return
