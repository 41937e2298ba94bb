"""Schemathesis against the trainer's own OpenAPI schema, in-process (the ASGI app with its
runner and real SQLite; jobs run the test bodies, so nothing trains): every operation gets
schema-valid and schema-breaking requests, at least 1,000 in all. No answer may be a 5xx, and
every answer must match the schema (status documented, content type, body, headers).

    .venv/bin/pytest tests/reliability/test_fuzz.py -s     # -s shows the per-operation counts

The count is asserted and logged (`FUZZ SUMMARY` in the captured log of a failure, or with -s).
Generation is derandomized, so a failure repeats on the next run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.trainer.app import create_app
from services.trainer.core.config import TrainerSettings
from tests.unit.trainer.conftest import pairs_jsonl

logger = logging.getLogger(__name__)

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MIN_REQUESTS = 1000
# Per operation and generation mode; operations whose inputs are few run out earlier.
EXAMPLES = 60
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


@schemathesis.serializer("application/jsonl")
def _jsonl(ctx: Any, value: Any) -> bytes:
    """Bodies of POST /v1/datasets: bytes as generated, anything else as its text."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


@dataclass
class Tally:
    by_operation: Counter[str] = field(default_factory=Counter)
    by_status: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)  # kind of failure -> one example
    unbreakable: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_operation.values())

    def summary(self) -> str:
        lines = [f"FUZZ SUMMARY: {self.total} generated requests, {len(self.failures)} failures"]
        lines += [f"  {n:5d}  {label}" for label, n in sorted(self.by_operation.items())]
        for mode in ("positive", "negative"):
            counts = sorted((s, n) for (m, s), n in self.by_status.items() if m == mode)
            lines.append(f"  {mode} statuses: " + ", ".join(f"{s}: {n}" for s, n in counts))
        return "\n".join(lines)


@pytest.fixture
def app(settings_factory: Callable[..., TrainerSettings]) -> Iterator[FastAPI]:
    application = create_app(settings_factory(max_upload_bytes=64 * 1024, api_key=KEY))
    yield application
    asgi.shutdown_lifespans()  # stops the runner started with the app's lifespan


@dataclass(frozen=True)
class Known:
    """Ids that exist, so that generated requests also reach the paths behind a lookup."""

    dataset_id: str
    job_id: str
    adapter: str

    def path_parameters(self) -> dict[str, str]:
        return {"dataset_id": self.dataset_id, "job_id": self.job_id, "name": self.adapter}


def seed(app: FastAPI) -> Known:
    """A dataset, a finished job and its adapter."""
    with asgi.get_client(cast(Any, app)) as client:
        upload = client.post(
            "/v1/datasets", data=pairs_jsonl(), headers=AUTH | {"content-type": "application/jsonl"}
        )
        assert upload.status_code == 201, upload.text
        dataset_id = upload.json()["id"]
        body = {"kind": "dpo", "base_model": "tiny", "dataset_id": dataset_id}
        job = client.post("/v1/jobs", json=body | {"output_name": "ok-seed"}, headers=AUTH)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()["state"] != "succeeded":
            assert time.monotonic() < deadline, "the seed job did not succeed in 60 s"
            time.sleep(0.1)  # polling a job's state, not waiting in place of a check
    return Known(dataset_id=dataset_id, job_id=job_id, adapter="ok-seed")


def aim(case: schemathesis.Case, known: Known) -> None:
    """Point a schema-valid case at things that exist: ids in the path, and a DPO job's
    dataset and base model (else every generated job would stop at the first lookup)."""
    for name, value in known.path_parameters().items():
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = value
    if isinstance(case.body, dict) and case.body.get("kind") == "dpo":
        case.body |= {"dataset_id": known.dataset_id, "base_model": "tiny", "load_in_4bit": False}
        case.body.pop("eval_dataset_id", None)
        case.body.pop("parent_adapter", None)


def fuzz_operation(operation: Any, mode: GenerationMode, tally: Tally, known: Known) -> None:
    label = f"{operation.label} [{mode.value}]"
    examples = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        nonlocal examples
        examples += 1
        if mode == GenerationMode.POSITIVE and examples % 2 == 0:
            aim(case, known)
        response = case.call(timeout=10)
        tally.by_operation[label] += 1
        tally.by_status[(mode.value, response.status_code)] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            # Collected, not raised: every operation is fuzzed and the report names them all.
            for failure in group.exceptions:
                kind = f"{label}: {failure.title} ({response.status_code})"
                tally.failures.setdefault(
                    kind, f"{failure.message[:300]}\n    {case.as_curl_command()[:300]}"
                )

    try:
        run()
    except Unsatisfiable:
        # Negative mode of an operation without inputs (GET /health): nothing to break.
        if mode != GenerationMode.NEGATIVE:
            raise
        tally.unbreakable.append(operation.label)


def test_fuzzing_the_openapi_schema_finds_no_5xx_and_no_answer_off_the_schema(
    app: FastAPI,
) -> None:
    # With a key configured, as a trainer that can be reached from elsewhere runs: generated
    # requests carry it (or, in negative mode, break it and must get a 401).
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": KEY}}}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config, headers=AUTH)
    known = seed(app)
    tally = Tally()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema has an invalid operation: {result}"
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(operation, mode, tally, known)
    summary = tally.summary()
    logger.info("%s", summary)
    print(summary)  # visible with -s; the assertion below is what guards it
    assert not tally.failures, f"{len(tally.failures)} kinds of failure:\n" + "\n".join(
        f"- {kind}\n    {example}" for kind, example in sorted(tally.failures.items())
    )
    assert not [key for key in tally.by_status if key[1] >= 500]
    assert tally.total >= MIN_REQUESTS, summary
