"""Issue 13, classes 1 and 2: no non-finite number gets into a job, every number of a spec has
a documented upper bound, and a job too big as a whole (estimated steps past
CAI_TRAINER_MAX_JOB_STEPS) is refused at submission."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, get_args

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from protocol.jobs import (
    MAX_PROCESSES,
    DpoJobSpec,
    DpoSpec,
    JobProgress,
    LoraSpec,
    MergeJobSpec,
)
from services.trainer.app import create_app
from services.trainer.core.config import TrainerSettings
from services.trainer.jobs.training_memory import CPU_MICRO_BATCH, MAX_AUTO_MICRO_BATCH
from services.trainer.submit import estimated_steps
from tests.unit.trainer.conftest import pairs_jsonl, snapshot

JSON = {"content-type": "application/json"}
SPECS: tuple[type[BaseModel], ...] = (LoraSpec, DpoSpec, DpoJobSpec, MergeJobSpec)
# Where each spec sits in a DPO job body.
NESTED = {LoraSpec: "lora", DpoSpec: "dpo", DpoJobSpec: "", MergeJobSpec: ""}


def numeric_fields() -> list[tuple[type[BaseModel], str]]:
    fields = []
    for model in SPECS:
        for name, info in model.model_fields.items():
            types = set(get_args(info.annotation)) or {info.annotation}
            if types & {int, float}:
                fields.append((model, name))
    return fields


def bound(model: type[BaseModel], name: str, kind: str) -> Any:
    for constraint in model.model_fields[name].metadata:
        if hasattr(constraint, kind):
            return getattr(constraint, kind)
    return None


def raw_job(dataset_id: str, section: str, field: str, literal: str) -> bytes:
    """A DPO job body with `literal` (a JSON token, e.g. `Infinity`) as one field's value."""
    base = {"kind": "dpo", "base_model": "tiny", "dataset_id": dataset_id, "output_name": "ok-n"}
    body = json.dumps(base)[:-1]
    if section:
        return f'{body}, "{section}": {{"{field}": {literal}}}}}'.encode()
    return f'{body}, "{field}": {literal}}}'.encode()


def test_the_issue_example_infinite_beta_is_a_422_and_the_listing_still_answers(
    client: TestClient, settings: TrainerSettings, dataset_id: str
) -> None:
    before = snapshot(settings.data_dir)
    response = client.post(
        "/v1/jobs", headers=JSON, content=raw_job(dataset_id, "dpo", "beta", "Infinity")
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert "`dpo.beta`" in problem["detail"] and "finite number" in problem["detail"]
    assert "allowed: more than 0.0 and at most 100.0" in problem["detail"]
    assert problem["errors"][0]["field"] == "dpo.beta"
    assert snapshot(settings.data_dir) == before  # no row stored as `null`
    assert client.get("/v1/jobs").status_code == 200


@pytest.mark.parametrize(
    ("model", "name"), numeric_fields(), ids=lambda v: getattr(v, "__name__", v)
)
@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_no_numeric_field_of_a_job_takes_a_non_finite_number(
    client: TestClient,
    settings: TrainerSettings,
    dataset_id: str,
    model: type[BaseModel],
    name: str,
    literal: str,
) -> None:
    before = snapshot(settings.data_dir)
    response = client.post(
        "/v1/jobs", headers=JSON, content=raw_job(dataset_id, NESTED[model], name, literal)
    )
    assert response.status_code == 422, response.text
    field = ".".join(part for part in (NESTED[model], name) if part)
    assert f"`{field}`" in response.json()["detail"]
    assert snapshot(settings.data_dir) == before


@pytest.mark.parametrize(
    ("model", "name"), numeric_fields(), ids=lambda v: getattr(v, "__name__", v)
)
def test_every_number_of_a_spec_has_an_upper_bound_with_its_reason(
    model: type[BaseModel], name: str
) -> None:
    upper = bound(model, name, "le")
    upper = upper if upper is not None else bound(model, name, "lt")
    assert upper is not None, f"{model.__name__}.{name} has no upper bound"
    description = model.model_fields[name].description or ""
    assert any(word in description for word in ("At most", "Below", "From")), description
    assert ":" in description.split("At most")[-1] or "Below" in description, description


def test_records_refuse_non_finite_numbers_too() -> None:
    with pytest.raises(ValidationError, match="finite"):
        JobProgress(metrics={"loss": float("nan")})
    with pytest.raises(ValidationError, match="finite"):
        JobProgress(eta_seconds=float("inf"))


@pytest.mark.parametrize(
    ("model", "name"), numeric_fields(), ids=lambda v: getattr(v, "__name__", v)
)
def test_a_number_just_past_its_bound_is_refused_naming_the_range(
    client: TestClient, dataset_id: str, model: type[BaseModel], name: str
) -> None:
    upper = bound(model, name, "le")
    if upper is None:
        upper = bound(model, name, "lt")
        past = upper
    else:
        integer = int in (
            set(get_args(model.model_fields[name].annotation))
            or {model.model_fields[name].annotation}
        )
        past = upper + 1 if integer else upper * 1.5
    value = json.dumps(past)
    response = client.post(
        "/v1/jobs", headers=JSON, content=raw_job(dataset_id, NESTED[model], name, value)
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "allowed:" in detail and repr(upper) in detail, detail


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("dpo", "num_train_epochs", 1e12),  # the issue's ETA of thousands of years
        ("dpo", "beta", 1e308),  # the issue's loss of 0
        ("dpo", "learning_rate", 10.0),
        ("dpo", "max_length", 10**9),
        ("dpo", "gradient_accumulation_steps", 2**31),
        ("lora", "r", 1024),  # vLLM cannot serve a rank above 512
        ("lora", "lora_alpha", 10**400),
        ("", "num_processes", MAX_PROCESSES + 1),
    ],
)
def test_absurd_magnitudes_are_refused(
    client: TestClient, dataset_id: str, section: str, field: str, value: object
) -> None:
    response = client.post(
        "/v1/jobs", headers=JSON, content=raw_job(dataset_id, section, field, str(value))
    )
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]


@pytest.fixture
def small_ceiling(settings_factory: Callable[..., TrainerSettings]) -> Iterator[TestClient]:
    with TestClient(create_app(settings_factory(max_job_steps=100))) as client:
        yield client


def upload(client: TestClient, rows: int) -> str:
    response = client.post(
        "/v1/datasets", content=pairs_jsonl(rows), headers={"content-type": "application/jsonl"}
    )
    return str(response.json()["id"])


def test_a_job_whose_steps_pass_the_ceiling_is_refused_at_submission(
    small_ceiling: TestClient,
) -> None:
    dataset_id = upload(small_ceiling, 10)  # 5 steps an epoch at the CPU micro-batch of 2
    job = {"kind": "dpo", "base_model": "tiny", "dataset_id": dataset_id, "output_name": "ok-big"}
    response = small_ceiling.post("/v1/jobs", json=job | {"dpo": {"num_train_epochs": 21}})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["estimated_steps"] == 105 and problem["max_job_steps"] == 100
    assert problem["field"] == "dpo.num_train_epochs"
    assert "CAI_TRAINER_MAX_JOB_STEPS" in problem["detail"]
    assert "lower dpo.num_train_epochs" in problem["detail"]
    assert small_ceiling.get("/v1/jobs").json()["jobs"] == []
    fits = small_ceiling.post("/v1/jobs", json=job | {"dpo": {"num_train_epochs": 20}})
    assert fits.status_code == 202, fits.text
    bigger_batches = job | {"output_name": "ok-big2"}
    batched = {"num_train_epochs": 21, "gradient_accumulation_steps": 2}
    accepted = small_ceiling.post("/v1/jobs", json=bigger_batches | {"dpo": batched})
    assert accepted.status_code == 202, accepted.text


def spec(**dpo: Any) -> DpoJobSpec:
    processes = dpo.pop("num_processes", None)
    return DpoJobSpec(
        base_model="b", dataset_id="d", output_name="o", dpo=DpoSpec(**dpo), num_processes=processes
    )


@pytest.mark.parametrize(
    ("job", "rows", "device", "steps"),
    [
        (spec(), 10, "cpu", 10 // CPU_MICRO_BATCH),
        (spec(), 11, "cpu", 6),  # the last micro-batch is short
        (spec(num_train_epochs=2.5), 10, "cpu", 13),  # ceil(2.5 x 5)
        (spec(per_device_train_batch_size=1), 10, "cpu", 10),
        (spec(gradient_accumulation_steps=3), 10, "cpu", 2),
        (spec(num_processes=2), 10, "cpu", 3),
        (spec(gradient_accumulation_steps=64), 10, "cpu", 1),  # at least one step an epoch
        # CUDA, sizes left open: the largest micro-batch and every GPU a host can hold.
        (spec(), 10_000, "cuda", -(-10_000 // (MAX_AUTO_MICRO_BATCH * MAX_PROCESSES))),
        (spec(per_device_train_batch_size=4, num_processes=1), 10_000, "cuda", 2500),
    ],
)
def test_the_step_estimate_counts_as_transformers_does(
    job: DpoJobSpec, rows: int, device: str, steps: int
) -> None:
    assert estimated_steps(job, rows, device) == steps


def test_the_step_ceiling_is_a_documented_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrainerSettings.model_fields["max_job_steps"].default == 100_000
    assert "refused" in (TrainerSettings.model_fields["max_job_steps"].description or "")
    monkeypatch.setenv("CAI_TRAINER_MAX_JOB_STEPS", "500")
    assert TrainerSettings().max_job_steps == 500
    monkeypatch.setenv("CAI_TRAINER_MAX_JOB_STEPS", "0")
    with pytest.raises(ValueError, match="max_job_steps"):
        TrainerSettings()
