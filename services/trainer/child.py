"""The process one job runs in. The runner starts it; nothing else should.

    python -m services.trainer.child <job-dir> --events-fd <fd>

It reads `<job-dir>/child.json` (the body to import, the spec and the resolved paths),
runs the body with a `JobContext`, and writes one JSON object per line to the events pipe:
`progress`, `log`, then `result` (success) or `error` (the exception, as the job's reason).
stdout/stderr go to `<job-dir>/job.log`. The process dies with the service (PR_SET_PDEATHSIG),
so a killed trainer never leaves a job holding the GPU.

A DPO job for more than one process (services/trainer/distributed.py) makes this process a
supervisor: it runs `accelerate launch`, which starts this module once a rank with
`--rank-events-dir <job-dir>/events` instead of `--events-fd`; rank 0's events come back
through a file the supervisor tails into the pipe.
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

from protocol.jobs import DpoJobSpec, JobProgress, JobSpec
from services.modelfiles.convert import ensure_folder
from services.trainer.distributed import (
    check_supported,
    launch_env,
    plan_launch,
    process_rank,
    rank_events_path,
    resolve_num_processes,
    strategy,
    supervise,
)
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


def build_context(
    plan: dict[str, Any], events: EventWriter, log: logging.Logger, report: bool = True
) -> JobContext:
    """`report=False` (ranks other than 0 of a distributed job): progress goes nowhere."""
    ctx = plan["context"]

    def emit(progress: JobProgress) -> None:
        if report:
            events.write({"type": "progress", "progress": progress.model_dump(mode="json")})

    def optional(key: str) -> Path | None:
        return Path(ctx[key]) if ctx.get(key) else None

    return JobContext(
        job_id=plan["job_id"],
        work_dir=Path(ctx["work_dir"]),
        output_dir=Path(ctx["output_dir"]),
        # A .gguf base is converted once into a cached folder, here in the job's process (a
        # minute of CPU that must not block the web process).
        base_model_path=ensure_folder(
            ctx["base_model_path"], Path(ctx.get("converted_models_dir") or ctx["work_dir"])
        ),
        train_path=optional("train_path"),
        eval_path=optional("eval_path"),
        parent_adapter_path=optional("parent_adapter_path"),
        device=ctx["device"],
        emit=emit,
        log=log,
        extra=ctx.get("extra", {}),
    )


def planned_processes(spec: Any, device: str) -> int:
    """Processes the job runs in: always 1 for merges; for DPO the spec's `num_processes`,
    by default every GPU this worker sees (distributed.resolve_num_processes)."""
    if not isinstance(spec, DpoJobSpec):
        return 1
    if device != "cuda":
        return resolve_num_processes(spec.num_processes, device, 0)
    import torch  # the GPU count only: cudaGetDeviceCount creates no CUDA context

    return resolve_num_processes(spec.num_processes, device, torch.cuda.device_count())


def run_body(
    plan: dict[str, Any], events: EventWriter, log: logging.Logger, report: bool = True
) -> int:
    try:
        spec = TypeAdapter[Any](JobSpec).validate_python(plan["spec"])
        body = load_body(plan["body"])
        log.info("job %s: %s starting on %s", plan["job_id"], spec.kind, plan["context"]["device"])
        result = body(spec, build_context(plan, events, log, report))
        if not isinstance(result, dict):
            raise TypeError(f"the job body returned {type(result).__name__}, not a dict")
        events.write({"type": "result", "result": result})
    except BaseException as exc:
        logging.getLogger(__name__).exception("job %s failed", plan["job_id"])
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, MemoryError):  # its own message is usually empty
            message = (
                f"MemoryError: the job ran out of memory{f' ({exc})' if str(exc) else ''}: "
                "lower the batch size or max_length, or give the trainer more memory"
            )
        events.write({"type": "error", "message": message[:MAX_ERROR_CHARS]})
        return 1
    return 0


def run_job(plan: dict[str, Any], job_dir: Path, events: EventWriter, log: logging.Logger) -> int:
    """One process, or the supervisor of an `accelerate launch` when the job wants several."""
    device = plan["context"]["device"]
    try:
        spec = TypeAdapter[Any](JobSpec).validate_python(plan["spec"])
        processes = planned_processes(spec, device)
        if processes > 1:
            check_supported(processes, spec.load_in_4bit)
            launch = plan_launch(
                job_dir,
                num_processes=processes,
                device=device,
                model_path=plan["context"]["base_model_path"],
            )
    except Exception as exc:
        logging.getLogger(__name__).exception("job %s cannot start", plan["job_id"])
        events.write({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    if processes == 1:
        return run_body(plan, events, log)
    log.info("job %s: %d processes (%s) on %s", plan["job_id"], processes, strategy(device), device)
    env = launch_env(processes, device)
    return supervise(launch, events.write, cwd=Path(plan["context"]["work_dir"]), env=env)


def run_rank(plan: dict[str, Any], events_dir: Path) -> int:
    """One rank of a distributed job: only rank 0 reports progress and logs as events."""
    rank = process_rank()
    stream = rank_events_path(events_dir, rank).open("a", encoding="utf-8", buffering=1)
    events = EventWriter(stream)
    log = logging.getLogger(f"services.trainer.job.{plan['job_id']}")
    if rank == 0:
        log.addHandler(ForwardLogs(events))
    return run_body(plan, events, log, report=rank == 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one trainer job (started by the runner).")
    parser.add_argument("job_dir", type=Path)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--events-fd", type=int, help="the runner's pipe (the job's process)")
    target.add_argument(
        "--rank-events-dir", type=Path, help="one rank of a distributed job (accelerate launch)"
    )
    args = parser.parse_args(argv)
    # A rank's parent is the launcher: read it before anything slow, so a launcher that dies
    # while this interpreter starts is still noticed by die_with_parent.
    launcher_pid = os.getppid()
    plan = json.loads((args.job_dir / "child.json").read_text())
    rank_mode = args.rank_events_dir is not None
    die_with_parent(launcher_pid if rank_mode else int(plan["parent_pid"]))
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=(
            f"%(asctime)s rank{process_rank()} %(levelname)s %(name)s: %(message)s"
            if rank_mode
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        ),
    )
    if rank_mode:
        return run_rank(plan, args.rank_events_dir)
    events = EventWriter(os.fdopen(args.events_fd, "w", encoding="utf-8", buffering=1))
    log = logging.getLogger(f"services.trainer.job.{plan['job_id']}")
    log.addHandler(ForwardLogs(events))
    return run_job(plan, args.job_dir, events, log)


if __name__ == "__main__":
    sys.exit(main())
