"""Bad inputs, one table: each case is refused with its status and an
`application/problem+json` body whose `detail` says what to fix, and writes nothing (the data
dir's files with their sizes and every table's row count are the same before and after).
In-process: the app with its runner and real SQLite; two base models (`tiny`, `other`) under
the model root, a registered adapter trained on `tiny`, a training set and an eval set that
shares prompts with it.

    .venv/bin/pytest tests/reliability/test_bad_inputs.py
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.trainer.app import create_app
from services.trainer.core.config import TrainerSettings
from tests.reliability.conftest import JSONL, dpo_body, file_tree, row_counts
from tests.unit.trainer.conftest import pairs_jsonl, raw_request

LIMIT = 4096


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: dict[str, Any]
    text: str


@dataclass
class World:
    client: TestClient
    app: FastAPI
    settings: TrainerSettings
    dataset_id: str
    overlapping_eval_id: str
    adapter: str
    job_id: str

    def answer(self, response: Any) -> Answer:
        try:
            body = response.json()
        except ValueError:
            body = {}
        return Answer(
            response.status_code, response.headers.get("content-type", ""), body, response.text
        )

    def post_job(self, body: object, **headers: str) -> Answer:
        return self.answer(self.client.post("/v1/jobs", json=body, headers=headers))

    def post_raw(self, path: str, content: bytes, content_type: str) -> Answer:
        return self.answer(
            self.client.post(path, content=content, headers={"content-type": content_type})
        )

    def get(self, path: str) -> Answer:
        return self.answer(self.client.get(path))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("bad-inputs")
    models = root / "models"
    shutil.copytree(tiny_model, models / "tiny")
    shutil.copytree(tiny_model, models / "other")  # a second base: merging across bases
    settings = TrainerSettings(
        data_dir=root / "data",
        model_roots=[models],
        device="cpu",
        job_bodies={"dpo": "tests.reliability.bodies:run", "merge": "tests.reliability.bodies:run"},
        max_upload_bytes=LIMIT,
        max_request_bytes=LIMIT,
        max_job_steps=1000,
    )
    app = create_app(settings)
    with TestClient(app) as client:
        dataset_id = client.post("/v1/datasets", content=pairs_jsonl(4), headers=JSONL).json()["id"]
        overlapping = pairs_jsonl(2) + b'{"prompt": "new", "chosen": "x", "rejected": "y"}\n'
        eval_id = client.post("/v1/datasets", content=overlapping, headers=JSONL).json()["id"]
        job = client.post("/v1/jobs", json=dpo_body(dataset_id, "ok-base-adapter"))
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{job_id}").json()["state"] != "succeeded":
            assert time.monotonic() < deadline, "the setup job did not succeed"
            time.sleep(0.1)  # polling the job's state
        keyed = client.post(
            "/v1/jobs",
            json=dpo_body(dataset_id, "hang-keyed"),
            headers={"Idempotency-Key": "taken-key"},
        )
        assert keyed.status_code == 202
        client.post(f"/v1/jobs/{keyed.json()['id']}/cancel")
        yield World(client, app, settings, dataset_id, eval_id, "ok-base-adapter", job_id)


async def streamed_upload(world: World, offered: int, chunk: int = 1024) -> tuple[Answer, int]:
    """POST /v1/datasets straight into the ASGI app, the body handed out chunk by chunk with
    no Content-Length (as a chunked upload arrives); returns the answer and the bytes the
    app asked for before it answered."""
    consumed = 0
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        if consumed >= offered:
            return {"type": "http.disconnect"}
        consumed += chunk
        return {"type": "http.request", "body": b"x" * chunk, "more_body": consumed < offered}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/datasets",
        "raw_path": b"/v1/datasets",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/jsonl")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "state": {},
    }
    await world.app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
    answer = Answer(start["status"], headers.get("content-type", ""), json.loads(text), text)
    return answer, consumed


def multipart_over_limit(world: World) -> Answer:
    files = {"file": ("pairs.jsonl", pairs_jsonl(400), "application/jsonl")}
    return world.answer(world.client.post("/v1/datasets", files=files))


def row(prompt: str, chosen: str, rejected: str) -> bytes:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}).encode() + b"\n"


@dataclass(frozen=True)
class Case:
    id: str
    send: Callable[[World], Answer]
    status: int
    needles: tuple[str, ...]


def job(**fields: Any) -> Callable[[World], Answer]:
    return lambda w: w.post_job(dpo_body(w.dataset_id, "ok-new") | fields)


def raw_job(section: str, field: str, literal: str) -> Callable[[World], Answer]:
    """A job whose `section.field` is the JSON token `literal` (Infinity, NaN, 1e999, ...),
    which json.dumps would not write."""

    def send(w: World) -> Answer:
        head = json.dumps(dpo_body(w.dataset_id, "ok-new"))[:-1]
        tail = f'"{section}": {{"{field}": {literal}}}}}' if section else f'"{field}": {literal}}}'
        return w.post_raw("/v1/jobs", f"{head}, {tail}".encode(), "application/json")

    return send


def oversized(method: str, path: str) -> Callable[[World], Answer]:
    body = b" " * (LIMIT + 1)
    headers = {"content-type": "application/json"}
    return lambda w: w.answer(w.client.request(method, path, content=body, headers=headers))


CASES = [
    # -- bodies that cannot be read --------------------------------------------------------
    Case(
        "malformed-json",
        lambda w: w.post_raw("/v1/jobs", b'{"kind": "dpo",', "application/json"),
        400,
        ("not valid JSON", "send one JSON object"),
    ),
    Case(
        "json-body-not-utf8",
        lambda w: w.post_raw(
            "/v1/jobs", b'{"kind": "dpo", "output_name": "\xff\xfe"}', "application/json"
        ),
        400,
        ("could not be read", "encoded as UTF-8"),
    ),
    Case(
        "json-body-is-a-list",
        lambda w: w.post_job([1, 2]),
        422,
        ("should be a valid dictionary or object",),
    ),
    # -- well-formed, wrong shape ----------------------------------------------------------
    Case("wrong-type-rank", job(lora={"r": "big"}), 422, ("lora.r", "integer")),
    Case("wrong-type-dataset-id", job(dataset_id=5), 422, ("dataset_id", "string")),
    Case(
        "wrong-type-epochs", job(dpo={"num_train_epochs": "many"}), 422, ("dpo.num_train_epochs",)
    ),
    Case("unknown-field", job(surprise=1), 422, ("`surprise` is not a known field", "remove it")),
    Case("unknown-nested-field", job(lora={"rank": 8}), 422, ("`lora.rank` is not a known field",)),
    Case("negative-learning-rate", job(dpo={"learning_rate": -1e-5}), 422, ("greater than 0",)),
    Case("rank-zero", job(lora={"r": 0}), 422, ("lora.r", "greater than or equal to 1")),
    Case("4bit-on-cpu", job(load_in_4bit=True), 422, ("load_in_4bit", "set load_in_4bit to false")),
    # -- issue 13, class 1: non-finite numbers -------------------------------------------
    Case(
        "beta-infinity",
        raw_job("dpo", "beta", "Infinity"),
        422,
        ("`dpo.beta`", "Infinity and NaN are not accepted", "allowed: more than 0.0"),
    ),
    Case("learning-rate-nan", raw_job("dpo", "learning_rate", "NaN"), 422, ("dpo.learning_rate",)),
    Case("dropout-minus-infinity", raw_job("lora", "lora_dropout", "-Infinity"), 422, ("lora",)),
    Case("epochs-1e999", raw_job("dpo", "num_train_epochs", "1e999"), 422, ("finite",)),
    # -- issue 13, class 2: absurd magnitudes ---------------------------------------------
    Case(
        "epochs-1e12",
        job(dpo={"num_train_epochs": 1e12}),
        422,
        ("dpo.num_train_epochs", "at most 1000.0"),
    ),
    Case("beta-1e308", job(dpo={"beta": 1e308}), 422, ("dpo.beta", "at most 100.0")),
    Case("rank-past-vllm", job(lora={"r": 1024}), 422, ("lora.r", "at most 512")),
    Case(
        "alpha-huge-int", raw_job("lora", "lora_alpha", "1" + "0" * 400), 422, ("lora.lora_alpha",)
    ),
    Case("processes-1000", job(num_processes=1000), 422, ("num_processes", "at most 16")),
    Case(
        "steps-over-the-ceiling",
        job(dpo={"num_train_epochs": 1000}),
        422,
        ("2000 optimiser steps", "ceiling of 1000", "CAI_TRAINER_MAX_JOB_STEPS"),
    ),
    # -- issue 13, class 3: checks that can run at submission ------------------------------
    Case(
        "unknown-loss-type",
        job(dpo={"loss_type": "sigmoyd"}),
        422,
        ("`dpo.loss_type`", "unknown loss_type 'sigmoyd'", "sigmoid", "ipo"),
    ),
    Case(
        "target-module-typo",
        job(lora={"target_modules": ["qproj"]}),
        422,
        ("lora.target_modules", "'qproj' names no linear layer", "q_proj, up_proj, v_proj"),
    ),
    Case(
        "target-module-norm",
        job(lora={"target_modules": ["input_layernorm"]}),
        422,
        ("names no linear layer",),
    ),
    Case(
        "target-lm-head",
        job(lora={"target_modules": ["lm_head"]}),
        422,
        ("cannot be adapted", "remove them"),
    ),
    Case("seed-negative", job(seed=-1), 422, ("`seed`", "at least 0 and at most 4294967295")),
    Case("seed-2-to-the-32", job(seed=2**32), 422, ("`seed`", "at most 4294967295")),
    # -- issue 13, class 4: body limits on every route -------------------------------------
    Case(
        "job-body-over-the-limit",
        oversized("POST", "/v1/jobs"),
        413,
        ("limit of 4096 bytes", "CAI_TRAINER_MAX_REQUEST_BYTES"),
    ),
    Case("cancel-body-over-the-limit", oversized("POST", "/v1/jobs/x/cancel"), 413, ("4096",)),
    Case("get-with-a-body-over-the-limit", oversized("GET", "/v1/jobs"), 413, ("4096",)),
    Case("login-body-over-the-limit", oversized("POST", "/login"), 413, ("4096",)),
    # -- uploads ---------------------------------------------------------------------------
    Case(
        "upload-over-limit-by-content-length",
        lambda w: w.post_raw("/v1/datasets", pairs_jsonl(200), "application/jsonl"),
        413,
        ("limit of 4096 bytes", "CAI_TRAINER_MAX_UPLOAD_BYTES"),
    ),
    Case("multipart-over-limit", multipart_over_limit, 413, ("CAI_TRAINER_MAX_UPLOAD_BYTES",)),
    Case(
        "upload-not-utf8",
        lambda w: w.post_raw(
            "/v1/datasets",
            b'{"prompt": "p\xff", "chosen": "a", "rejected": "b"}\n',
            "application/jsonl",
        ),
        422,
        ("line 1", "not valid UTF-8", "save the file as UTF-8"),
    ),
    Case(
        "upload-latin1-second-line",
        lambda w: w.post_raw(
            "/v1/datasets",
            row("p", "a", "b") + "caf\xe9".encode("latin-1") + b"\n",
            "application/jsonl",
        ),
        422,
        ("line 2", "UTF-8"),
    ),
    Case(
        "row-empty-chosen",
        lambda w: w.post_raw("/v1/datasets", row("p", "", "b"), "application/jsonl"),
        422,
        ("line 1", "`chosen`", "non-empty"),
    ),
    Case(
        "row-empty-rejected",
        lambda w: w.post_raw(
            "/v1/datasets", row("p", "a", "b") + row("q", "a", ""), "application/jsonl"
        ),
        422,
        ("line 2", "`rejected`", "non-empty"),
    ),
    Case(
        "row-identical-chosen-rejected",
        lambda w: w.post_raw(
            "/v1/datasets", row("p", "a", "b") + row("q", "same", "same"), "application/jsonl"
        ),
        422,
        ("line 2", "identical", "different `chosen` and `rejected`"),
    ),
    Case(
        "row-missing-rejected",
        lambda w: w.post_raw(
            "/v1/datasets", b'{"prompt": "p", "chosen": "a"}\n', "application/jsonl"
        ),
        422,
        ("line 1", "`rejected` is missing"),
    ),
    Case(
        "row-malformed-json",
        lambda w: w.post_raw(
            "/v1/datasets", row("p", "a", "b") + b'{"prompt": ', "application/jsonl"
        ),
        422,
        ("line 2", "not valid JSON", "one JSON object per line"),
    ),
    Case(
        "empty-upload",
        lambda w: w.post_raw("/v1/datasets", b"", "application/jsonl"),
        422,
        ("no rows",),
    ),
    # -- names that would escape their folder ----------------------------------------------
    Case(
        "name-dotdot",
        job(output_name="../evil"),
        422,
        ("output_name", "invalid name", "no '/', '..'"),
    ),
    Case("name-slash", job(output_name="a/b"), 422, ("output_name", "invalid name")),
    Case("name-nul", job(output_name="a\x00b"), 422, ("output_name", "invalid name")),
    Case("name-300-chars", job(output_name="a" * 300), 422, ("output_name", "1-128 characters")),
    Case(
        "dataset-label-dotdot",
        lambda w: w.answer(
            w.client.post("/v1/datasets?name=../x", content=row("p", "a", "b"), headers=JSONL)
        ),
        400,
        ("query parameter `name`", "invalid name"),
    ),
    Case(
        "dataset-label-nul",
        lambda w: w.answer(
            w.client.post(
                "/v1/datasets", params={"name": "a\x00b"}, content=row("p", "a", "b"), headers=JSONL
            )
        ),
        400,
        ("query parameter `name`",),
    ),
    Case(
        "base-model-dotdot",
        job(base_model="../../etc"),
        422,
        ("unknown base model", "available: other, tiny"),
    ),
    Case("base-model-absolute", job(base_model="/etc"), 422, ("unknown base model",)),
    Case(
        "adapter-path-dotdot",
        lambda w: w.get("/v1/adapters/..%2F..%2Fetc"),
        404,
        ("see /docs",),
    ),
    Case(
        "dataset-path-dotdot",
        lambda w: w.get("/v1/datasets/..%2Ftrainer.db"),
        404,
        ("see /docs",),
    ),
    # -- unknown ids ---------------------------------------------------------------------
    Case(
        "unknown-job",
        lambda w: w.get("/v1/jobs/job-0000000000000000"),
        404,
        ("unknown job", "GET /v1/jobs"),
    ),
    Case(
        "unknown-job-cancel",
        lambda w: w.answer(w.client.post("/v1/jobs/job-0000000000000000/cancel")),
        404,
        ("unknown job",),
    ),
    Case(
        "unknown-job-events",
        lambda w: w.get("/v1/jobs/job-0000000000000000/events"),
        404,
        ("unknown job",),
    ),
    Case(
        "unknown-job-log",
        lambda w: w.get("/v1/jobs/job-0000000000000000/log"),
        404,
        ("unknown job",),
    ),
    Case(
        "unknown-dataset",
        lambda w: w.get("/v1/datasets/ds-0000000000000000"),
        404,
        ("unknown dataset", "POST /v1/datasets"),
    ),
    Case(
        "unknown-dataset-in-job",
        job(dataset_id="ds-0000000000000000"),
        422,
        ("dataset_id", "upload it first"),
    ),
    Case(
        "unknown-adapter",
        lambda w: w.get("/v1/adapters/nobody"),
        404,
        ("unknown adapter", "GET /v1/adapters"),
    ),
    Case(
        "unknown-parent-adapter",
        job(parent_adapter="nobody"),
        422,
        ("parent_adapter", "GET /v1/adapters"),
    ),
    Case(
        "merge-unknown-adapter",
        lambda w: w.post_job({"kind": "merge", "adapter": "nobody", "output_name": "m"}),
        422,
        ("adapter 'nobody'", "GET /v1/adapters"),
    ),
    # -- requests that are well-formed but wrong -------------------------------------------
    Case(
        "merge-onto-another-base",
        lambda w: w.post_job(
            {"kind": "merge", "adapter": w.adapter, "base_model": "other", "output_name": "m"}
        ),
        422,
        ("was trained on 'tiny'", "leave base_model out"),
    ),
    Case(
        "continue-an-adapter-on-another-base",
        job(base_model="other", parent_adapter="ok-base-adapter"),
        422,
        ("was trained on 'tiny'", "continue it on its own base"),
    ),
    Case(
        "eval-overlaps-train",
        lambda w: w.post_job(
            dpo_body(w.dataset_id, "ok-new", eval_dataset_id=w.overlapping_eval_id)
        ),
        422,
        ("shares 2 prompt(s)", "split train and eval by prompt"),
    ),
    Case(
        "eval-is-train",
        lambda w: w.post_job(dpo_body(w.dataset_id, "ok-new", eval_dataset_id=w.dataset_id)),
        422,
        ("eval_dataset_id is the training dataset", "upload a separate eval split"),
    ),
    Case(
        "output-name-registered",
        job(output_name="ok-base-adapter"),
        409,
        ("already registered", "choose a new name"),
    ),
    Case(
        "idempotency-key-reused-with-another-body",
        lambda w: w.post_job(
            dpo_body(w.dataset_id, "ok-other"), **{"Idempotency-Key": "taken-key"}
        ),
        409,
        ("different body", "use a new key"),
    ),
    Case(
        "idempotency-key-with-spaces",
        lambda w: w.post_job(dpo_body(w.dataset_id, "ok-new"), **{"Idempotency-Key": "a b"}),
        400,
        ("Idempotency-Key", "visible ASCII"),
    ),
    Case(
        "cancel-a-finished-job",
        lambda w: w.answer(w.client.post(f"/v1/jobs/{w.job_id}/cancel")),
        409,
        ("already ended", "nothing to cancel"),
    ),
    Case(
        "events-bad-last-event-id",
        lambda w: w.answer(
            w.client.get(f"/v1/jobs/{w.job_id}/events", headers={"Last-Event-ID": "x"})
        ),
        400,
        ("Last-Event-ID must be the integer",),
    ),
]


def assert_problem(answer: Answer, status: int, needles: tuple[str, ...]) -> None:
    assert answer.status == status, answer.text
    assert answer.content_type.startswith("application/problem+json"), answer.content_type
    assert answer.body["status"] == status
    assert answer.body["title"]
    for needle in needles:
        assert needle in answer.body["detail"], (needle, answer.body["detail"])
    assert "Traceback" not in answer.text


def snapshot(world: World) -> tuple[dict[str, int], dict[str, int]]:
    data = world.settings.data_dir
    return file_tree(data), row_counts(data / "trainer.db")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_is_refused_with_what_to_fix_and_writes_nothing(
    world: World, case: Case
) -> None:
    before = snapshot(world)
    assert_problem(case.send(world), case.status, case.needles)
    assert snapshot(world) == before


async def test_a_streamed_upload_over_the_limit_is_refused_without_reading_it_all(
    world: World,
) -> None:
    before = snapshot(world)
    offered = 256 * 1024 * 1024
    answer, consumed = await streamed_upload(world, offered)
    assert_problem(answer, 413, ("limit of 4096 bytes", "CAI_TRAINER_MAX_UPLOAD_BYTES"))
    # Reading stopped at the first chunk past the limit, not at the end of 256 MiB.
    assert consumed <= LIMIT + 1024, consumed
    assert snapshot(world) == before


async def test_without_the_key_a_100_mb_job_body_is_answered_401_unread(
    settings_factory: Callable[..., TrainerSettings],
) -> None:
    app = create_app(settings_factory(api_key="bad-inputs-key"))
    with TestClient(app):
        for headers in ({}, {"content-length": str(100 * 1024 * 1024)}):
            answer = await raw_request(
                app, "POST", "/v1/jobs", offered=100 * 1024 * 1024, chunk=1 << 20, headers=headers
            )
            assert (answer.status, answer.consumed) == (401, 0)
            assert answer.headers["content-type"] == "application/problem+json"


def test_the_table_covers_every_kind_the_issue_names() -> None:
    ids = {c.id for c in CASES}
    for needed in (
        "malformed-json",
        "wrong-type-rank",
        "unknown-field",
        "upload-over-limit-by-content-length",
        "upload-not-utf8",
        "row-empty-chosen",
        "row-identical-chosen-rejected",
        "name-dotdot",
        "name-slash",
        "name-nul",
        "name-300-chars",
        "unknown-job",
        "unknown-dataset",
        "unknown-adapter",
        "merge-onto-another-base",
        "eval-overlaps-train",
        # issue 13
        "beta-infinity",
        "epochs-1e12",
        "steps-over-the-ceiling",
        "unknown-loss-type",
        "target-module-typo",
        "seed-2-to-the-32",
        "job-body-over-the-limit",
    ):
        assert needed in ids
