"""The process one job runs in. The runner starts it; nothing else should.

    python -m services.trainer.child <job-dir> --events-fd <fd>

It reads `<job-dir>/child.json` (the body to import, the spec and the resolved paths),
runs the body with a `JobContext`, and writes one JSON object per line to the events pipe:
`progress`, `log`, then `result` (success) or `error` (the exception, as the job's reason).
stdout/stderr go to `<job-dir>/job.log`. The process dies with the service (PR_SET_PDEATHSIG),
so a killed trainer never leaves a job holding the GPU.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from pydantic import TypeAdapter

from protocol.jobs import JobProgress, JobSpec
from services.trainer.jobs.context import JobBody, JobContext

PR_SET_PDEATHSIG = 1
MAX_ERROR_CHARS = 2000


class EventWriter:
    """One JSON object per line on the pipe to the runner; safe from any thread."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, default=str)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


class ForwardLogs(logging.Handler):
    """Sends the body's own log records (ctx.log) to the job's event stream."""

    def __init__(self, events: EventWriter) -> None:
        super().__init__(level=logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.events.write({"type": "log", "message": self.format(record)})
        except Exception:  # a log line must never fail the job
            self.handleError(record)


def die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def load_body(target: str) -> JobBody:
    module_name, _, function = target.partition(":")
    module = importlib.import_module(module_name)
    body: JobBody = getattr(module, function)
    return body


def build_context(plan: dict[str, Any], events: EventWriter, log: logging.Logger) -> JobContext:
    ctx = plan["context"]

    def emit(progress: JobProgress) -> None:
        events.write({"type": "progress", "progress": progress.model_dump(mode="json")})

    def optional(key: str) -> Path | None:
        return Path(ctx[key]) if ctx.get(key) else None

    return JobContext(
        job_id=plan["job_id"],
        work_dir=Path(ctx["work_dir"]),
        output_dir=Path(ctx["output_dir"]),
        base_model_path=ctx["base_model_path"],
        train_path=optional("train_path"),
        eval_path=optional("eval_path"),
        parent_adapter_path=optional("parent_adapter_path"),
        device=ctx["device"],
        emit=emit,
        log=log,
        extra=ctx.get("extra", {}),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one trainer job (started by the runner).")
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--events-fd", type=int, required=True)
    args = parser.parse_args(argv)
    plan = json.loads((args.job_dir / "child.json").read_text())
    die_with_parent(int(plan["parent_pid"]))
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    events = EventWriter(os.fdopen(args.events_fd, "w", encoding="utf-8", buffering=1))
    log = logging.getLogger(f"services.trainer.job.{plan['job_id']}")
    log.addHandler(ForwardLogs(events))
    try:
        spec = TypeAdapter[Any](JobSpec).validate_python(plan["spec"])
        body = load_body(plan["body"])
        log.info("job %s: %s starting on %s", plan["job_id"], spec.kind, plan["context"]["device"])
        result = body(spec, build_context(plan, events, log))
        if not isinstance(result, dict):
            raise TypeError(f"the job body returned {type(result).__name__}, not a dict")
        events.write({"type": "result", "result": result})
    except BaseException as exc:
        logging.getLogger(__name__).exception("job %s failed", plan["job_id"])
        message = f"{type(exc).__name__}: {exc}"
        events.write({"type": "error", "message": message[:MAX_ERROR_CHARS]})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
