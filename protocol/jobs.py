"""Trainer job specs, job records and progress events.

A job spec is data (YAML recipes validate into it); every field documents its default and
why. The trainer turns a `DpoJobSpec` into TRL's `DPOConfig` and PEFT's `LoraConfig` and
stores the effective configs with the job and the adapter.

Numbers are finite (`Infinity` and `NaN` are refused: `allow_inf_nan=False` on every model)
and every number of a spec has an upper bound, stated with its reason in the field's
description: each stands far past any useful run, where a larger value would do harm (hold
the only worker for years, saturate or overflow the loss, train an adapter vLLM cannot
serve). A spec inside the bounds can still be too big as a whole: the trainer also refuses
a job whose estimated steps exceed its ceiling (CAI_TRAINER_MAX_JOB_STEPS).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
# TRL 1.16's loss types (DPOConfig.loss_type help text).
DPO_LOSS_TYPES = frozenset(
    {
        "sigmoid",
        "hinge",
        "ipo",
        "exo_pair",
        "nca_pair",
        "robust",
        "bco_pair",
        "sppo_hard",
        "aot",
        "aot_unpaired",
        "apo_zero",
        "apo_down",
        "discopop",
        "sft",
        "sigmoid_norm",
    }
)
# vLLM refuses adapters whose config lists modules_to_save; PEFT must never add any.
FORBIDDEN_TARGETS = frozenset({"lm_head", "embed_tokens"})

# The upper bounds, where tests and messages can name them; the reasons are in the fields.
MAX_LORA_RANK = 512
MAX_LORA_ALPHA = 8192
MAX_TARGET_MODULES = 1024
MAX_BETA = 100.0
MAX_LEARNING_RATE = 1.0
MAX_EPOCHS = 1000.0
MAX_MICRO_BATCH = 1024
MAX_ACCUMULATION = 1024
MAX_LENGTH = 131072
MAX_LOGGING_STEPS = 100_000
MAX_SEED = 2**32 - 1
MAX_PROCESSES = 16

_FINITE = ConfigDict(extra="forbid", allow_inf_nan=False)

TargetModule = Annotated[str, Field(min_length=1, max_length=256)]


def parse_loss_types(loss_type: str) -> list[str]:
    """`sigmoid` or a comma-separated combination such as `sigmoid,sft` (RPO); ValueError
    naming the allowed values otherwise."""
    names = [name.strip() for name in loss_type.split(",") if name.strip()]
    unknown = [name for name in names if name not in DPO_LOSS_TYPES]
    if not names or unknown:
        raise ValueError(
            f"unknown loss_type {loss_type[:80]!r}: use one of {', '.join(sorted(DPO_LOSS_TYPES))} "
            "(or several joined by commas, e.g. sigmoid,sft)"
        )
    return names


class LoraSpec(BaseModel):
    model_config = _FINITE

    r: int = Field(
        default=64,
        ge=1,
        le=MAX_LORA_RANK,
        description=(
            "LoRA rank. vLLM must run with --max-lora-rank >= r. At most 512: the largest "
            "--max-lora-rank vLLM accepts, so a larger adapter could never be served."
        ),
    )
    lora_alpha: int | None = Field(
        default=None,
        ge=1,
        le=MAX_LORA_ALPHA,
        description=(
            "Scaling numerator; default equal to `r` (scale 1). At most 8192 (16 x the largest "
            "r): the update is scaled by alpha/r, and recipes use 1-2 (alpha = r or 2r); a "
            "scale in the thousands swamps the base weights at the first step."
        ),
    )
    lora_dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the LoRA path. Below 1: at 1 the LoRA path is always dropped.",
    )
    target_modules: list[TargetModule] = Field(
        default_factory=lambda: list(QWEN_PROJECTIONS),
        min_length=1,
        max_length=MAX_TARGET_MODULES,
        description=(
            "Modules to adapt; default all seven Qwen projections. Each must name a linear "
            "layer of the base model (checked at submission against its weights); lm_head and "
            "embed_tokens cannot be served by vLLM. At most 1024 entries: every projection of "
            "the deepest supported model, by full name."
        ),
    )
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")

    @property
    def effective_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else self.r


class DpoSpec(BaseModel):
    model_config = _FINITE

    beta: float = Field(
        default=0.1,
        gt=0.0,
        le=MAX_BETA,
        description=(
            "KL strength of the DPO loss (typical 0.05-0.5). At most 100: the loss reads "
            "beta x a log-ratio margin of a few nats, and past ~100 it saturates from the "
            "first step (loss 0, no gradient: a run that 'succeeds' having learnt nothing)."
        ),
    )
    learning_rate: float = Field(
        default=5e-6,
        gt=0.0,
        le=MAX_LEARNING_RATE,
        description=(
            "LoRA DPO practice: 5e-6..1e-5. At most 1: Adam moves each weight by about the "
            "learning rate a step, so at 1 the first step already rewrites the adapter."
        ),
    )
    num_train_epochs: float = Field(
        default=1.0,
        gt=0.0,
        le=MAX_EPOCHS,
        description=(
            "Passes over the dataset. At most 1000: DPO overfits after a few passes; the "
            "trainer also refuses a job whose estimated steps pass CAI_TRAINER_MAX_JOB_STEPS."
        ),
    )
    per_device_train_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_MICRO_BATCH,
        description=(
            "Micro-batch; default sized from the device's memory (CPU: 2). At most 1024: more "
            "pairs than any device holds at once; raise gradient_accumulation_steps instead."
        ),
    )
    gradient_accumulation_steps: int = Field(
        default=1,
        ge=1,
        le=MAX_ACCUMULATION,
        description=(
            "Micro-batches per optimiser step. At most 1024: the effective batch is micro-batch "
            "x this x processes, and past 1024 micro-batches most datasets give one step an "
            "epoch."
        ),
    )
    max_length: int = Field(
        default=1024,
        ge=16,
        le=MAX_LENGTH,
        description=(
            "Prompt + completion tokens; longer rows are dropped. At most 131072: the longest "
            "context of the Qwen2.5 family (128 K with YaRN)."
        ),
    )
    loss_type: str = Field(
        default="sigmoid",
        max_length=512,
        description=(
            "TRL loss type, or several joined by commas (sigmoid,sft): "
            + ", ".join(sorted(DPO_LOSS_TYPES))
            + "."
        ),
    )
    precompute_ref_log_probs: bool = Field(
        default=True,
        description="One reference pre-pass instead of a reference forward every step.",
    )
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="Activation checkpointing; default chosen from memory (off where it fits).",
    )
    packing: bool | None = Field(
        default=None,
        description=(
            "Shared-prompt packing: each pair's prompt computed once and pairs packed end to "
            "end without padding. Default: on where the model's attention takes it (Qwen2/3, "
            "Llama; one process). false: TRL's padded rows. true: refuse to start otherwise."
        ),
    )
    warmup_ratio: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="Share of the steps spent warming the learning rate up. Below 1: a share.",
    )
    logging_steps: int = Field(
        default=1,
        ge=1,
        le=MAX_LOGGING_STEPS,
        description=(
            "A progress event every this many steps. At most 100000: the default step ceiling "
            "(CAI_TRAINER_MAX_JOB_STEPS); past the job's steps only the first step is logged."
        ),
    )
    optimizer: Literal["auto", "adamw", "adamw_8bit"] = Field(
        default="auto",
        description=(
            "auto: fp32 AdamW, or 8-bit Adam moments (bitsandbytes) where weights and LoRA "
            "state take most of one GPU (32B on an 80 GB card). adamw_8bit: always (one CUDA "
            "GPU and bitsandbytes needed)."
        ),
    )

    @field_validator("loss_type")
    @classmethod
    def _known_loss_type(cls, value: str) -> str:
        parse_loss_types(value)
        return value


class DpoJobSpec(BaseModel):
    """Train a LoRA adapter with DPO on an uploaded dataset."""

    model_config = _FINITE

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
    seed: int = Field(
        default=0,
        ge=0,
        le=MAX_SEED,
        description=(
            "Seeds Python, numpy and torch. From 0 to 4294967295 (2**32 - 1): numpy's seed "
            "range, which transformers' set_seed goes through."
        ),
    )
    num_processes: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PROCESSES,
        description=(
            "Training processes. None: 1 on CPU, every GPU the worker sees on CUDA. Above 1 "
            "the trainer runs `accelerate launch` with FSDP2 (weights, gradients and optimiser "
            "state sharded over the processes, one GPU each): for models that do not fit one "
            "card in bf16. On CPU, >1 runs gloo processes (the test path). See docs/gpu-box.md. "
            "At most 16: one process per GPU of the trainer's host, and no host holds more."
        ),
    )


class MergeJobSpec(BaseModel):
    """Merge an adapter into (a bf16 copy of) its base: a model folder vLLM can serve."""

    model_config = _FINITE

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


# Records are written by the trainer and read by clients: finite numbers only, so that a row
# the trainer stored can always be read back and every answer is valid JSON.
_RECORD = ConfigDict(allow_inf_nan=False)


class JobProgress(BaseModel):
    model_config = _RECORD

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
    model_config = _RECORD

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

    model_config = _RECORD

    job_id: str
    seq: int = Field(description="Monotonic per job; clients resume with Last-Event-ID.")
    type: Literal["state", "progress", "log"]
    time: datetime
    state: JobState | None = None
    progress: JobProgress | None = None
    message: str | None = None


class JobList(BaseModel):
    jobs: list[JobRecord]
