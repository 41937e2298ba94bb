"""OpenAI's job parameters map onto the DPO job spec, and back
(services/trainer/openai_compat/hyperparams.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from protocol.jobs import DpoSpec
from services.trainer.core.errors import BadRequest
from services.trainer.openai_compat.hyperparams import (
    BASE_LEARNING_RATE,
    hyperparameters,
    output_name,
    to_spec,
)
from services.trainer.openai_compat.models import JobCreate


def request(hyper: dict[str, Any] | None = None, **fields: Any) -> JobCreate:
    body: dict[str, Any] = {"model": "tiny", "training_file": "ds-0123456789abcdef"}
    body["method"] = {"type": "dpo", "dpo": {"hyperparameters": hyper or {}}}
    return JobCreate.model_validate(body | fields)


def refused(req: JobCreate) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        to_spec(req, None)
    return caught.value


def test_the_base_learning_rate_is_the_specs_default() -> None:
    assert BASE_LEARNING_RATE == DpoSpec().learning_rate == 5e-6


def test_openai_hyperparameters_set_the_spec_fields_they_name() -> None:
    spec = to_spec(
        request({"n_epochs": 3, "beta": 0.25, "learning_rate_multiplier": 2, "batch_size": 8}),
        None,
    )
    assert spec.dpo.num_train_epochs == 3 and spec.dpo.beta == 0.25
    assert spec.dpo.learning_rate == pytest.approx(1e-5)
    assert (spec.dpo.per_device_train_batch_size, spec.dpo.gradient_accumulation_steps) == (8, 1)
    assert (spec.base_model, spec.dataset_id) == ("tiny", "ds-0123456789abcdef")


def test_auto_keeps_the_specs_defaults() -> None:
    auto = dict.fromkeys(("n_epochs", "beta", "learning_rate_multiplier", "batch_size"), "auto")
    spec = to_spec(request(auto), None)
    assert spec.dpo == DpoSpec()
    values = hyperparameters(spec)
    assert values.batch_size == "auto" and values.learning_rate_multiplier == 1
    assert (values.n_epochs, values.beta) == (1, 0.1)


def test_batch_size_with_a_micro_batch_sets_the_accumulation() -> None:
    extra = {"dpo": {"per_device_train_batch_size": 4}, "num_processes": 2}
    spec = to_spec(request({"batch_size": 16}, cai_spec=extra), None)
    assert spec.dpo.gradient_accumulation_steps == 2
    assert hyperparameters(spec).batch_size == 16


def test_a_batch_size_that_does_not_divide_is_refused() -> None:
    error = refused(
        request({"batch_size": 10}, cai_spec={"dpo": {"per_device_train_batch_size": 4}})
    )
    assert error.extra["field"] == "method.dpo.hyperparameters.batch_size"


def test_cai_spec_reaches_the_rest_of_the_spec() -> None:
    extra = {"lora": {"r": 8}, "dpo": {"max_length": 128}, "output_name": "mine"}
    spec = to_spec(request({"beta": 0.2}, cai_spec=extra), None)
    assert (spec.lora.r, spec.dpo.max_length, spec.dpo.beta, spec.output_name) == (
        8,
        128,
        0.2,
        "mine",
    )


@pytest.mark.parametrize(
    ("req", "param"),
    [
        (request(cai_spec={"lora": {"rank": 8}}), "cai_spec.lora.rank"),
        (request(cai_spec={"base_model": "x"}), "cai_spec.base_model"),
        (
            request({"n_epochs": 2}, cai_spec={"dpo": {"num_train_epochs": 3}}),
            "method.dpo.hyperparameters.n_epochs",
        ),
        (request(seed=1, cai_spec={"seed": 2}), "seed"),
        (request({"batch_size": 2048}), "method.dpo.hyperparameters.batch_size"),
        (request(cai_spec={"dpo": {"learning_rate": 2.0}}), "cai_spec.dpo.learning_rate"),
        (request(integrations=[{"type": "wandb"}]), "integrations"),
        (request(hyperparameters={"n_epochs": 2}), "hyperparameters"),
        (JobCreate(model="tiny", training_file="ds-0"), "method.type"),
        (request(method={"type": "supervised"}), "method.type"),
        (request(suffix="a b"), "suffix"),
    ],
)
def test_what_cannot_map_is_refused_naming_the_parameter(req: JobCreate, param: str) -> None:
    assert refused(req).extra["field"] == param


@pytest.mark.parametrize(
    "hyper",
    [{"beta": 0}, {"beta": True}, {"n_epochs": 1.5}, {"n_epochs": 0}, {"batch_size": "many"}],
)
def test_out_of_range_hyperparameters_fail_validation(hyper: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="'auto' or"):
        request(hyper)


def test_an_idempotency_key_names_the_output_the_same_every_retry() -> None:
    assert output_name("x", "key-1") == output_name("x", "key-1") != output_name("x", "key-2")
    assert output_name(None, None) != output_name(None, None)
    assert output_name("sdk", "k").startswith("ft-sdk-")
