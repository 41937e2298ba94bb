"""A DPO job on two processes, through the real trainer service and `accelerate launch`.

    .venv/bin/python -m pytest tests/integration/test_distributed_dpo.py

On CPU the two ranks run DDP over gloo (accelerate 1.15 has no FSDP on CPU), through the
same launcher, supervisor, rank event files and adapter gathering as FSDP2 on GPUs. The
FSDP2 part that can run on CPU, gathering LoRA shards into the saved adapter, is checked
with torch's own `fully_shard` over gloo (tests/integration/fsdp_worker.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.integration.conftest import TrainerService, pid_alive, wait_state, wait_until
from tests.integration.test_dpo_job import preference_rows

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
JSONL = {"content-type": "application/jsonl"}
# Same tiny-model settings as test_dpo_job.py: 64 pairs, 2 epochs, a learning rate that
# moves random LoRA weights; 2 ranks x micro-batch 2 make 16 steps an epoch.
TINY_DPO = {"learning_rate": 5e-3, "num_train_epochs": 2, "max_length": 128, "warmup_ratio": 0.0}


def upload(client: httpx.Client, rows: list[dict[str, str]]) -> str:
    body = "".join(json.dumps(row) + "\n" for row in rows)
    response = client.post("/v1/datasets", content=body.encode(), headers=JSONL)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


def submit(client: httpx.Client, **spec: Any) -> str:
    body = {"kind": "dpo", "base_model": "tiny", "lora": {"r": 8}, "num_processes": 2, **spec}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def launch_pids(job_dir: Path) -> dict[int, bytes]:
    """The launcher and the ranks of a job: their command lines name its event folder."""
    marker = str(job_dir / "events").encode()
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and b"--rank-events-dir" in cmdline:
            pids[int(entry.name)] = cmdline
    return pids


@pytest.fixture(scope="module")
def service(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerService]:
    root = tmp_path_factory.mktemp("distributed")
    trainer = TrainerService(
        data_dir=root / "data",
        log_path=root / "trainer.log",
        env={
            "CAI_TRAINER_MODEL_ROOTS": str(tiny_model.parent),
            "CAI_TRAINER_DEVICE": "cpu",
            "CAI_TRAINER_CANCEL_GRACE_S": "2",
        },
    )
    trainer.start()
    yield trainer
    trainer.stop()


@pytest.fixture(scope="module")
def finished(service: TrainerService) -> dict[str, Any]:
    """One two-process DPO job over 64 consistent pairs, evaluated on 32 held-out ones."""
    client = service.client(timeout=120)
    train = upload(client, preference_rows(64, seed=0))
    heldout = upload(client, preference_rows(32, seed=1))
    job_id = submit(
        client, dataset_id=train, eval_dataset_id=heldout, output_name="two-ranks", dpo=TINY_DPO
    )
    job = wait_state(client, job_id, "succeeded", "failed", "cancelled", timeout_s=240)
    events = sse_events(client.get(f"/v1/jobs/{job_id}/events").text)
    adapter = client.get("/v1/adapters/two-ranks").json() if job["state"] == "succeeded" else {}
    return {"job": job, "events": events, "adapter": adapter, "dir": service.data_dir / "jobs"}


def test_two_process_job_succeeds_and_registers_its_adapter(finished: dict[str, Any]) -> None:
    job = finished["job"]
    assert job["state"] == "succeeded", job["error"]
    config = job["result"]["config"]
    assert config["num_processes"] == 2
    assert config["distributed"]["strategy"] == "ddp"  # CPU; fsdp2 on GPUs
    assert config["dpo"]["precompute_ref_log_probs"] is False
    assert finished["adapter"]["name"] == "two-ranks"


def test_both_ranks_trained(finished: dict[str, Any]) -> None:
    log = (finished["dir"] / finished["job"]["id"] / "job.log").read_text()
    assert "rank0 INFO" in log and "rank1 INFO" in log


def test_progress_reaches_the_event_stream_from_rank0_once_a_step(
    finished: dict[str, Any],
) -> None:
    steps = [e["progress"]["step"] for e in finished["events"] if e["type"] == "progress"]
    total = finished["job"]["progress"]["total_steps"]
    assert total == 32  # 64 pairs / (2 ranks x 2 pairs) x 2 epochs
    assert steps == sorted(set(steps))  # no rank but 0 reports
    assert steps[-1] == total


def test_rank0_logs_arrive_as_events(finished: dict[str, Any]) -> None:
    logs = [e["message"] for e in finished["events"] if e["type"] == "log"]
    assert any("held-out pair accuracy" in message for message in logs)


def test_the_adapter_learned_the_preference(finished: dict[str, Any]) -> None:
    metrics = finished["job"]["result"]["metrics"]
    assert metrics["eval/pair_accuracy"] > 0.8
    assert metrics["eval/margin"] > 0


def test_the_adapter_loads_in_one_process_and_changes_outputs(
    finished: dict[str, Any], tiny_model: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert finished["job"]["state"] == "succeeded"
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = PeftModel.from_pretrained(base, finished["adapter"]["path"])
    lora_a = model.get_parameter(
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    )
    assert tuple(lora_a.shape) == (8, base.config.hidden_size)  # whole tensors, not a shard
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert not torch.allclose(before, after)


def test_cancel_stops_every_rank(service: TrainerService, finished: dict[str, Any]) -> None:
    client = service.client(timeout=120)
    dataset_id = upload(client, preference_rows(64, seed=2))
    long_run = dict(TINY_DPO, num_train_epochs=200)
    job_id = submit(client, dataset_id=dataset_id, output_name="cancelled", dpo=long_run)
    job_dir = service.data_dir / "jobs" / job_id
    wait_until(
        lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] > 0,
        180,
        "the two-rank job to take a step",
    )
    launch = launch_pids(job_dir)
    ranks = [pid for pid, cmd in launch.items() if b"accelerate.commands.launch" not in cmd]
    assert len(ranks) == 2
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel").json()
    assert cancelled["state"] == "cancelled"
    wait_until(lambda: not any(pid_alive(pid) for pid in launch), 30, "the ranks to exit")
    assert client.get("/v1/adapters/cancelled").status_code == 404


def test_fsdp2_shards_are_gathered_whole_into_the_saved_adapter(
    tiny_model: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "fsdp"
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
            *("--master_port", str(_free_port()), "-m", "tests.integration.fsdp_worker"),
            *(str(tiny_model), str(out)),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=180,
    )
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    shards = [torch.load(out / f"shard-{rank}.pt") for rank in (0, 1)]
    assert len(saved) == len(shards[0]) > 0
    for name, first in shards[0].items():
        whole = torch.cat([first, shards[1][name]], dim=0)  # FSDP2 shards along dim 0
        assert torch.equal(saved[name.replace(".default", "")], whole), name
    assert any(t.abs().sum() > 0 for k, t in saved.items() if "lora_B" in k)  # trained


def _free_port() -> int:
    from tests.conftest import free_port

    return free_port()
