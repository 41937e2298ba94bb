"""Bad inputs answer 4xx with a problem+json body that says what to fix, and write nothing
(issue 3's table). In-process: the app with its runner, real SQLite, stand-in job bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.trainer.app import create_app
from services.trainer.core.config import TrainerSettings
from tests.unit.trainer.conftest import pairs_jsonl, snapshot

JSONL = {"content-type": "application/jsonl"}


def assert_problem(response: Any, status: int, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    for needle in needles:
        assert needle in body["detail"], body["detail"]
    assert "Traceback" not in response.text
    return body


def dpo(dataset_id: str, **fields: Any) -> dict[str, Any]:
    return (
        {"kind": "dpo", "base_model": "tiny", "dataset_id": dataset_id}
        | {"output_name": "ok-adapter"}
        | fields
    )


UPLOAD_CASES = [
    pytest.param(
        b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", ',
        422,
        ["line 2", "not valid JSON"],
        id="malformed-json-row",
    ),
    pytest.param(
        b'{"prompt": "p", "chosen": "a"}\n',
        422,
        ["line 1", "`rejected` is missing"],
        id="row-missing-rejected",
    ),
    pytest.param(
        b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
        b'{"prompt": "p", "chosen": "same", "rejected": "same"}\n',
        422,
        ["line 2", "identical"],
        id="chosen-equals-rejected",
    ),
    pytest.param(
        b'{"prompt": "p", "chosen": "", "rejected": "b"}\n',
        422,
        ["line 1", "`chosen`"],
        id="empty-chosen",
    ),
    pytest.param(b"", 422, ["no rows"], id="empty-dataset"),
    pytest.param(b"\n\n  \n", 422, ["no rows"], id="blank-lines-only"),
    pytest.param(
        b'{"prompt": "p\xff", "chosen": "a", "rejected": "b"}\n',
        422,
        ["line 1", "UTF-8"],
        id="non-utf8",
    ),
    pytest.param(b'["p", "a", "b"]\n', 422, ["line 1", "not an object"], id="row-not-object"),
]


@pytest.mark.parametrize(("body", "status", "needles"), UPLOAD_CASES)
def test_bad_upload_is_refused_and_writes_nothing(
    client: TestClient, settings: TrainerSettings, body: bytes, status: int, needles: list[str]
) -> None:
    before = snapshot(settings.data_dir)
    response = client.post("/v1/datasets", content=body, headers=JSONL)
    assert_problem(response, status, *needles)
    assert snapshot(settings.data_dir) == before


def test_bad_upload_names_the_line_in_the_body(client: TestClient) -> None:
    body = pairs_jsonl(3) + b'{"prompt": "x", "chosen": "a"}\n'
    problem = assert_problem(client.post("/v1/datasets", content=body, headers=JSONL), 422)
    assert problem["line"] == 4


JOB_CASES = [
    pytest.param(
        lambda ds: dpo("ds-0000000000000000"),
        422,
        ["dataset_id", "POST /v1/datasets"],
        id="unknown-dataset-id",
    ),
    pytest.param(
        lambda ds: dpo(ds, output_name="../evil"),
        422,
        ["output_name", "invalid name"],
        id="dotdot-in-name",
    ),
    pytest.param(lambda ds: dpo(ds, output_name="a/b"), 422, ["output_name"], id="slash-in-name"),
    pytest.param(lambda ds: dpo(ds, output_name="a\x00b"), 422, ["output_name"], id="nul-in-name"),
    pytest.param(lambda ds: dpo(ds, output_name="a" * 300), 422, ["output_name"], id="long-name"),
    pytest.param(
        lambda ds: dpo(ds, dpo={"learning_rate": -1e-5}),
        422,
        ["dpo.learning_rate", "greater than 0"],
        id="negative-learning-rate",
    ),
    pytest.param(
        lambda ds: dpo(ds, lora={"r": 0}),
        422,
        ["lora.r", "greater than or equal to 1"],
        id="rank-zero",
    ),
    pytest.param(
        lambda ds: dpo(ds, load_in_4bit=True), 422, ["load_in_4bit", "CUDA"], id="4bit-on-cpu"
    ),
    pytest.param(
        lambda ds: dpo(ds, dpo={"optimizer": "adamw_8bit"}),
        422,
        ["adamw_8bit", "CUDA", "auto"],
        id="8bit-optimizer-on-cpu",
    ),
    pytest.param(
        lambda ds: dpo(ds, dpo={"optimizer": "sgd"}),
        422,
        ["dpo.optimizer", "adamw_8bit"],
        id="unknown-optimizer",
    ),
    pytest.param(
        lambda ds: dpo(ds, base_model="no-such-model"),
        422,
        ["unknown base model", "available: ", "tiny"],  # other built models may be listed too
        id="unknown-base-model",
    ),
    pytest.param(
        lambda ds: dpo(ds, base_model="../../etc"),
        422,
        ["unknown base model"],
        id="base-model-escaping-roots",
    ),
    pytest.param(
        lambda ds: dpo(ds, base_model="/etc"),
        422,
        ["unknown base model"],
        id="base-model-absolute-outside-roots",
    ),
    pytest.param(
        lambda ds: dpo(ds, base_model="Qwen/Qwen2.5-0.5B"),
        422,
        ["hub ids are off"],
        id="hub-id-not-allowed",
    ),
    pytest.param(
        lambda ds: dpo(ds, parent_adapter="nobody"),
        422,
        ["parent_adapter"],
        id="unknown-parent-adapter",
    ),
    pytest.param(
        lambda ds: dpo(ds, eval_dataset_id=ds), 422, ["eval_dataset_id"], id="eval-is-train"
    ),
    pytest.param(
        lambda ds: dpo(ds, surprise=1), 422, ["`surprise` is not a known field"], id="unknown-field"
    ),
    pytest.param(lambda ds: dpo(ds, lora={"r": "big"}), 422, ["lora.r"], id="wrong-type"),
    pytest.param(
        lambda ds: {"kind": "sft", "output_name": "x"}, 422, ["`kind` must be"], id="unknown-kind"
    ),
    pytest.param(lambda ds: {"base_model": "tiny"}, 422, ["`kind` must be"], id="missing-kind"),
    pytest.param(
        lambda ds: {"kind": "dpo", "base_model": "tiny", "output_name": "x"},
        422,
        ["`dataset_id` is required"],
        id="missing-field",
    ),
    pytest.param(
        lambda ds: {"kind": "merge", "adapter": "nobody", "output_name": "m"},
        422,
        ["adapter 'nobody'"],
        id="merge-unknown-adapter",
    ),
]


@pytest.mark.parametrize(("make_body", "status", "needles"), JOB_CASES)
def test_bad_job_is_refused_and_writes_nothing(
    client: TestClient,
    settings: TrainerSettings,
    dataset_id: str,
    make_body: Any,
    status: int,
    needles: list[str],
) -> None:
    before = snapshot(settings.data_dir)
    response = client.post("/v1/jobs", json=make_body(dataset_id))
    assert_problem(response, status, *needles)
    assert snapshot(settings.data_dir) == before


def test_malformed_json_body_is_a_400(client: TestClient, settings: TrainerSettings) -> None:
    before = snapshot(settings.data_dir)
    response = client.post(
        "/v1/jobs", content=b'{"kind": "dpo",', headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "not valid JSON")
    assert snapshot(settings.data_dir) == before


def test_unknown_ids_are_404(client: TestClient) -> None:
    assert_problem(client.get("/v1/jobs/job-nope"), 404, "unknown job")
    assert_problem(client.post("/v1/jobs/job-nope/cancel"), 404, "unknown job")
    assert_problem(client.get("/v1/jobs/job-nope/events"), 404, "unknown job")
    assert_problem(client.get("/v1/datasets/ds-0123456789abcdef"), 404, "unknown dataset")
    assert_problem(client.get("/v1/datasets/..%2F..%2Fetc"), 404)
    assert_problem(client.get("/v1/adapters/nobody"), 404, "unknown adapter")


def test_unknown_route_and_wrong_method_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/v2/nothing"), 404, "no route GET /v2/nothing")
    response = client.delete("/v1/jobs")
    assert_problem(response, 405, "GET, POST")
    assert response.headers["allow"] == "GET, POST"


def test_upload_over_the_limit_is_413_from_content_length(
    settings_factory: Any, tmp_path: Path
) -> None:
    settings = settings_factory(max_upload_bytes=100)
    with TestClient(create_app(settings)) as client:
        before = snapshot(settings.data_dir)
        assert_problem(
            client.post("/v1/datasets", content=pairs_jsonl(10), headers=JSONL),
            413,
            "CAI_TRAINER_MAX_UPLOAD_BYTES",
        )
        assert snapshot(settings.data_dir) == before


def test_chunked_upload_over_the_limit_is_413(settings_factory: Any) -> None:
    # No Content-Length: the limit is enforced while streaming (over a real socket, that it
    # stops reading early is shown in tests/integration/test_trainer_api.py).
    settings = settings_factory(max_upload_bytes=1000)

    def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 1000

    with TestClient(create_app(settings)) as client:
        before = snapshot(settings.data_dir)
        response = client.post("/v1/datasets", content=chunks(), headers=JSONL)
        assert_problem(response, 413)
        assert snapshot(settings.data_dir) == before


def test_multipart_upload_over_the_limit_is_413(settings_factory: Any) -> None:
    settings = settings_factory(max_upload_bytes=100)
    with TestClient(create_app(settings)) as client:
        files = {"file": ("pairs.jsonl", pairs_jsonl(2000), "application/jsonl")}
        assert_problem(client.post("/v1/datasets", files=files), 413)


def test_same_bytes_give_the_same_dataset(client: TestClient) -> None:
    first = client.post("/v1/datasets", content=pairs_jsonl(), headers=JSONL)
    again = client.post("/v1/datasets", files={"file": ("x.jsonl", pairs_jsonl())})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["id"].startswith("ds-") and len(first.json()["id"]) == 19
    assert client.get(f"/v1/datasets/{first.json()['id']}").json()["rows"] == 4


def test_metadata_keys_are_kept(client: TestClient) -> None:
    body = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "id": 7}).encode()
    record = client.post("/v1/datasets", content=body, headers=JSONL).json()
    assert record["metadata_keys"] == ["id"]


def test_output_name_of_a_queued_job_is_taken(
    settings_factory: Any, dataset_id: str, client: TestClient
) -> None:
    first = client.post("/v1/jobs", json=dpo(dataset_id, output_name="hang-a"))
    assert first.status_code == 202
    problem = assert_problem(
        client.post("/v1/jobs", json=dpo(dataset_id, output_name="hang-a")), 409, "hang-a"
    )
    assert problem["field"] == "output_name"
    client.post(f"/v1/jobs/{first.json()['id']}/cancel")


def test_an_eval_set_sharing_prompts_with_the_train_set_is_refused(
    client: TestClient, settings: TrainerSettings, dataset_id: str
) -> None:
    overlapping = pairs_jsonl(2) + b'{"prompt": "new", "chosen": "x", "rejected": "y"}\n'
    eval_id = client.post("/v1/datasets", content=overlapping, headers=JSONL).json()["id"]
    before = snapshot(settings.data_dir)
    response = client.post("/v1/jobs", json=dpo(dataset_id, eval_dataset_id=eval_id))
    assert_problem(response, 422, "shares 2 prompt(s)", "split train and eval by prompt")
    assert snapshot(settings.data_dir) == before
    disjoint = client.post("/v1/datasets", content=pairs_jsonl(3, prefix="q"), headers=JSONL)
    ok = client.post("/v1/jobs", json=dpo(dataset_id, eval_dataset_id=disjoint.json()["id"]))
    assert ok.status_code == 202, ok.text
