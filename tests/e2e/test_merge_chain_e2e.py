"""`chain: merge` end to end: the trainer merges stage 1's adapter, `cai run` restarts the
embedded generator on the merged model, and stage 2 trains a fresh adapter on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from cai.stages.config import load_run_config
from cai.stages.runner import run_stages
from embedded.launch import restart_generator, stop_process
from tests.conftest import free_port
from tests.integration.conftest import TrainerService

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


@pytest.fixture
def embedded_generator(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """An embedded generator of its own (this test restarts it), PIDs under tmp_path."""
    run_dir = tmp_path / "embedded"
    monkeypatch.setenv("CAI_EMBEDDED_RUN_DIR", str(run_dir))
    port = free_port()
    restart_generator(str(tiny_model), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        pid_file = run_dir / "generator.pid"
        if pid_file.exists():
            stop_process(int(pid_file.read_text()))


async def test_merge_stage_trains_on_the_merged_model_served_by_a_restarted_generator(
    tmp_path: Path, embedded_generator: str, start_trainer: Callable[..., TrainerService]
) -> None:
    trainer = start_trainer(fake_bodies=False)
    data = yaml.safe_load(DEMO.read_text())
    data |= {"name": "merge", "run_root": str(tmp_path / "runs")}
    data["generator"] |= {"url": embedded_generator, "embedded": True}
    data["trainer"]["url"] = trainer.base_url
    data["pipeline"]["instructions"]["counts"] = {
        t: 6 for t in data["pipeline"]["instructions"]["counts"]
    }
    data["stages"] = [{"chain": "continue"}, {"chain": "merge"}]
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(data))
    config = load_run_config(path)

    result = await run_stages(config)

    assert len(result.stages) == 2
    first, second = (await _state(config.run_dir))["stages"]
    merged = second["merged_model"]
    assert merged == f"{first['adapter']}-merged"
    jobs = {job["id"]: job for job in trainer.client().get("/v1/jobs").json()["jobs"]}
    stage2_spec = jobs[second["job_id"]]["spec"]
    assert stage2_spec["base_model"] == merged and stage2_spec["parent_adapter"] is None
    merged_path = trainer.client().get(f"/v1/adapters/{merged}").json()["path"]
    async with httpx.AsyncClient(base_url=embedded_generator) as http:
        cards = {c["id"]: c for c in (await http.get("/v1/models")).json()["data"]}
    assert _same_folder(cards["tiny"]["root"], merged_path)
    assert cards[second["served_name"]]["parent"] == "tiny"
    assert first["served_name"] not in cards  # adapters of the old base do not survive


def _same_folder(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


async def _state(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    import json

    return dict(json.loads((run_dir / "state.json").read_text()))
