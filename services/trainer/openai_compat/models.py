"""Bodies of OpenAI's fine-tuning API as the `openai` SDK sends and parses them (openai
3.51: `types/file_object.py`, `types/fine_tuning/*.py`). Responses carry only fields the SDK
knows; requests refuse fields it does not send (a typo is a 400, not a silent default).

Hyper-parameters take a number or `"auto"`: one validator per field checks both, so an error
names the field itself (pydantic's union would name each member) and the schema still says
both are allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

from protocol.jobs import MAX_BETA, MAX_EPOCHS, MAX_MICRO_BATCH, MAX_SEED

_REQUEST = ConfigDict(extra="forbid", allow_inf_nan=False)

AutoNumber = int | float | Literal["auto"] | None


@dataclass(frozen=True)
class _AutoOr:
    """`"auto"`, null, or a number in (or from) `low` to `high`."""

    integer: bool
    low: float
    high: float
    low_inclusive: bool = True

    @property
    def rule(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low = f"at least {self.low:g}" if self.low_inclusive else f"more than {self.low:g}"
        return f"'auto' or {kind} {low} and at most {self.high:g}"

    def check(self, value: Any) -> AutoNumber:
        if value is None or value == "auto":
            return "auto" if value == "auto" else None
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (self.integer and not float(value).is_integer()):
            raise ValueError(f"must be {self.rule}")
        above = value >= self.low if self.low_inclusive else value > self.low
        if not math.isfinite(value) or not above or value > self.high:
            raise ValueError(f"must be {self.rule}")
        return int(value) if self.integer else float(value)

    def schema(self, description: str) -> WithJsonSchema:
        bound = "minimum" if self.low_inclusive else "exclusiveMinimum"
        number = {"type": "integer" if self.integer else "number", bound: self.low}
        number["maximum"] = self.high
        return WithJsonSchema(
            {"anyOf": [number, {"const": "auto"}, {"type": "null"}], "description": description}
        )


# Past these the job spec's own bounds (protocol/jobs.py) refuse the mapped value anyway;
# here they keep the schema honest about what can pass.
MAX_MULTIPLIER = 200_000.0  # x 5e-6 = 1, the spec's largest learning rate
MAX_BATCH = MAX_MICRO_BATCH * 1024  # micro-batch x accumulation, each at its bound
_EPOCHS = _AutoOr(integer=True, low=1, high=MAX_EPOCHS)
_BATCH = _AutoOr(integer=True, low=1, high=MAX_BATCH)
_MULTIPLIER = _AutoOr(integer=False, low=0, high=MAX_MULTIPLIER, low_inclusive=False)
_BETA = _AutoOr(integer=False, low=0, high=MAX_BETA, low_inclusive=False)

NEpochs = Annotated[
    AutoNumber,
    PlainValidator(_EPOCHS.check),
    _EPOCHS.schema("Passes over the training file: the spec's dpo.num_train_epochs (auto: 1)."),
]
BatchSize = Annotated[
    AutoNumber,
    PlainValidator(_BATCH.check),
    _BATCH.schema(
        "Pairs per optimiser step: micro-batch x gradient_accumulation_steps x processes "
        "(auto: the micro-batch sized from the device's memory, accumulation 1)."
    ),
]
LearningRateMultiplier = Annotated[
    AutoNumber,
    PlainValidator(_MULTIPLIER.check),
    _MULTIPLIER.schema(
        "Multiplies the trainer's base learning rate of 5e-6 (the spec's dpo.learning_rate "
        "default, LoRA DPO practice); auto: 1."
    ),
]
Beta = Annotated[
    AutoNumber,
    PlainValidator(_BETA.check),
    _BETA.schema("KL strength of the DPO loss: the spec's dpo.beta (auto: 0.1)."),
]


class DpoHyperparameters(BaseModel):
    model_config = _REQUEST

    n_epochs: NEpochs = None
    batch_size: BatchSize = None
    learning_rate_multiplier: LearningRateMultiplier = None
    beta: Beta = None


class DpoMethod(BaseModel):
    model_config = _REQUEST

    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    model_config = _REQUEST

    type: Literal["supervised", "dpo", "reinforcement"] = Field(
        description="Only `dpo` runs here: this trainer trains preference pairs."
    )
    dpo: DpoMethod | None = None
    supervised: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class Hyperparameters(BaseModel):
    """The deprecated top-level hyper-parameters (supervised jobs); refused when set."""

    model_config = _REQUEST

    n_epochs: NEpochs = None
    batch_size: BatchSize = None
    learning_rate_multiplier: LearningRateMultiplier = None


class JobCreate(BaseModel):
    """POST /v1/fine_tuning/jobs."""

    model_config = _REQUEST

    model: str = Field(
        min_length=1,
        max_length=1024,
        description="The base model: a folder under a model root, a merged model, or a hub id.",
    )
    training_file: str = Field(min_length=1, max_length=256, description="A file id.")
    validation_file: str | None = Field(
        default=None, max_length=256, description="Held-out pairs; pair accuracy is reported."
    )
    method: Method | None = Field(default=None, description='Required: {"type": "dpo", ...}.')
    hyperparameters: Hyperparameters | None = None
    suffix: str | None = Field(
        default=None,
        max_length=64,
        description="Part of the adapter's name: `ft-<suffix>-<12 hex digits>`.",
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    metadata: dict[str, str] | None = Field(default=None, description="Refused: not stored here.")
    integrations: list[dict[str, Any]] | None = Field(
        default=None, description="Refused when non-empty: no integrations here."
    )
    cai_spec: dict[str, Any] | None = Field(
        default=None,
        description=(
            "The rest of the trainer's DPO job spec (POST /v1/jobs, kind dpo): lora, dpo, "
            "output_name, parent_adapter, load_in_4bit, num_processes, seed. The fields "
            "OpenAI names come from OpenAI's parameters; unknown fields are refused."
        ),
    )


# -- responses ------------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str = Field(description="The dataset id (POST /v1/datasets gives the same ids).")
    object: Literal["file"] = "file"
    bytes: int = Field(description="Bytes of the stored prompt/chosen/rejected rows.")
    created_at: int
    filename: str
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["processed"] = "processed"
    status_details: str | None = None


class ErrorInfo(BaseModel):
    code: str
    message: str
    param: str | None = None


class DpoHyperparametersOut(BaseModel):
    batch_size: int | Literal["auto"]
    beta: float
    learning_rate_multiplier: float
    n_epochs: int | float


class DpoMethodOut(BaseModel):
    hyperparameters: DpoHyperparametersOut


class MethodOut(BaseModel):
    type: Literal["dpo"] = "dpo"
    dpo: DpoMethodOut


class HyperparametersOut(BaseModel):
    batch_size: int | Literal["auto"]
    learning_rate_multiplier: float
    n_epochs: int | float


class FineTuningJob(BaseModel):
    id: str = Field(description="The trainer's job id (GET /v1/jobs/{id} shows the same job).")
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: ErrorInfo | None = None
    fine_tuned_model: str | None = Field(
        description="The adapter's name in the registry and in vLLM; set once the job succeeded."
    )
    finished_at: int | None = None
    hyperparameters: HyperparametersOut
    model: str
    organization_id: str = "cai-trainer"
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    method: MethodOut


class FineTuningJobEvent(BaseModel):
    id: str = Field(description="`<job id>-<seq>`; seq as in GET /v1/jobs/{id}/events.")
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class CheckpointMetrics(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    step: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str = Field(description="The adapter's name.")
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of a list; the next page starts `after` the last item's id."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool


class OpenAIErrorBody(BaseModel):
    message: str = Field(description="What went wrong and how to fix it.")
    type: str = Field(description="invalid_request_error, or server_error for a 5xx.")
    param: str | None = Field(default=None, description="The parameter at fault, if one is.")
    code: str | None = None


class OpenAIError(BaseModel):
    """The error body on the OpenAI-compatible routes (the SDK reads `error.message`)."""

    error: OpenAIErrorBody
