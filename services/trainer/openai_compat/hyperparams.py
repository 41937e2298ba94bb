"""OpenAI's job parameters -> the trainer's DpoJobSpec, and the spec's values back.

| OpenAI (`method.dpo.hyperparameters`) | job spec                                           |
|---------------------------------------|----------------------------------------------------|
| `n_epochs`                            | `dpo.num_train_epochs`                             |
| `batch_size` B                        | pairs per optimiser step: alone, the micro-batch   |
|                                       | (`dpo.per_device_train_batch_size` = B / processes,|
|                                       | accumulation 1); with a micro-batch m in cai_spec, |
|                                       | `dpo.gradient_accumulation_steps` = B / (m x proc.)|
| `learning_rate_multiplier` x          | `dpo.learning_rate` = x * 5e-6 (BASE_LEARNING_RATE)|
| `beta`                                | `dpo.beta`                                         |
| `model`, `training_file`,             | `base_model`, `dataset_id`, `eval_dataset_id`,     |
| `validation_file`, `seed`, `suffix`   | `seed`, `output_name` = `ft-<suffix>-<12 hex>`     |

`"auto"` (or leaving one out) keeps the spec's default, or what `cai_spec` sets. `cai_spec`
reaches every other field of the spec (lora, dpo, output_name, parent_adapter, ...) and is
validated as the spec is (unknown fields refused); a field set both through an OpenAI
parameter and through cai_spec is refused as ambiguous. "processes" is `cai_spec.
num_processes`, 1 when left open (a CUDA trainer may then use every GPU: pin it to keep B).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Literal

from pydantic import ValidationError

from protocol.jobs import DpoJobSpec, DpoSpec
from protocol.names import check_name
from services.trainer.core.errors import BadRequest
from services.trainer.openai_compat.models import (
    DpoHyperparameters,
    DpoHyperparametersOut,
    HyperparametersOut,
    JobCreate,
)

# The spec's default learning rate: what `learning_rate_multiplier` multiplies.
BASE_LEARNING_RATE: float = DpoSpec.model_fields["learning_rate"].default
HYPER = "method.dpo.hyperparameters"
# Set by OpenAI's own parameters, never through cai_spec.
_FROM_OPENAI = {
    "kind": "it is always dpo",
    "base_model": "pass `model`",
    "dataset_id": "pass `training_file`",
    "eval_dataset_id": "pass `validation_file`",
}
# Spec fields -> the OpenAI parameter that sets them, for conflicts and error messages.
_PARAMS = {
    ("dpo", "num_train_epochs"): f"{HYPER}.n_epochs",
    ("dpo", "per_device_train_batch_size"): f"{HYPER}.batch_size",
    ("dpo", "gradient_accumulation_steps"): f"{HYPER}.batch_size",
    ("dpo", "learning_rate"): f"{HYPER}.learning_rate_multiplier",
    ("dpo", "beta"): f"{HYPER}.beta",
    ("seed",): "seed",
    ("output_name",): "suffix",
}


# Spec fields the submission checks name -> the OpenAI parameter the caller wrote.
_SPEC_PARAMS = {
    "base_model": "model",
    "dataset_id": "training_file",
    "eval_dataset_id": "validation_file",
    "seed": "seed",
} | {".".join(path): param for path, param in _PARAMS.items() if path[0] == "dpo"}


def openai_param(field: str) -> str:
    """The parameter behind a spec field a submission check refused."""
    return _SPEC_PARAMS.get(field, f"cai_spec.{field}")


def _refused(message: str, param: str) -> BadRequest:
    return BadRequest(message, field=param)


def _check_request(request: JobCreate) -> DpoHyperparameters:
    if request.method is None or request.method.type != "dpo":
        given = "no method" if request.method is None else f"method {request.method.type!r}"
        raise _refused(
            f"this trainer runs DPO jobs only and got {given}: pass "
            'method={"type": "dpo", "dpo": {"hyperparameters": {...}}}',
            "method.type",
        )
    if request.method.supervised or request.method.reinforcement:
        raise _refused("method.type is dpo: leave supervised and reinforcement out", "method")
    if request.hyperparameters is not None and request.hyperparameters.model_dump(
        exclude_none=True
    ):
        raise _refused(
            "top-level `hyperparameters` are deprecated (supervised jobs): pass them as "
            "method.dpo.hyperparameters",
            "hyperparameters",
        )
    if request.integrations:
        raise _refused("this trainer has no integrations: leave `integrations` out", "integrations")
    if request.metadata:
        raise _refused("this trainer does not store metadata: leave `metadata` out", "metadata")
    dpo = request.method.dpo
    return dpo.hyperparameters if dpo and dpo.hyperparameters else DpoHyperparameters()


def _given(spec: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = spec
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def output_name(suffix: str | None, idempotency_key: str | None) -> str:
    """`ft-<suffix>-<12 hex>`: new for every job, but the same for retries of one
    Idempotency-Key, whose spec must come out the same to replay the job."""
    if idempotency_key is not None:
        token = hashlib.sha256(idempotency_key.encode()).hexdigest()[:12]
    else:
        token = uuid.uuid4().hex[:12]
    name = f"ft-{suffix}-{token}" if suffix else f"ft-{token}"
    try:
        return check_name(name)
    except ValueError:
        raise _refused(
            f"suffix {suffix!r:.70} cannot be part of an adapter name: use letters, digits, "
            "'.', '_' and '-'",
            "suffix",
        ) from None


def _set_batch(dpo: dict[str, Any], batch: int, processes: int) -> None:
    micro = dpo.get("per_device_train_batch_size")
    per_process, spread = divmod(batch, processes)
    if micro is None:
        if spread:
            raise _refused(
                f"batch_size {batch} does not divide over {processes} processes: use a multiple",
                f"{HYPER}.batch_size",
            )
        dpo["per_device_train_batch_size"] = per_process
        dpo["gradient_accumulation_steps"] = 1
        return
    if not isinstance(micro, int) or micro < 1 or batch % (micro * processes):
        raise _refused(
            f"batch_size {batch} is not a multiple of cai_spec.dpo.per_device_train_batch_size "
            f"({micro!r:.20}) x {processes} processes: make it one, or leave the micro-batch out",
            f"{HYPER}.batch_size",
        )
    dpo["gradient_accumulation_steps"] = batch // (micro * processes)


def to_spec(request: JobCreate, idempotency_key: str | None) -> DpoJobSpec:
    """The job spec of a create request; BadRequest naming the parameter at fault."""
    hyper = _check_request(request)
    extra = dict(request.cai_spec or {})
    for key, why in _FROM_OPENAI.items():
        if key in extra:
            raise _refused(f"cai_spec.{key} is not set here: {why}", f"cai_spec.{key}")
    chosen = {
        ("dpo", "num_train_epochs"): hyper.n_epochs not in (None, "auto"),
        ("dpo", "per_device_train_batch_size"): False,  # combines with batch_size
        ("dpo", "gradient_accumulation_steps"): hyper.batch_size not in (None, "auto"),
        ("dpo", "learning_rate"): hyper.learning_rate_multiplier not in (None, "auto"),
        ("dpo", "beta"): hyper.beta not in (None, "auto"),
        ("seed",): request.seed is not None,
        ("output_name",): request.suffix is not None,
    }
    for path, set_by_openai in chosen.items():
        if set_by_openai and _given(extra, path):
            raise _refused(
                f"cai_spec.{'.'.join(path)} and {_PARAMS[path]} both set it: keep one",
                _PARAMS[path],
            )
    # Spec paths written from OpenAI's parameters: errors there name the parameter.
    mapped = {path for path, set_by_openai in chosen.items() if set_by_openai}
    dpo = extra.get("dpo", {})
    if isinstance(dpo, dict):  # else the spec's validation below says what is wrong
        dpo = dict(dpo)
        if isinstance(hyper.n_epochs, int):
            dpo["num_train_epochs"] = hyper.n_epochs
        if isinstance(hyper.learning_rate_multiplier, float):
            dpo["learning_rate"] = hyper.learning_rate_multiplier * BASE_LEARNING_RATE
        if isinstance(hyper.beta, float):
            dpo["beta"] = hyper.beta
        if isinstance(hyper.batch_size, int):
            processes = extra.get("num_processes")
            _set_batch(dpo, hyper.batch_size, processes if isinstance(processes, int) else 1)
            mapped.add(("dpo", "per_device_train_batch_size"))
        extra["dpo"] = dpo
    if request.seed is not None:
        extra["seed"] = request.seed
    if "output_name" not in extra:
        extra["output_name"] = output_name(request.suffix, idempotency_key)
    body = extra | {
        "kind": "dpo",
        "base_model": request.model,
        "dataset_id": request.training_file,
        "eval_dataset_id": request.validation_file,
    }
    try:
        return DpoJobSpec.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(part) for part in err["loc"])
        param = _PARAMS[loc] if loc in mapped else "cai_spec." + ".".join(loc)
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "not a field of the job spec: remove it or check its spelling"
        raise _refused(f"{param}: {message}", param) from None


def _whole(value: float) -> float:
    return int(value) if float(value).is_integer() else value


def hyperparameters(spec: DpoJobSpec) -> DpoHyperparametersOut:
    """The job's effective hyper-parameters in OpenAI's terms (`auto` where the trainer sizes
    the micro-batch at run time)."""
    dpo = spec.dpo
    micro = dpo.per_device_train_batch_size
    processes = spec.num_processes or 1
    batch: int | Literal["auto"] = (
        micro * dpo.gradient_accumulation_steps * processes if micro else "auto"
    )
    return DpoHyperparametersOut(
        batch_size=batch,
        beta=dpo.beta,
        learning_rate_multiplier=dpo.learning_rate / BASE_LEARNING_RATE,
        n_epochs=_whole(dpo.num_train_epochs),
    )


def top_level(values: DpoHyperparametersOut) -> HyperparametersOut:
    return HyperparametersOut(**values.model_dump(exclude={"beta"}))
