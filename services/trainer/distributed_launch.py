"""Planning a multi-process DPO job's launch: how many processes, what shards the work, and
the `accelerate launch` config and command the job's child process runs (distributed.py
draws the whole picture).

Why FSDP (version 2, `fully_shard`) and not DeepSpeed ZeRO-3: both shard weights, gradients
and optimiser state; FSDP2 ships with torch (no extra package, no CUDA extension build in
the trainer image), works with LoRA without `use_orig_params` tricks (it shards parameter
by parameter, so frozen bf16 base weights and trainable fp32 LoRA weights sit in one unit),
and loads a 32B checkpoint with one host copy (`cpu_ram_efficient_loading`: rank 0 reads,
the others start on the meta device and receive their shards). ZeRO-3 would add a DeepSpeed
install and a second config format for the same sharding.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_NAME = "accelerate.yaml"
EVENTS_DIR = "events"
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
        # The job decides activation checkpointing from memory (training_memory.py) and
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


def rank_events_path(events_dir: Path, rank: int) -> Path:
    return events_dir / f"rank-{rank}.jsonl"


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
