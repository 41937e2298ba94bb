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

Why the events go through a file: torchrun (what `accelerate launch` runs) starts each rank
with `Popen(close_fds=True, start_new_session=True)`, so the runner's pipe descriptor never
reaches the ranks, whatever `pass_fds` says one level up. Rank 0 appends one JSON object a
line to its own file and the supervisor tails it into the pipe: nothing to inherit, the
runner's protocol is unchanged, and the file stays in the job folder for a post-mortem.

Why FSDP (version 2, `fully_shard`) and not DeepSpeed ZeRO-3: both shard weights, gradients
and optimiser state; FSDP2 ships with torch (no extra package, no CUDA extension build in
the trainer image), works with LoRA without `use_orig_params` tricks (it shards parameter
by parameter, so frozen bf16 base weights and trainable fp32 LoRA weights sit in one unit),
and loads a 32B checkpoint with one host copy (`cpu_ram_efficient_loading`: rank 0 reads,
the others start on the meta device and receive their shards). ZeRO-3 would add a DeepSpeed
install and a second config format for the same sharding.

Cancel and crashes: the launcher shares the child's process group, so the runner's SIGTERM
reaches it; the launcher dies with the child (PR_SET_PDEATHSIG) and every rank with the
launcher, so no rank outlives a killed job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.trainer.jobs.training_device import ModelShape

logger = logging.getLogger(__name__)

CONFIG_NAME = "accelerate.yaml"
EVENTS_DIR = "events"
POLL_S = 0.2
# model_type -> the decoder layer FSDP wraps as one unit (one all-gather per layer). Other
# models fall back to accelerate's default: the model class's `_no_split_modules`.
DECODER_LAYERS: dict[str, str] = {
    "qwen2": "Qwen2DecoderLayer",
    "qwen3": "Qwen3DecoderLayer",
    "llama": "LlamaDecoderLayer",
    "mistral": "MistralDecoderLayer",
}


class DistributedConfigError(ValueError):
    """The job asks for a process layout this machine or this spec cannot give."""


def resolve_num_processes(requested: int | None, device: str, visible_gpus: int) -> int:
    """How many training processes a DPO job gets.

    None: one on CPU (gloo processes only add communication there), every visible GPU on
    CUDA. On CUDA each process needs its own GPU; with CAI_TRAINER_WORKERS > 1 each worker
    sees only its own GPU.
    """
    if device != "cuda":
        return requested or 1
    available = max(visible_gpus, 1)
    if requested is None:
        return available
    if requested > available:
        raise DistributedConfigError(
            f"the job asks for num_processes={requested} but this worker sees {visible_gpus} "
            "GPU(s); lower num_processes, or give the trainer more GPUs (with "
            "CAI_TRAINER_WORKERS > 1 each worker sees one GPU: set CAI_TRAINER_WORKERS=1)"
        )
    return requested


def strategy(device: str) -> str:
    """What shards the work: FSDP2 on GPUs; on CPU accelerate can only do DDP (gloo)."""
    return "fsdp2" if device == "cuda" else "ddp"


def check_supported(num_processes: int, load_in_4bit: bool) -> None:
    """QLoRA under FSDP needs float bnb storage and a different mixed-precision policy;
    not wired here: 4-bit is the one-card answer, FSDP the many-card one."""
    if num_processes > 1 and load_in_4bit:
        raise DistributedConfigError(
            "load_in_4bit cannot be combined with num_processes > 1 (FSDP shards bf16 "
            "weights): set load_in_4bit to false, or num_processes to 1 for QLoRA on one GPU"
        )


def decoder_layer_class(model_path: str) -> str | None:
    """The decoder layer class to wrap, from a local model folder's config.json."""
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return None  # a hub id: accelerate reads `_no_split_modules` from the model
    model_type = json.loads(config.read_text()).get("model_type")
    return DECODER_LAYERS.get(str(model_type)) if model_type else None


def accelerate_config(
    *, num_processes: int, device: str, port: int, layer_class: str | None
) -> dict[str, Any]:
    """The `accelerate launch --config_file` content for one job (see the module docstring).

    CUDA: FSDP2. CPU: DDP over gloo, through the same launcher (torchrun, which accelerate
    calls MULTI_GPU). accelerate 1.15 has no FSDP on CPU: `AcceleratorState` turns FSDP on
    only for accelerator devices, and CPU ranks become MULTI_CPU, i.e. DDP. An FSDP config
    there would only make transformers load the non-zero ranks on `meta` for a DDP model.
    """
    common: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": num_processes,
        "main_process_ip": "127.0.0.1",
        "main_process_port": port,
        "rdzv_backend": "static",
        "same_network": True,
        # `use_cpu: true` would make accelerate run one plain process; CPU ranks pick gloo
        # themselves (DPOConfig use_cpu + ddp_backend, see distributed_overrides).
        "use_cpu": False,
        "gpu_ids": "all",
        "downcast_bf16": "no",
        "debug": False,
    }
    if device != "cuda":
        return common | {"distributed_type": "MULTI_GPU", "mixed_precision": "no"}
    fsdp: dict[str, Any] = {
        "fsdp_version": 2,
        # One unit per decoder layer: a layer's full weights exist only while it runs.
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_reshard_after_forward": True,
        # Rank 0 reads the checkpoint, the others start on `meta` and receive their shards:
        # one host copy of a 32B model instead of one per GPU (needs sync_module_states).
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_sync_module_states": True,
        # What accelerate's get_state_dict would gather; the job gathers only the LoRA
        # tensors itself (dpo.py), so the 64 GB base never has to land on one host.
        "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_offload_params": False,
        # The job decides activation checkpointing from memory (training_device.py) and
        # turns on the Trainer's own, which works under FSDP2.
        "fsdp_activation_checkpointing": False,
    }
    if layer_class is not None:
        fsdp["fsdp_transformer_layer_cls_to_wrap"] = layer_class
    return common | {
        "distributed_type": "FSDP",
        # bf16 compute and all-gathers; accelerate keeps the trainable LoRA weights in fp32.
        "mixed_precision": "bf16",
        "fsdp_config": fsdp,
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=True))
    return path


def launch_argv(python: str, config_path: Path, job_dir: Path, events_dir: Path) -> list[str]:
    """`accelerate launch` (as a module of this interpreter: no PATH lookup) running the
    child in rank mode."""
    return [
        *(python, "-m", "accelerate.commands.launch"),
        *("--config_file", str(config_path)),
        *("--module", "services.trainer.child"),
        *(str(job_dir), "--rank-events-dir", str(events_dir)),
    ]


def launch_env(
    num_processes: int, device: str, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The launcher's environment. On CPU the ranks share the cores (torchrun would give each
    one thread); on GPUs torchrun's one thread a rank is right (the GPU does the work)."""
    env = dict(os.environ if base is None else base)
    if device != "cuda" and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
    return env


def free_port() -> int:
    """A port for the rendezvous; two jobs on one host must not share 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def world_size() -> int:
    """Processes of this job (torchrun's WORLD_SIZE); 1 outside a launch."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def rank_events_path(events_dir: Path, rank: int) -> Path:
    return events_dir / f"rank-{rank}.jsonl"


# -- inside a rank (the DPO body calls these; torch is imported lazily) ------------------


def init_process_group(device: str) -> Any:
    """Join the job's process group now (gloo on CPU, NCCL on CUDA). DPOConfig would do it
    later; the memory plan and rank-0-only model loading need it earlier. Returns the
    accelerate `PartialState` that TRL's Trainer then reuses."""
    from accelerate import PartialState

    if device == "cuda":
        return PartialState()
    return PartialState(cpu=True, backend="gloo")


def min_across_ranks(value: int | None) -> int | None:
    """The smallest `value` over all ranks (free GPU memory): every rank must choose the
    same micro-batch, or their step counts differ and the last collective never returns."""
    import torch.distributed as dist

    if value is None or not dist.is_initialized():
        return value
    values: list[int | None] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    known = [v for v in values if v is not None]
    return min(known) if known else None


def sharded_shape(shape: ModelShape, num_processes: int) -> ModelShape:
    """What one rank holds under FSDP full sharding, for the memory plan: 1/N of the weights
    plus two whole layers (the one running and the one FSDP prefetches). Activations are not
    sharded: each rank runs its own micro-batch through every layer."""
    if num_processes <= 1:
        return shape
    per_layer = shape.parameters // max(shape.num_layers, 1)
    held = -(-shape.parameters // num_processes) + 2 * per_layer
    return replace(shape, parameters=min(shape.parameters, held))


def distributed_overrides(
    num_processes: int, device: str, dpo_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """DPOConfig values that change when the job runs on several processes.

    - No reference pre-pass: TRL 1.16 runs it before `train` wraps the model in FSDP, i.e.
      on the unsharded model (a 32B model would have to fit one card, the very thing FSDP
      avoids; here non-zero ranks even hold `meta` weights), and caches it in a per-process
      temp folder that the other ranks cannot read. The reference forward runs in each step
      instead, with the adapter switched off (no second model in memory).
    - CPU (DDP): gloo (accelerate would pick MPI where torch has it), and no search for
      unused parameters: every LoRA weight takes part in every step's policy forward.
    """
    if num_processes <= 1:
        return {}
    overrides: dict[str, Any] = {}
    if dpo_kwargs.get("precompute_ref_log_probs"):
        overrides["precompute_ref_log_probs"] = False
    if device != "cuda":
        overrides["ddp_backend"] = "gloo"
        overrides["ddp_find_unused_parameters"] = False
    return overrides


def gather_adapter_state(model: Any, adapter_name: str, keep: bool) -> dict[str, Any]:
    """Full LoRA tensors of one adapter from an FSDP2 model, on the host.

    Under FSDP2 every parameter is a DTensor holding this rank's shard; `full_tensor()` is
    an all-gather, so every rank must call this (same order: the same module tree). Only the
    adapter's tensors are gathered (accelerate's `get_state_dict` would gather the whole
    base model onto rank 0's host first: 64 GB at 32B). `keep=False` ranks return {}.
    """
    from torch.distributed.tensor import DTensor

    marker = f".{adapter_name}."
    state: dict[str, Any] = {}
    for name, param in model.named_parameters():
        if "lora_" not in name or marker not in name:
            continue
        full = param.full_tensor() if isinstance(param, DTensor) else param
        if keep:
            state[name] = full.detach().to("cpu").clone()
    return state


@dataclass(frozen=True)
class LaunchPlan:
    num_processes: int
    device: str
    config_path: Path
    events_dir: Path
    argv: list[str]


def plan_launch(job_dir: Path, *, num_processes: int, device: str, model_path: str) -> LaunchPlan:
    """Write the job's accelerate config and return what to run."""
    events_dir = job_dir / EVENTS_DIR
    events_dir.mkdir(parents=True, exist_ok=True)
    for stale in events_dir.glob("rank-*.jsonl"):  # a previous attempt of the same job
        stale.unlink()
    config = accelerate_config(
        num_processes=num_processes,
        device=device,
        port=free_port(),
        layer_class=decoder_layer_class(model_path),
    )
    config_path = write_config(job_dir / CONFIG_NAME, config)
    argv = launch_argv(sys.executable, config_path, job_dir, events_dir)
    return LaunchPlan(num_processes, device, config_path, events_dir, argv)


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
