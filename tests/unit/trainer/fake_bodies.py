"""Stand-in job bodies for tests of the runner and the API (selected through the trainer's
`job_bodies` setting; never used outside tests). What a body does is chosen by the prefix
of the job's `output_name`, so one trainer can run jobs that behave differently:

    ok-*       5 quick steps, then writes a small output folder and succeeds
    slow-*     20 steps of 0.1 s, then succeeds
    hang-*     reports a step every 0.1 s until it is killed
    fail-*     raises ValueError after one step
    nowrite-*  succeeds without writing anything
"""

from __future__ import annotations

import json
import time
from typing import Any

from protocol.jobs import JobProgress
from services.trainer.jobs.context import JobContext


def _step(ctx: JobContext, step: int, total: int | None) -> None:
    ctx.emit(
        JobProgress(
            step=step,
            total_steps=total,
            eta_seconds=0.1 * (total - step) if total else None,
            tokens_per_second=1000.0,
            metrics={"loss": 0.69 - 0.01 * step, "rewards/margins": 0.01 * step},
        )
    )


def run(spec: Any, ctx: JobContext) -> dict[str, Any]:
    mode = spec.output_name.split("-", 1)[0]
    ctx.log.info("fake body in mode %s", mode)
    if mode == "hang":
        step = 0
        while True:
            step += 1
            _step(ctx, step, None)
            time.sleep(0.1)
    if mode == "fail":
        _step(ctx, 1, 5)
        raise ValueError("the fake body failed on purpose")
    if mode == "nowrite":
        return {"metrics": {}}
    total, delay = (20, 0.1) if mode == "slow" else (5, 0.0)
    for step in range(1, total + 1):
        _step(ctx, step, total)
        time.sleep(delay)
    (ctx.output_dir / "adapter_config.json").write_text(json.dumps({"r": 8, "job": ctx.job_id}))
    (ctx.output_dir / "weights.bin").write_bytes(b"\x00" * 64)
    return {
        "metrics": {"loss": 0.64, "rewards/accuracies": 1.0},
        "config": {"fake": True},
        "rank": 8,
    }
