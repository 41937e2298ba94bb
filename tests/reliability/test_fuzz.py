"""Schemathesis against the trainer's own OpenAPI schema, in-process (the ASGI app with its
runner and real SQLite; jobs run the test bodies, so nothing trains): every operation gets
schema-valid and schema-breaking requests, at least 1,000 in all. No answer may be a 5xx, and
every answer must match the schema (status documented, content type, body, headers).

    .venv/bin/pytest tests/reliability/test_fuzz.py -s     # -s shows the per-operation counts

The count is asserted and logged (`FUZZ SUMMARY` in the captured log of a failure, or with -s).
Generation is derandomized, so a failure repeats on the next run.

Two more fuzzers go where a schema cannot lead schemathesis (issue 13): numbers JSON's grammar
allows but a schema does not describe (`Infinity`, `NaN`, `1e999`, 400-digit integers, the
float extremes) in every numeric field of a job and every numeric query parameter, and bodies
over every route's limit, declared or streamed, with and without the key. Neither may get a
5xx, and after them every listing still answers.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast, get_args

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
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

from protocol.jobs import DpoJobSpec, DpoSpec, LoraSpec
from services.trainer.app import create_app
from services.trainer.core.config import TrainerSettings
from tests.unit.trainer.conftest import pairs_jsonl, raw_request

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
        # Generated strings are never a loss type or a layer of the tiny model: without these
        # the aimed half would stop at the submission checks too.
        for section, name in (("lora", "target_modules"), ("dpo", "loss_type")):
            if isinstance(case.body.get(section), dict):
                case.body[section].pop(name, None)


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


# -- issue 13: non-finite and extreme numbers, oversized bodies ----------------------------

LIMIT = 4096
UPLOAD_LIMIT = 8192
# What Python's json reads as an infinite or NaN float (json.dumps writes them the same way).
NON_FINITE = {"Infinity", "-Infinity", "NaN", "1e999", "-1e999"}
# JSON number tokens no schema describes.
EXTREME_TOKENS = [
    "Infinity",
    "-Infinity",
    "NaN",
    "1e999",
    "-1e999",
    "1.7976931348623157e308",
    "-1.7976931348623157e308",
    "5e-324",
    "-0.0",
    "0",
    "1" + "0" * 400,
    "-" + "9" * 400,
    str(2**63),
    str(2**64 + 1),
    str(-(2**63) - 1),
    str(2**32),
    "4294967295",
]


def numeric_paths() -> list[tuple[str, str]]:
    """(section, field) of every number of a DPO job; section "" for top-level fields."""
    paths = []
    for section, model in (("", DpoJobSpec), ("lora", LoraSpec), ("dpo", DpoSpec)):
        for name, info in model.model_fields.items():
            if (set(get_args(info.annotation)) or {info.annotation}) & {int, float}:
                paths.append((section, name))
    return paths


def number_tokens() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(EXTREME_TOKENS),
        st.floats(allow_nan=True, allow_infinity=True).map(json.dumps),
        st.integers(min_value=-(2**80), max_value=2**80).map(str),
    )


def job_body(dataset_id: str, name: str, values: dict[tuple[str, str], str]) -> bytes:
    """A DPO job with `values` (JSON tokens) at their fields, written by hand: json.dumps
    cannot write a 400-digit float or `1e999`."""
    head = {"kind": "dpo", "base_model": "tiny", "dataset_id": dataset_id, "output_name": name}
    sections: dict[str, list[str]] = {}
    for (section, name_), token in values.items():
        sections.setdefault(section, []).append(f'"{name_}": {token}')
    parts = [json.dumps(head)[1:-1], *sections.pop("", [])]
    parts += [f'"{section}": {{{", ".join(items)}}}' for section, items in sections.items()]
    return ("{" + ", ".join(parts) + "}").encode()


@pytest.fixture
def keyed(settings_factory: Callable[..., TrainerSettings]) -> Iterator[tuple[FastAPI, TestClient]]:
    app = create_app(
        settings_factory(api_key=KEY, max_request_bytes=LIMIT, max_upload_bytes=UPLOAD_LIMIT)
    )
    with TestClient(app, headers=AUTH) as client:
        yield app, client


def test_fuzzing_numbers_with_non_finite_and_extreme_values_finds_no_5xx(
    keyed: tuple[FastAPI, TestClient],
) -> None:
    _, client = keyed
    upload = client.post(
        "/v1/datasets", content=pairs_jsonl(), headers={"content-type": "application/jsonl"}
    )
    dataset_id = upload.json()["id"]
    statuses: Counter[int] = Counter()
    paths = numeric_paths()
    count = 0

    @given(values=st.dictionaries(st.sampled_from(paths), number_tokens(), min_size=1, max_size=4))
    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    def submit(values: dict[tuple[str, str], str]) -> None:
        nonlocal count
        count += 1
        # hang-*: one child holds the worker, every other accepted job waits: nothing trains.
        body = job_body(dataset_id, f"hang-fuzz-{count}", values)
        response = client.post(
            "/v1/jobs", content=body, headers={"content-type": "application/json"}
        )
        statuses[response.status_code] += 1
        assert response.status_code in (200, 202, 409, 422), (body, response.text)
        if response.status_code == 422:
            assert response.headers["content-type"] == "application/problem+json"
        if NON_FINITE.intersection(values.values()):
            assert response.status_code == 422, (body, response.text)

    submit()

    @given(
        name=st.sampled_from(["limit", "tail", "after"]),
        token=number_tokens(),
        route=st.sampled_from(["/v1/jobs", "/v1/jobs/job-0000000000000000/log"]),
    )
    @settings(max_examples=100, deadline=None, database=None, derandomize=True)
    def query(name: str, token: str, route: str) -> None:
        response = client.get(route, params={name: token})
        statuses[response.status_code] += 1
        assert response.status_code < 500, (route, name, token, response.text)

    query()
    listing = client.get("/v1/jobs")
    assert listing.status_code == 200, listing.text
    for job in listing.json()["jobs"]:
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
    logger.info("NUMBER FUZZ: %d job bodies; statuses %s", count, dict(sorted(statuses.items())))
    print(f"NUMBER FUZZ: {count} job bodies; statuses {dict(sorted(statuses.items()))}")
    assert not [status for status in statuses if status >= 500]
    assert statuses[422] > 0 and statuses[202] > 0  # both sides of every bound were reached


def every_route(app: FastAPI) -> list[tuple[str, str]]:
    found = set()

    def walk(table: list[Any]) -> None:
        for route in table:
            branch = getattr(route, "original_router", None)
            if branch is not None:
                walk(branch.routes)
            elif getattr(route, "methods", None):
                path = re.sub(r"\{[^}]+\}", "x-1", route.path)
                found.update((m, path) for m in route.methods - {"HEAD"})

    walk(list(app.router.routes))
    return sorted(found)


async def test_fuzzing_oversized_bodies_on_every_route_finds_no_5xx(
    keyed: tuple[FastAPI, TestClient],
) -> None:
    app, _ = keyed
    statuses: Counter[int] = Counter()
    open_routes = {("GET", "/"), ("GET", "/health"), ("GET", "/login"), ("POST", "/login")}
    open_routes.add(("POST", "/logout"))
    requests = 0
    for method, path in every_route(app):
        limit = UPLOAD_LIMIT + 64 * 1024 if path in ("/v1/datasets", "/v1/files") else LIMIT
        for size in (limit + 1, 10 * limit, 100 * 1024 * 1024):
            for declared in (True, False):
                for keyed_request in (True, False):
                    headers = {"content-type": "application/json"}
                    headers |= AUTH if keyed_request else {}
                    headers |= {"content-length": str(size)} if declared else {}
                    answer = await raw_request(
                        app, method, path, offered=size, chunk=64 * 1024, headers=headers
                    )
                    requests += 1
                    statuses[answer.status] += 1
                    where = (method, path, size, declared, keyed_request, answer.status)
                    assert answer.status < 500, where
                    assert answer.consumed <= limit + 64 * 1024, where
                    if not keyed_request and (method, path) not in open_routes:
                        assert (answer.status, answer.consumed) == (401, 0), where
                    elif declared:
                        assert (answer.status, answer.consumed) == (413, 0), where
    print(f"OVERSIZED FUZZ: {requests} requests; statuses {dict(sorted(statuses.items()))}")
    assert requests >= 200
