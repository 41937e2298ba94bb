"""`cai run` checks every server it will need before it touches its run folder (issue 13,
class 5): the generator and its replicas, a judge server a stage names, and the trainer."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.stages.config import RunConfig, load_run_config
from cai.stages.preflight import ServicesUnreachable, check_services, judge_servers
from cai.trainer.errors import TrainerConnectionError
from tests.conftest import closed_port_url

DEMO = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"


class Trainer:
    """A trainer client whose /health answers, or fails as a trainer that is not listening."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.asked = 0

    async def health(self) -> object:
        self.asked += 1
        if not self.up:
            raise TrainerConnectionError(
                "cannot reach the trainer at http://t (GET /health: ConnectError); is it running?",
                url="http://t",
            )
        return {"status": "ok"}


def config(tmp_path: Path, url: str, replicas: tuple[str, ...] = (), **overrides: Any) -> RunConfig:
    generator = {"url": url, "replicas": list(replicas)}
    return load_run_config(DEMO, generator=generator, run_root=str(tmp_path / "runs"), **overrides)


async def test_every_server_answering_lets_the_run_start(tmp_path, stub_generator_url):
    trainer = Trainer()
    await check_services(config(tmp_path, stub_generator_url), trainer)  # type: ignore[arg-type]
    assert trainer.asked == 1


async def test_a_generator_not_listening_is_named_with_its_setting(tmp_path):
    url = closed_port_url()
    with pytest.raises(ServicesUnreachable) as info:
        await check_services(config(tmp_path, url), Trainer())  # type: ignore[arg-type]
    message = str(info.value)
    assert url in message and "CAI_GENERATOR_URL" in message and "nothing was written" in message
    assert "\n" not in message


async def test_a_replica_down_is_named_even_when_the_first_server_answers(
    tmp_path, stub_generator_url
):
    replica = closed_port_url()
    run = config(tmp_path, stub_generator_url, replicas=[replica])
    with pytest.raises(ServicesUnreachable, match="--replica") as info:
        await check_services(run, Trainer())  # type: ignore[arg-type]
    assert replica in str(info.value) and stub_generator_url not in str(info.value)


async def test_a_judge_server_named_only_in_a_later_stage_is_checked_before_the_baseline(
    tmp_path, stub_generator_url
):
    judge = closed_port_url()
    stages = [
        {"chain": "continue"},
        {"chain": "continue", "pipeline": {"judge": {"endpoints": [{"url": judge}]}}},
    ]
    run = config(tmp_path, stub_generator_url, stages=stages)
    assert list(judge_servers(run)) == [judge]
    with pytest.raises(ServicesUnreachable, match=r"pipeline\.judge\.endpoints") as info:
        await check_services(run, Trainer())  # type: ignore[arg-type]
    assert judge in str(info.value)


async def test_a_trainer_not_listening_is_named_with_its_setting(tmp_path, stub_generator_url):
    with pytest.raises(ServicesUnreachable, match="CAI_TRAINER_URL") as info:
        await check_services(config(tmp_path, stub_generator_url), Trainer(up=False))  # type: ignore[arg-type]
    assert "http://t" in str(info.value)


def test_cai_run_against_servers_not_listening_exits_2_with_one_line_and_writes_nothing(
    tmp_path,
):
    generator, trainer = closed_port_url(), closed_port_url()
    runs = tmp_path / "runs"
    path = tmp_path / "run.yaml"
    path.write_text(DEMO.read_text().replace("name: demo", f"name: down\nrun_root: {runs}"))
    started = time.monotonic()
    result = CliRunner().invoke(
        app,
        ["run", str(path), "--generator-url", generator, "--trainer-url", trainer, "--no-progress"],
    )
    elapsed = time.monotonic() - started
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: cannot start the run")
    assert generator in lines[0] and trainer in lines[0]
    assert not runs.exists()
    # Refused connections answer at once; the trainer client's retries take a few seconds.
    assert elapsed < 30
