"""The trainer over real HTTP (`python -m services.trainer` on a free port): uploads that
stop being read at the limit, the bearer key on every route, concurrent idempotent submits,
event streams, and (slow) a real DPO job on the tiny model from upload to registered adapter.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cai.trainer import TrainerAuthError, TrainerClient
from protocol.jobs import DpoJobSpec, DpoSpec, JobState, LoraSpec
from tests.integration.conftest import TrainerService
from tests.unit.trainer.conftest import pairs_jsonl

JSONL = {"content-type": "application/jsonl"}


def test_an_oversized_upload_is_refused_before_it_is_all_sent(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer(max_upload_bytes=10_000)
    offered = 50 * 1024 * 1024
    sent = 0
    with socket.create_connection(("127.0.0.1", trainer.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: application/jsonl\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 8192
        sock.settimeout(0.05)
        answer = b""
        try:
            while sent < offered:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                try:
                    answer = sock.recv(65536)
                except TimeoutError:
                    continue
                if answer:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(10)
        if not answer:
            answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer
    assert sent < offered // 10
    datasets = trainer.data_dir / "datasets"
    assert not datasets.exists() or not any(datasets.iterdir())


def _answer_to_headers_only(port: int, head: bytes) -> bytes:
    """Send a request's head and none of its body; return what the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


@pytest.mark.parametrize(
    ("api_key", "auth", "status"),
    [("k-789", b"", b"401"), ("k-789", b"Authorization: Bearer k-789\r\n", b"413")],
)
def test_a_100_mb_job_is_answered_before_its_body_is_sent(
    start_trainer: Callable[..., TrainerService], api_key: str, auth: bytes, status: bytes
) -> None:
    # Without the key: 401; with it: 413 (over CAI_TRAINER_MAX_REQUEST_BYTES). Either way the
    # server answers from the head alone: not one byte of the 100 MB was sent.
    trainer = start_trainer(api_key=api_key)
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + auth
        + b"Content-Length: %d\r\n\r\n" % (100 * 1024 * 1024)
    )
    answer = _answer_to_headers_only(trainer.port, head)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
    assert b"application/problem+json" in answer


def test_with_a_key_every_route_but_health_needs_it(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer(api_key="k-123")
    anonymous = httpx.Client(base_url=trainer.base_url, timeout=30)
    with anonymous:
        assert anonymous.get("/health").status_code == 200
        for path in ("/metrics", "/v1/jobs", "/v1/jobs/job-x/events", "/v1/adapters", "/docs"):
            response = anonymous.get(path)
            assert response.status_code == 401, path
            assert response.headers["content-type"] == "application/problem+json"
    client = trainer.client()
    assert client.get("/metrics").status_code == 200
    assert "k-123" not in trainer.log_path.read_text()


async def test_the_client_reports_a_missing_key(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer(api_key="k-456")
    async with TrainerClient(trainer.base_url) as client:
        with pytest.raises(TrainerAuthError, match="Bearer"):
            await client.list_jobs()


async def test_concurrent_submits_with_repeated_keys_create_each_job_once(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer()
    async with TrainerClient(trainer.base_url) as client:
        dataset = await client.upload_dataset(pairs_jsonl())

        async def submit(i: int) -> str:
            spec = DpoJobSpec(base_model="tiny", dataset_id=dataset.id, output_name=f"ok-c{i % 5}")
            return (await client.submit_job(spec, idempotency_key=f"key-{i % 5}")).id

        ids = await asyncio.gather(*(submit(i) for i in range(40)))
        assert len(set(ids)) == 5
        assert len(await client.list_jobs()) == 5
        for job_id in set(ids):
            assert (await client.wait_for_job(job_id)).state == JobState.succeeded


async def test_cancel_a_running_job_over_http(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer()
    async with TrainerClient(trainer.base_url) as client:
        dataset = await client.upload_dataset(pairs_jsonl())
        spec = DpoJobSpec(base_model="tiny", dataset_id=dataset.id, output_name="hang-http")
        job = await client.submit_job(spec)
        async for event in client.events(job.id):
            if event.type == "progress":
                break
        cancelled = await client.cancel_job(job.id)
        assert cancelled.state == JobState.cancelled
        states = [e.state for e in [e async for e in client.events(job.id)] if e.type == "state"]
        assert states == [JobState.queued, JobState.running, JobState.cancelled]


# ---- the real DPO body -----------------------------------------------------------------


def preference_jsonl(n: int, seed: int) -> bytes:
    from tests.integration.test_dpo_job import preference_rows

    return "".join(json.dumps(row) + "\n" for row in preference_rows(n, seed)).encode()


@pytest.mark.slow
async def test_upload_then_a_real_dpo_job_succeeds_with_progress_and_a_registered_adapter(
    start_trainer: Callable[..., TrainerService], tiny_model: Path
) -> None:
    trainer = start_trainer(fake_bodies=False)
    async with TrainerClient(trainer.base_url, timeout=120) as client:
        train = await client.upload_dataset(preference_jsonl(64, seed=1), name="train")
        held_out = await client.upload_dataset(preference_jsonl(32, seed=2), name="test")
        spec = DpoJobSpec(
            base_model="tiny",
            dataset_id=train.id,
            eval_dataset_id=held_out.id,
            output_name="tiny-dpo",
            lora=LoraSpec(r=8),
            # Random tiny weights need a large step to move within seconds (see
            # tests/integration/test_dpo_job.py).
            dpo=DpoSpec(learning_rate=5e-3, num_train_epochs=2, max_length=128, warmup_ratio=0.0),
        )
        job = await client.submit_job(spec, idempotency_key="real-dpo")
        events = [event async for event in client.events(job.id)]
        done = await client.get_job(job.id)
        assert done.state == JobState.succeeded, done.error

        states = [e.state for e in events if e.type == "state"]
        assert states == [JobState.queued, JobState.running, JobState.succeeded]
        progress = [e.progress for e in events if e.type == "progress" and e.progress]
        steps = [p.step for p in progress if p.step]
        total = progress[-1].total_steps
        assert total and steps[0] == 1 and steps[-1] == total
        assert steps == sorted(steps)
        assert any("loss" in p.metrics for p in progress)
        assert any("rewards/margins" in p.metrics for p in progress)

        adapter = await client.get_adapter("tiny-dpo")
        assert adapter.kind == "lora" and adapter.rank == 8 and adapter.job_id == job.id
        assert adapter.dataset_id == train.id
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(adapter.files)
        assert adapter.config, "the effective TRL/PEFT configs are stored with the adapter"
        assert adapter.metrics["eval/pair_accuracy"] > 0.5
        folder = Path(adapter.path)
        assert folder == trainer.data_dir / "adapters" / "tiny-dpo"
        assert json.loads((folder / "adapter_config.json").read_text())["r"] == 8
    assert trainer.integrity() == "ok"
    assert_adapter_changes_outputs(tiny_model, folder)


def assert_adapter_changes_outputs(base: Path, adapter: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    inputs = tokenizer("what is the answer:", return_tensors="pt")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        before = model(**inputs).logits
        tuned = PeftModel.from_pretrained(model, adapter)
        after = tuned(**inputs).logits
    assert not torch.allclose(before, after, atol=1e-4)
