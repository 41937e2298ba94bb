"""Issue 13, class 3: what can be checked at submission is checked at submission, as a 422
that names the field and the allowed values, never a 202 and a failed job later: the loss
type, the LoRA targets against the base model's own layers (read from its weight headers, no
model load), the seed, and the device combinations a job would refuse once started."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from protocol.jobs import DPO_LOSS_TYPES, MAX_SEED
from services.trainer import submit
from services.trainer.app import create_app
from services.trainer.base_modules import WeightsUnreadable, linear_modules, target_names
from services.trainer.core.config import TrainerSettings
from tests.unit.trainer.conftest import pairs_jsonl, snapshot

QWEN_LEAVES = "down_proj, embed_tokens, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"


def job(dataset_id: str, **fields: Any) -> dict[str, Any]:
    base = {"kind": "dpo", "base_model": "tiny", "dataset_id": dataset_id, "output_name": "ok-c"}
    return base | fields


def refused(client: TestClient, settings: TrainerSettings, body: dict[str, Any]) -> dict[str, Any]:
    before = snapshot(settings.data_dir)
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert snapshot(settings.data_dir) == before
    problem: dict[str, Any] = response.json()
    return problem


# -- loss_type ---------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["sigmoyd", "", " , ", "sigmoid,bogus", "DPO", "x" * 600])
def test_an_unknown_loss_type_is_a_422_listing_the_known_ones(
    client: TestClient, settings: TrainerSettings, dataset_id: str, loss_type: str
) -> None:
    problem = refused(client, settings, job(dataset_id, dpo={"loss_type": loss_type}))
    assert "`dpo.loss_type`" in problem["detail"]
    assert problem["errors"][0]["field"] == "dpo.loss_type"
    if len(loss_type) < 512:
        assert "sigmoid" in problem["detail"] and "ipo" in problem["detail"]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "sigmoid,sft", "sigmoid, sft"])
def test_known_loss_types_and_combinations_are_accepted(
    client: TestClient, dataset_id: str, loss_type: str
) -> None:
    response = client.post(
        "/v1/jobs", json=job(dataset_id, output_name="hang-l", dpo={"loss_type": loss_type})
    )
    assert response.status_code == 202, response.text
    client.post(f"/v1/jobs/{response.json()['id']}/cancel")


def test_every_loss_type_is_named_in_the_field_description() -> None:
    from protocol.jobs import DpoSpec

    description = DpoSpec.model_fields["loss_type"].description or ""
    assert all(name in description for name in DPO_LOSS_TYPES)


# -- target_modules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "targets",
    [
        ["qproj"],  # a typo
        ["q_proj", "c_attn"],  # another family's name
        ["self_attn"],  # a container, not a layer
        ["input_layernorm"],  # a norm: a 1-D weight LoRA cannot adapt
        ["model.layers.99.self_attn.q_proj"],  # a layer the model does not have
    ],
)
def test_a_target_the_base_model_does_not_have_is_a_422_naming_the_real_ones(
    client: TestClient, settings: TrainerSettings, dataset_id: str, targets: list[str]
) -> None:
    problem = refused(client, settings, job(dataset_id, lora={"target_modules": targets}))
    assert problem["field"] == "lora.target_modules"
    assert "lora.target_modules" in problem["detail"] and "'tiny'" in problem["detail"]
    assert "q_proj" in problem["allowed"] and "input_layernorm" not in problem["allowed"]
    assert repr(targets[-1]) in problem["detail"]


@pytest.mark.parametrize(
    "targets", [["lm_head"], ["q_proj", "embed_tokens"], ["model.embed_tokens"]]
)
def test_targets_vllm_cannot_serve_are_refused_at_submission(
    client: TestClient, settings: TrainerSettings, dataset_id: str, targets: list[str]
) -> None:
    problem = refused(client, settings, job(dataset_id, lora={"target_modules": targets}))
    assert "cannot be adapted" in problem["detail"] and "remove them" in problem["detail"]


@pytest.mark.parametrize(
    "targets",
    [["q_proj", "v_proj"], ["self_attn.o_proj"], ["model.layers.1.mlp.down_proj"]],
)
def test_targets_by_leaf_suffix_or_full_name_are_accepted(
    client: TestClient, dataset_id: str, targets: list[str]
) -> None:
    body = job(dataset_id, output_name="hang-t", lora={"target_modules": targets})
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    client.post(f"/v1/jobs/{response.json()['id']}/cancel")


def write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    header = {
        name: {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}
        for name, shape in shapes.items()
    }
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_module_names_come_from_every_shard_of_a_sharded_checkpoint(tmp_path: Path) -> None:
    write_safetensors(
        tmp_path / "a.safetensors",
        {"model.layers.0.attn.c_attn.weight": [8, 8], "model.layers.0.ln.weight": [8]},
    )
    write_safetensors(tmp_path / "b.safetensors", {"lm_head.weight": [8, 8]})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"x": "a.safetensors", "y": "../../b.safetensors"}})
    )
    (tmp_path / "stray.safetensors").write_bytes(b"not listed in the index")
    # The index names files, never paths: "../../b" is read as b in the folder.
    assert linear_modules(tmp_path) == {"model.layers.0.attn.c_attn", "lm_head"}
    names = target_names({"model.layers.0.attn.c_attn"})
    assert {"c_attn", "attn.c_attn", "model.layers.0.attn.c_attn"} <= names
    assert "attn" not in names


def test_a_folder_without_safetensors_is_not_checked(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert linear_modules(tmp_path) is None
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert linear_modules(tmp_path / "model.gguf") is None


@pytest.mark.parametrize(
    "content", [b"", b"\x01\x02", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 3) + b"{]x"]
)
def test_a_damaged_weight_file_is_reported_not_crashed_on(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(WeightsUnreadable):
        linear_modules(tmp_path)


def test_a_base_with_unreadable_weights_is_a_422_on_base_model(
    settings_factory: Callable[..., TrainerSettings], tmp_path: Path, tiny_model: Path
) -> None:
    root = tmp_path / "models"
    (root / "broken").mkdir(parents=True)
    (root / "broken" / "config.json").write_text((tiny_model / "config.json").read_text())
    (root / "broken" / "model.safetensors").write_bytes(b"\x00" * 4)
    settings = settings_factory(model_roots=[root])
    with TestClient(create_app(settings)) as client:
        upload = client.post(
            "/v1/datasets", content=pairs_jsonl(), headers={"content-type": "application/jsonl"}
        )
        body = job(upload.json()["id"], base_model="broken")
        problem = refused(client, settings, body)
    assert problem["field"] == "base_model" and "cannot be read" in problem["detail"]


# -- seed --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 10**30, 1.5, "big"])
def test_a_seed_out_of_numpys_range_is_a_422_naming_the_range(
    client: TestClient, settings: TrainerSettings, dataset_id: str, seed: object
) -> None:
    problem = refused(client, settings, job(dataset_id, seed=seed))
    assert "`seed`" in problem["detail"]
    if isinstance(seed, int):
        assert "allowed: at least 0 and at most 4294967295" in problem["detail"]
        assert problem["errors"][0]["allowed"] == "at least 0 and at most 4294967295"


@pytest.mark.parametrize("seed", [0, 1234, MAX_SEED])
def test_seeds_in_range_are_accepted(client: TestClient, dataset_id: str, seed: int) -> None:
    response = client.post("/v1/jobs", json=job(dataset_id, output_name="hang-s", seed=seed))
    assert response.status_code == 202, response.text
    client.post(f"/v1/jobs/{response.json()['id']}/cancel")


# -- device combinations a started job would refuse -----------------------------------------


@pytest.fixture
def gpu_trainer(
    settings_factory: Callable[..., TrainerSettings],
) -> Iterator[tuple[TestClient, TrainerSettings, str]]:
    # Jobs are refused before they run, so no GPU is needed to pretend to have one.
    settings = settings_factory(device="cuda")
    with TestClient(create_app(settings)) as client:
        upload = client.post(
            "/v1/datasets", content=pairs_jsonl(), headers={"content-type": "application/jsonl"}
        )
        yield client, settings, upload.json()["id"]


@pytest.mark.parametrize(
    ("fields", "field", "needle"),
    [
        ({"load_in_4bit": True, "num_processes": 2}, "load_in_4bit", "num_processes to 1"),
        (
            {"dpo": {"optimizer": "adamw_8bit"}, "num_processes": 4},
            "dpo.optimizer",
            "auto or adamw",
        ),
    ],
)
def test_combinations_a_started_job_refuses_are_refused_at_submission(
    gpu_trainer: tuple[TestClient, TrainerSettings, str],
    monkeypatch: pytest.MonkeyPatch,
    fields: dict[str, Any],
    field: str,
    needle: str,
) -> None:
    client, settings, dataset_id = gpu_trainer
    monkeypatch.setattr(submit, "bitsandbytes_importable", lambda: True)
    problem = refused(client, settings, job(dataset_id, **fields))
    assert problem["field"] == field and needle in problem["detail"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"load_in_4bit": True}, "load_in_4bit"),
        ({"dpo": {"optimizer": "adamw_8bit"}}, "dpo.optimizer"),
    ],
)
def test_bitsandbytes_missing_is_refused_at_submission(
    gpu_trainer: tuple[TestClient, TrainerSettings, str],
    monkeypatch: pytest.MonkeyPatch,
    fields: dict[str, Any],
    field: str,
) -> None:
    client, settings, dataset_id = gpu_trainer
    monkeypatch.setattr(submit, "bitsandbytes_importable", lambda: False)
    problem = refused(client, settings, job(dataset_id, **fields))
    assert problem["field"] == field and "bitsandbytes" in problem["detail"]
