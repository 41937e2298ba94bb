"""Trainer job specs, job records and progress events.

A job spec is data (YAML recipes validate into it); every field documents its default and
why. The trainer turns a `DpoJobSpec` into TRL's `DPOConfig` and PEFT's `LoraConfig` and
stores the effective configs with the job and the adapter.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.names import SafeName

QWEN_PROJECTIONS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


class LoraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(
        default=64, ge=1, le=1024, description="LoRA rank. vLLM must run with --max-lora-rank >= r."
    )
    lora_alpha: int | None = Field(
        default=None, ge=1, description="Scaling numerator; default equal to `r` (scale 1)."
    )
    lora_dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path."
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(QWEN_PROJECTIONS),
        min_length=1,
        description="Modules to adapt; default all seven Qwen projections.",
    )
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")

    @property
    def effective_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else self.r


class DpoSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    beta: float = Field(default=0.1, gt=0.0, description="KL strength of the DPO loss.")
    learning_rate: float = Field(
        default=5e-6, gt=0.0, le=1.0, description="LoRA DPO practice: 5e-6..1e-5."
    )
    num_train_epochs: float = Field(default=1.0, gt=0.0, description="Passes over the dataset.")
    per_device_train_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Micro-batch; default sized from the device's memory (CPU: 2).",
    )
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(
        default=1024, ge=16, description="Prompt + completion tokens; longer rows are dropped."
    )
    loss_type: str = Field(
        default="sigmoid", description="TRL loss type (sigmoid, ipo, hinge, ...)."
    )
    precompute_ref_log_probs: bool = Field(
        default=True,
        description="One reference pre-pass instead of a reference forward every step.",
    )
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="Activation checkpointing; default chosen from memory (off where it fits).",
    )
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    logging_steps: int = Field(default=1, ge=1)
    optimizer: Literal["auto", "adamw", "adamw_8bit"] = Field(
        default="auto",
        description=(
            "auto: fp32 AdamW, or 8-bit Adam moments (bitsandbytes) where weights and LoRA "
            "state take most of one GPU (32B on an 80 GB card). adamw_8bit: always (one CUDA "
            "GPU and bitsandbytes needed)."
        ),
    )


class DpoJobSpec(BaseModel):
    """Train a LoRA adapter with DPO on an uploaded dataset."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["dpo"] = "dpo"
    base_model: str = Field(
        description="A folder under a configured model root, a registered merged model, or a hub id."
    )
    dataset_id: str = Field(description="Id returned by POST /v1/datasets.")
    eval_dataset_id: str | None = Field(
        default=None, description="Held-out pairs; pair accuracy is reported."
    )
    output_name: SafeName = Field(description="Name of the adapter to register; must be new.")
    parent_adapter: SafeName | None = Field(
        default=None,
        description="Continue from this adapter (iterative DPO); it becomes the reference.",
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)
    dpo: DpoSpec = Field(default_factory=DpoSpec)
    load_in_4bit: bool = Field(default=False, description="QLoRA loading; GPU only.")
    seed: int = Field(default=0)
    num_processes: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Training processes. None: 1 on CPU, every GPU the worker sees on CUDA. Above 1 "
            "the trainer runs `accelerate launch` with FSDP2 (weights, gradients and optimiser "
            "state sharded over the processes, one GPU each): for models that do not fit one "
            "card in bf16. On CPU, >1 runs gloo processes (the test path). See docs/gpu-box.md."
        ),
    )


class MergeJobSpec(BaseModel):
    """Merge an adapter into (a bf16 copy of) its base: a model folder vLLM can serve."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["merge"] = "merge"
    adapter: SafeName = Field(description="A registered adapter.")
    base_model: str | None = Field(
        default=None, description="Defaults to the adapter's base; must match it."
    )
    output_name: SafeName = Field(description="Name of the merged model to register; must be new.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="`auto`: bfloat16 on GPU, float32 on CPU."
    )


JobSpec = Annotated[DpoJobSpec | MergeJobSpec, Field(discriminator="kind")]


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.cancelled)


class JobProgress(BaseModel):
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    eta_seconds: float | None = None
    tokens_per_second: float | None = None
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="Latest logged metrics: loss, rewards/margins, rewards/accuracies, ...",
    )


class JobRecord(BaseModel):
    id: str
    kind: Literal["dpo", "merge"]
    state: JobState
    spec: DpoJobSpec | MergeJobSpec = Field(discriminator="kind")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = Field(default=None, description="Why the job failed (or `interrupted`).")
    progress: JobProgress = Field(default_factory=JobProgress)
    result: dict[str, Any] = Field(
        default_factory=dict,
        description="Output adapter/model name, final metrics, effective configs.",
    )
    position: int | None = Field(
        default=None, description="Place in the queue while queued (0 = next)."
    )

    @model_validator(mode="after")
    def _kind_matches_spec(self) -> JobRecord:
        if self.kind != self.spec.kind:
            raise ValueError("job kind and spec kind differ")
        return self


class JobEvent(BaseModel):
    """One server-sent event of GET /v1/jobs/{id}/events.

    `type` is `state` (a state change), `progress` (step/total/metrics/ETA) or `log`.
    """

    job_id: str
    seq: int = Field(description="Monotonic per job; clients resume with Last-Event-ID.")
    type: Literal["state", "progress", "log"]
    time: datetime
    state: JobState | None = None
    progress: JobProgress | None = None
    message: str | None = None


class JobList(BaseModel):
    jobs: list[JobRecord]
