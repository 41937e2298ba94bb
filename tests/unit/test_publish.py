"""publish() and the local adapter checks, against a fake vLLM behind httpx.MockTransport.

    .venv/bin/pytest tests/unit/test_publish.py

The fake keeps the served models and answers completions with log-probs that depend on the
model, so each test can make the adapter differ from the base or not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from cai.generator import (
    AdapterInvalid,
    AdapterNameTaken,
    AdapterNotListed,
    AdapterProbeFailed,
    AdapterRankTooHigh,
    GeneratorClient,
    PublishError,
    adapter_version_name,
    check_adapter,
    publish,
)


class FakeVllm:
    """Just enough of vLLM's API for publish: models, load/unload, completions, server_info."""

    def __init__(self, *, max_lora_rank: int = 16) -> None:
        self.max_lora_rank = max_lora_rank
        self.adapters: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.adapter_shift = 0.5  # how much an adapter moves the log-probs
        self.parent_override: str | None = None
        self.load_error: tuple[int, str] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        body = json.loads(request.content) if request.content else {}
        if path == "/server_info":
            config = {"lora_config": {"max_lora_rank": self.max_lora_rank}}
            return httpx.Response(200, json={"vllm_config": config})
        if path == "/v1/models":
            data = [{"id": "tiny", "root": "/m/tiny", "parent": None}]
            data += [
                {"id": name, "root": a["path"], "parent": self.parent_override or "tiny"}
                for name, a in self.adapters.items()
            ]
            return httpx.Response(200, json={"object": "list", "data": data})
        if path == "/v1/load_lora_adapter":
            if self.load_error is not None:
                status, message = self.load_error
                return _error(status, message)
            self.adapters[body["lora_name"]] = {"path": body["lora_path"]}
            return httpx.Response(200, text="Success")
        if path == "/v1/unload_lora_adapter":
            if body["lora_name"] not in self.adapters:
                return _error(404, f"The lora adapter '{body['lora_name']}' cannot be found.")
            del self.adapters[body["lora_name"]]
            return httpx.Response(200, text="Success")
        if path == "/v1/completions":
            shift = self.adapter_shift if body["model"] in self.adapters else 0.0
            return httpx.Response(200, json=_completion(body["model"], shift))
        return _error(404, "Not Found")

    @property
    def loads(self) -> int:
        return sum(1 for _, path in self.requests if path == "/v1/load_lora_adapter")


def _error(status: int, message: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"message": message, "type": "X", "param": None, "code": status}}
    )


def _completion(model: str, shift: float) -> dict[str, Any]:
    prompt_lp = [None] + [
        {str(10 + i): {"logprob": -6.0 - shift * i, "rank": 1, "decoded_token": "t"}}
        for i in range(1, 4)
    ]
    return {
        "id": "c",
        "model": model,
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
        "choices": [
            {
                "index": 0,
                "text": "::",  # same greedy text for base and adapter, as on the tiny model
                "finish_reason": "length",
                "stop_reason": None,
                "prompt_token_ids": [9, 11, 12, 13],
                "prompt_logprobs": prompt_lp,
                "logprobs": {
                    "tokens": [":", ":"],
                    "token_logprobs": [-5.0 - shift, -5.0],
                    "top_logprobs": [None, None],
                    "text_offset": [0, 1],
                },
            }
        ],
    }


def make_adapter(folder: Path, *, r: int = 8, weights: bool = True, **config: Any) -> Path:
    folder.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": r, "target_modules": ["q_proj"]}
    cfg.update(config)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return folder


@pytest.fixture
def fake() -> FakeVllm:
    return FakeVllm()


@pytest.fixture
def client(fake: FakeVllm) -> GeneratorClient:
    return GeneratorClient("http://gen.test", transport=httpx.MockTransport(fake), max_retries=0)


# ---- names --------------------------------------------------------------------------------


def test_adapter_version_name_is_stage_and_job_id() -> None:
    assert adapter_version_name(1, "job-3f2a") == "stage1-job-3f2a"
    assert adapter_version_name(2, "job-3f2a") != adapter_version_name(1, "job-3f2a")


def test_adapter_version_name_refuses_a_job_id_that_is_not_a_safe_name() -> None:
    with pytest.raises(ValueError, match="invalid name"):
        adapter_version_name(1, "../x")


# ---- local checks -------------------------------------------------------------------------


def test_check_adapter_reads_rank_and_targets(tmp_path: Path) -> None:
    info = check_adapter(make_adapter(tmp_path / "a", r=8), max_lora_rank=16)
    assert (info.rank, info.target_modules, info.weights_file) == (
        8,
        ["q_proj"],
        "adapter_model.safetensors",
    )


def test_check_adapter_takes_the_largest_rank_of_rank_pattern(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "a", r=8, rank_pattern={"down_proj": 32})
    with pytest.raises(AdapterRankTooHigh, match=r"rank 32.*--max-lora-rank 16"):
        check_adapter(folder, max_lora_rank=16)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.write_text("x"), p)[1], "is not a folder"),
        (lambda p: (p.mkdir(), p)[1], "no adapter_config.json"),
        (lambda p: make_adapter(p, weights=False), "has no weights"),
        (lambda p: make_adapter(p, modules_to_save=["lm_head"]), "modules_to_save"),
        (lambda p: make_adapter(p, peft_type="IA3"), "LoRA adapters only"),
        (lambda p: make_adapter(p, r=0), "no valid rank"),
    ],
    ids=["missing", "file", "no-config", "no-weights", "modules-to-save", "not-lora", "bad-rank"],
)
def test_check_adapter_refuses_what_vllm_cannot_load(
    tmp_path: Path, setup: Any, message: str
) -> None:
    path = setup(tmp_path / "adapter")
    with pytest.raises(AdapterInvalid, match=message):
        check_adapter(path)


# ---- publish ------------------------------------------------------------------------------


async def test_publish_loads_checks_parent_probes_and_reports(
    tmp_path: Path, fake: FakeVllm, client: GeneratorClient
) -> None:
    folder = make_adapter(tmp_path / "a")
    record = await publish(client, folder, "stage1-j1", base_model_name="tiny")
    assert fake.adapters == {"stage1-j1": {"path": str(folder.resolve())}}
    assert (record.name, record.rank, record.max_lora_rank) == ("stage1-j1", 8, 16)
    assert record.probe.text_differs is False  # only the log-probs tell them apart
    assert record.probe.max_abs_logprob_diff == pytest.approx(1.5)
    assert record.probe.differs
    assert record.seconds >= 0


async def test_publish_sends_the_server_path_when_given(
    tmp_path: Path, fake: FakeVllm, client: GeneratorClient
) -> None:
    folder = make_adapter(tmp_path / "a")
    record = await publish(
        client, folder, "stage1-j1", base_model_name="tiny", server_path="/shared/adapters/a"
    )
    assert fake.adapters["stage1-j1"]["path"] == "/shared/adapters/a" == record.path


async def test_a_missing_path_is_refused_without_loading(
    tmp_path: Path, fake: FakeVllm, client: GeneratorClient
) -> None:
    with pytest.raises(AdapterInvalid, match="does not exist"):
        await publish(client, tmp_path / "nope", "stage1-j1", base_model_name="tiny")
    assert fake.loads == 0


async def test_a_rank_above_the_servers_maximum_is_refused_without_loading(
    tmp_path: Path, fake: FakeVllm, client: GeneratorClient
) -> None:
    folder = make_adapter(tmp_path / "a", r=32)
    with pytest.raises(AdapterRankTooHigh, match="CAI_GENERATOR_MAX_LORA_RANK >= 32"):
        await publish(client, folder, "stage1-j1", base_model_name="tiny")
    assert fake.loads == 0


async def test_a_given_max_rank_is_used_instead_of_asking_the_server(
    tmp_path: Path, fake: FakeVllm, client: GeneratorClient
) -> None:
    folder = make_adapter(tmp_path / "a", r=8)
    with pytest.raises(AdapterRankTooHigh):
        await publish(client, folder, "stage1-j1", base_model_name="tiny", max_lora_rank=4)
    assert ("GET", "/server_info") not in fake.requests


async def test_a_name_in_use_is_refused_without_loading(
    tmp_path: Path, fake: FakeVllm, client: GeneratorClient
) -> None:
    await publish(client, make_adapter(tmp_path / "a"), "stage1-j1", base_model_name="tiny")
    with pytest.raises(AdapterNameTaken, match="new names"):
        await publish(client, make_adapter(tmp_path / "b"), "stage1-j1", base_model_name="tiny")
    assert fake.loads == 1
    assert fake.adapters["stage1-j1"]["path"].endswith("/a")


async def test_the_base_name_cannot_be_used_for_an_adapter(
    tmp_path: Path, fake: FakeVllm, client: GeneratorClient
) -> None:
    with pytest.raises(AdapterNameTaken):
        await publish(client, make_adapter(tmp_path / "a"), "tiny", base_model_name="tiny")
    assert fake.loads == 0


async def test_an_unsafe_name_is_refused(
    tmp_path: Path, fake: FakeVllm, client: GeneratorClient
) -> None:
    with pytest.raises(AdapterInvalid, match="invalid name"):
        await publish(client, make_adapter(tmp_path / "a"), "a/b", base_model_name="tiny")
    assert fake.requests == []


async def test_a_base_that_is_not_served_is_refused_without_loading(
    tmp_path: Path, fake: FakeVllm, client: GeneratorClient
) -> None:
    with pytest.raises(AdapterInvalid, match=r"'qwen' is not served.*served: tiny"):
        await publish(client, make_adapter(tmp_path / "a"), "stage1-j1", base_model_name="qwen")
    assert fake.loads == 0


async def test_an_adapter_that_changes_nothing_is_unloaded_and_fails(
    tmp_path: Path, fake: FakeVllm, client: GeneratorClient
) -> None:
    fake.adapter_shift = 0.0
    with pytest.raises(AdapterProbeFailed, match="does not change the output"):
        await publish(client, make_adapter(tmp_path / "a"), "stage1-j1", base_model_name="tiny")
    assert fake.adapters == {}
    assert ("POST", "/v1/unload_lora_adapter") in fake.requests


async def test_an_adapter_listed_under_another_parent_is_unloaded_and_fails(
    tmp_path: Path, fake: FakeVllm, client: GeneratorClient
) -> None:
    fake.parent_override = "other"
    with pytest.raises(AdapterNotListed, match="parent 'other'"):
        await publish(client, make_adapter(tmp_path / "a"), "stage1-j1", base_model_name="tiny")
    assert fake.adapters == {}


async def test_a_load_refused_by_the_server_raises_with_its_message(
    tmp_path: Path, fake: FakeVllm, client: GeneratorClient
) -> None:
    fake.load_error = (500, "Worker failed with error 'unsupported module'")
    with pytest.raises(PublishError, match=r"refused adapter.*unsupported module"):
        await publish(client, make_adapter(tmp_path / "a"), "stage1-j1", base_model_name="tiny")
    assert fake.adapters == {}
