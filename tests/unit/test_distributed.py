"""How a multi-process DPO job is launched (services/trainer/distributed*.py): the process
count, the accelerate config and command line, the DPOConfig overrides, and the supervisor
that turns rank event files into the runner's one event stream.

    .venv/bin/python -m pytest tests/unit/test_distributed.py
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from protocol.jobs import DpoJobSpec
from services.trainer.distributed_launch import (
    DistributedConfigError,
    LaunchPlan,
    accelerate_config,
    check_supported,
    decoder_layer_class,
    launch_argv,
    launch_env,
    plan_launch,
    rank_events_path,
    resolve_num_processes,
)
from services.trainer.distributed_rank import distributed_overrides, sharded_shape
from services.trainer.distributed_supervisor import EventTail, supervise
from services.trainer.jobs.training_memory import ModelShape

QWEN_32B = ModelShape(
    parameters=32_763_876_352,
    hidden_size=5120,
    intermediate_size=27648,
    num_layers=64,
    num_kv_heads=8,
    head_dim=128,
)


# -- how many processes ---------------------------------------------------------------


def test_cpu_defaults_to_one_process() -> None:
    assert resolve_num_processes(None, "cpu", 0) == 1


def test_cpu_runs_as_many_gloo_processes_as_asked() -> None:
    assert resolve_num_processes(2, "cpu", 0) == 2


def test_cuda_defaults_to_every_visible_gpu() -> None:
    assert resolve_num_processes(None, "cuda", 4) == 4


def test_cuda_asking_more_processes_than_gpus_says_what_to_change() -> None:
    with pytest.raises(DistributedConfigError, match="CAI_TRAINER_WORKERS=1"):
        resolve_num_processes(2, "cuda", 1)


def test_spec_field_defaults_to_none_and_refuses_zero() -> None:
    assert DpoJobSpec(base_model="m", dataset_id="d", output_name="a").num_processes is None
    with pytest.raises(ValueError):
        DpoJobSpec(base_model="m", dataset_id="d", output_name="a", num_processes=0)


def test_4bit_with_several_processes_is_refused() -> None:
    check_supported(1, load_in_4bit=True)
    with pytest.raises(DistributedConfigError, match="load_in_4bit"):
        check_supported(2, load_in_4bit=True)


# -- the accelerate config and command -------------------------------------------------


def test_cuda_config_is_fsdp2_in_bf16_wrapping_qwen2_decoder_layers() -> None:
    config = accelerate_config(
        num_processes=2, device="cuda", port=12345, layer_class="Qwen2DecoderLayer"
    )
    assert config["distributed_type"] == "FSDP"
    assert config["mixed_precision"] == "bf16"
    assert config["num_processes"] == 2
    assert config["main_process_port"] == 12345
    assert config["use_cpu"] is False  # `true` would make accelerate start one process
    fsdp = config["fsdp_config"]
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
    # One host copy of the checkpoint: accelerate requires sync_module_states with it.
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True
    assert fsdp["fsdp_sync_module_states"] is True


def test_cpu_config_is_ddp_through_the_same_launcher() -> None:
    config = accelerate_config(num_processes=2, device="cpu", port=1, layer_class=None)
    assert config["distributed_type"] == "MULTI_GPU"  # accelerate's name for torchrun
    assert config["mixed_precision"] == "no"
    assert "fsdp_config" not in config


def test_unknown_model_type_leaves_the_wrap_class_to_accelerate(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    assert decoder_layer_class(str(tmp_path)) is None
    assert decoder_layer_class("Qwen/Qwen2.5-32B") is None  # a hub id: no local config


def test_tiny_model_wraps_qwen2_decoder_layers(tiny_model: Path) -> None:
    assert decoder_layer_class(str(tiny_model)) == "Qwen2DecoderLayer"


def test_config_file_is_read_by_accelerate_as_written(tmp_path: Path, tiny_model: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    job = tmp_path / "job"
    job.mkdir()
    plan = plan_launch(job, num_processes=2, device="cuda", model_path=str(tiny_model))
    loaded = load_config_from_file(str(plan.config_path))
    assert loaded.distributed_type == "FSDP"
    assert loaded.num_processes == 2
    assert loaded.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
    assert yaml.safe_load(plan.config_path.read_text())["mixed_precision"] == "bf16"


def test_argv_runs_accelerate_from_this_interpreter_in_rank_mode(tmp_path: Path) -> None:
    argv = launch_argv("/py", tmp_path / "a.yaml", tmp_path, tmp_path / "events")
    assert argv[:3] == ["/py", "-m", "accelerate.commands.launch"]
    assert argv[argv.index("--config_file") + 1] == str(tmp_path / "a.yaml")
    assert argv[argv.index("--module") + 1] == "services.trainer.child"
    assert argv[-3:] == [str(tmp_path), "--rank-events-dir", str(tmp_path / "events")]


def test_cpu_ranks_share_the_cores_unless_told_otherwise() -> None:
    import os

    shared = launch_env(2, "cpu", base={})
    assert shared["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert launch_env(2, "cpu", base={"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"
    assert "OMP_NUM_THREADS" not in launch_env(2, "cuda", base={})


def test_a_new_launch_clears_event_files_of_an_earlier_attempt(
    tmp_path: Path, tiny_model: Path
) -> None:
    stale = rank_events_path(tmp_path / "events", 0)
    stale.parent.mkdir()
    stale.write_text('{"type": "result", "result": {}}\n')
    plan_launch(tmp_path, num_processes=2, device="cpu", model_path=str(tiny_model))
    assert not stale.exists()


# -- what changes inside a rank --------------------------------------------------------


def test_one_process_changes_nothing() -> None:
    assert distributed_overrides(1, "cuda", {"precompute_ref_log_probs": True}) == {}


def test_several_processes_compute_the_reference_in_the_step() -> None:
    overrides = distributed_overrides(2, "cuda", {"precompute_ref_log_probs": True})
    assert overrides == {"precompute_ref_log_probs": False}


def test_cpu_ranks_use_gloo() -> None:
    overrides = distributed_overrides(2, "cpu", {"precompute_ref_log_probs": False})
    assert overrides["ddp_backend"] == "gloo"
    assert "precompute_ref_log_probs" not in overrides


def test_memory_plan_counts_a_shard_plus_two_layers_of_weights() -> None:
    sharded = sharded_shape(QWEN_32B, 4)
    per_layer = QWEN_32B.parameters // QWEN_32B.num_layers
    assert sharded.parameters == -(-QWEN_32B.parameters // 4) + 2 * per_layer
    assert sharded.hidden_size == QWEN_32B.hidden_size  # activations are not sharded
    assert sharded_shape(QWEN_32B, 1) == QWEN_32B


def test_32b_in_bf16_fits_two_80gb_cards_by_the_memory_plan() -> None:
    from services.trainer.jobs.training_memory import GIB, plan_memory

    def plan(shape: ModelShape) -> Any:
        return plan_memory(
            shape,
            device="cuda",
            free_bytes=79 * GIB,
            longest_pair_tokens=1024,
            r=64,
            dtype="bfloat16",
            use_liger_kernel=True,
        )

    assert plan(QWEN_32B).gradient_checkpointing  # one card: only with checkpointing
    sharded = plan(sharded_shape(QWEN_32B, 2))
    assert "estimated capacity 0" not in sharded.reason
    assert sharded.estimated_peak_bytes is not None and sharded.estimated_peak_bytes < 79 * GIB


# -- the supervisor --------------------------------------------------------------------


def test_event_tail_returns_complete_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "rank-0.jsonl"
    tail = EventTail(path)
    assert tail.read() == []
    path.write_text('{"type": "log", "message": "a"}\n{"type": "lo')
    assert tail.read() == [{"type": "log", "message": "a"}]
    with path.open("a") as handle:
        handle.write('g", "message": "b"}\n')
    assert tail.read() == [{"type": "log", "message": "b"}]


def fake_launch(tmp_path: Path, script: str) -> LaunchPlan:
    """A stand-in launcher: a Python script writing rank event files, then exiting."""
    events = tmp_path / "events"
    events.mkdir(exist_ok=True)
    body = textwrap.dedent(script).format(events=str(events))
    argv = [sys.executable, "-c", "import json, sys\n" + body]
    return LaunchPlan(2, "cpu", tmp_path / "accelerate.yaml", events, argv)


def run_supervisor(tmp_path: Path, script: str) -> tuple[int, list[dict[str, Any]]]:
    forwarded: list[dict[str, Any]] = []
    code = supervise(fake_launch(tmp_path, script), forwarded.append, cwd=tmp_path, poll_s=0.05)
    return code, forwarded


def test_rank0_events_are_forwarded_and_a_result_with_exit_0_succeeds(tmp_path: Path) -> None:
    code, forwarded = run_supervisor(
        tmp_path,
        """
        with open("{events}/rank-0.jsonl", "w") as f:
            f.write(json.dumps({{"type": "progress", "progress": {{"step": 1}}}}) + "\\n")
            f.write(json.dumps({{"type": "result", "result": {{"rank": 8}}}}) + "\\n")
        with open("{events}/rank-1.jsonl", "w") as f:
            f.write(json.dumps({{"type": "result", "result": {{"ignored": True}}}}) + "\\n")
        """,
    )
    assert code == 0
    assert [m["type"] for m in forwarded] == ["progress", "result"]
    assert forwarded[1]["result"] == {"rank": 8}


def test_another_ranks_error_is_the_reason_when_rank0_said_nothing(tmp_path: Path) -> None:
    code, forwarded = run_supervisor(
        tmp_path,
        """
        with open("{events}/rank-1.jsonl", "w") as f:
            f.write(json.dumps({{"type": "error", "message": "OutOfMemoryError: boom"}}) + "\\n")
        sys.exit(1)
        """,
    )
    assert code == 1
    assert forwarded == [{"type": "error", "message": "rank 1: OutOfMemoryError: boom"}]


def test_a_launch_that_dies_silently_fails_with_its_exit_code(tmp_path: Path) -> None:
    code, forwarded = run_supervisor(tmp_path, "sys.exit(3)")
    assert code == 1
    assert len(forwarded) == 1 and forwarded[0]["type"] == "error"
    assert "exited with code 3" in forwarded[0]["message"]


def test_a_result_from_a_launch_that_then_fails_is_not_a_success(tmp_path: Path) -> None:
    code, forwarded = run_supervisor(
        tmp_path,
        """
        with open("{events}/rank-0.jsonl", "w") as f:
            f.write(json.dumps({{"type": "result", "result": {{}}}}) + "\\n")
        sys.exit(1)
        """,
    )
    assert code == 1
    assert forwarded[-1]["type"] == "error"
    assert "exited with code 1" in forwarded[-1]["message"]
