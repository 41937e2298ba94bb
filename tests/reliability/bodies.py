"""Test-only job bodies for the reliability tests (selected through the trainer's
`job_bodies` setting, `CAI_TRAINER_JOB_BODIES`; never used outside tests). The prefix of the
job's `output_name` picks the behaviour, so one trainer runs jobs that fail in different ways:

    oom-*        caps its own address space (RLIMIT_AS) and allocates until the cap is hit
    oomkill-*    one step, then SIGKILLs itself, as the kernel's OOM killer would
    tornwrite-*  writes a large adapter file into its staging folder slowly, announcing the
                 write in `<work_dir>/writing` first, and never finishes on its own
    env-*        logs its whole environment (a key handed to the child would show up in the
                 job log and events), then succeeds
    real-*       the production DPO body (services.trainer.jobs.dpo:run_dpo), on the tiny model
    anything else: tests/unit/trainer/fake_bodies.py (ok-*, slow-*, hang-*, fail-*, ...)
"""

from __future__ import annotations

import os
import resource
import signal
import time
from typing import Any

from services.trainer.jobs.context import JobContext
from tests.unit.trainer import fake_bodies

# The cap of `oom-*`: far above what the child needs to start, far below the machine's RAM.
OOM_LIMIT_BYTES = 1 << 30
TORN_CHUNK = 1 << 20


def _oom(ctx: JobContext) -> dict[str, Any]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (OOM_LIMIT_BYTES, hard))
    ctx.log.info("address space capped at %d bytes; allocating until it is full", OOM_LIMIT_BYTES)
    hoard = []
    while True:  # ends in MemoryError once the cap is reached
        hoard.append(bytearray(64 << 20))


def _oomkill(spec: Any, ctx: JobContext) -> dict[str, Any]:
    fake_bodies._step(ctx, 1, 5)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the process was killed")


def _torn_write(ctx: JobContext) -> dict[str, Any]:
    (ctx.output_dir / "adapter_config.json").write_text('{"r": 8}')
    with (ctx.output_dir / "adapter_model.safetensors").open("wb") as handle:
        handle.write(b"\x01" * TORN_CHUNK)
        handle.flush()
        (ctx.work_dir / "writing").write_text(str(os.getpid()))
        while True:  # a write that never completes: the test kills the process mid-way
            handle.write(b"\x01" * TORN_CHUNK)
            handle.flush()
            time.sleep(0.05)


def _env(spec: Any, ctx: JobContext) -> dict[str, Any]:
    for name, value in sorted(os.environ.items()):
        ctx.log.info("env %s=%s", name, value)
    return fake_bodies.run(spec.model_copy(update={"output_name": "ok-env"}), ctx)


def run(spec: Any, ctx: JobContext) -> dict[str, Any]:
    mode = spec.output_name.split("-", 1)[0]
    if mode == "oom":
        return _oom(ctx)
    if mode == "oomkill":
        return _oomkill(spec, ctx)
    if mode == "tornwrite":
        return _torn_write(ctx)
    if mode == "env":
        return _env(spec, ctx)
    if mode == "real":
        from services.trainer.jobs.dpo import run_dpo

        return run_dpo(spec, ctx)
    return fake_bodies.run(spec, ctx)
