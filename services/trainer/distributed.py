"""Multi-process DPO jobs: `accelerate launch`, started by the job's child process.

A DPO job whose spec asks for more than one process (`num_processes`, default every GPU the
worker sees) runs like this; everything else keeps the single-process path:

    runner ──pipe──▶ child (supervisor)   python -m services.trainer.child <job> --events-fd N
                       │ writes <job>/accelerate.yaml (FSDP2, bf16, Qwen2 decoder-layer wrap)
                       └─▶ accelerate launch --config_file <job>/accelerate.yaml
                             --module services.trainer.child <job> --rank-events-dir <job>/events
                               ├─ rank 0: the body; events to <job>/events/rank-0.jsonl
                               └─ rank 1..N-1: the body; only result/error to rank-<i>.jsonl

On GPUs the ranks run FSDP2. On CPU they run DDP over gloo through the same launcher,
supervisor, event files and adapter gathering: accelerate 1.15 turns FSDP on only for
accelerator devices (CPU ranks become MULTI_CPU, i.e. DDP), so the CPU test covers the
launch path, not the sharding.

The pieces: distributed_launch.py plans the launch (process count, accelerate config,
command), distributed_supervisor.py runs it and forwards rank 0's events, distributed_rank.py
holds what the body does inside a rank. This module names what the child process and the
DPO body use from them.
"""

from __future__ import annotations

from services.trainer.distributed_launch import (
    check_supported,
    launch_env,
    plan_launch,
    rank_events_path,
    resolve_num_processes,
    strategy,
)
from services.trainer.distributed_rank import (
    distributed_overrides,
    gather_adapter_state,
    init_process_group,
    min_across_ranks,
    process_rank,
    sharded_shape,
    world_size,
)
from services.trainer.distributed_supervisor import supervise

__all__ = [
    "check_supported",
    "distributed_overrides",
    "gather_adapter_state",
    "init_process_group",
    "launch_env",
    "min_across_ranks",
    "plan_launch",
    "process_rank",
    "rank_events_path",
    "resolve_num_processes",
    "sharded_shape",
    "strategy",
    "supervise",
    "world_size",
]
