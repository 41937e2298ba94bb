"""`cai run` with generator replicas: the pipeline gets every server; each one gets every
adapter and sleeps while a job trains.

    .venv/bin/pytest tests/unit/stages/test_runner_replicas.py
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cai.stages import serving
from cai.stages.bookkeeping import StageBookkeeping
from cai.stages.config import RunConfig
from cai.stages.reporter import SilentReporter
from cai.stages.runner import RunError, StageRunner
from protocol.jobs import JobState


class FakeGenerator:
    """The parts of `GeneratorClient` the stage runner calls, recorded."""

    def __init__(self, base_url: str, served: list[str] | None = None) -> None:
        self.base_url = base_url
        self.served = ["tiny", *(served or [])]
        self.calls: list[str] = []
        self.asleep = False

    async def models(self) -> list[Any]:
        return [SimpleNamespace(id=name) for name in self.served]

    async def is_sleeping(self) -> bool:
        return self.asleep

    async def sleep(self, level: int = 1) -> None:
        self.calls.append("sleep")
        self.asleep = True

    async def wake_up(self) -> None:
        self.calls.append("wake_up")
        self.asleep = False


class FakeTrainer:
    def __init__(self, fail_events: bool = False) -> None:
        self.fail_events = fail_events

    async def get_adapter(self, name: str) -> Any:
        return SimpleNamespace(path=f"/data/adapters/{name}")

    async def events(self, job_id: str, after: int = 0) -> Any:
        if self.fail_events:
            raise ConnectionError("trainer went away")
        for _ in ():
            yield

    async def get_job(self, job_id: str) -> Any:
        return SimpleNamespace(
            id=job_id, state=JobState.succeeded, error=None, started_at=None, finished_at=None
        )


def _config(tmp_path: Path, **generator: Any) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "replicated",
            "run_root": str(tmp_path),
            "generator": {"url": "http://gen-1:8000", **generator},
            "stages": [{}],
        }
    )


def _runner(
    tmp_path: Path, gens: list[FakeGenerator], trainer: FakeTrainer | None = None
) -> StageRunner:
    config = _config(tmp_path, replicas=[g.base_url for g in gens[1:]])
    return StageRunner(
        StageBookkeeping(config, gens[0], trainer or FakeTrainer(), SilentReporter(), gens[1:])
    )


def test_the_pipeline_spreads_over_the_url_and_every_replica(tmp_path: Path) -> None:
    gens = [FakeGenerator(u) for u in ("http://gen-1:8000", "http://gen-2:8000")]
    pipeline = _runner(tmp_path, gens).pipeline_config(1, "tiny")
    assert [e.url for e in pipeline.endpoints] == ["http://gen-1:8000", "http://gen-2:8000"]
    assert {e.concurrency for e in pipeline.endpoints} == {64}


def test_replicas_do_not_change_the_run_fingerprint(tmp_path: Path) -> None:
    assert (
        _config(tmp_path).fingerprint()
        == _config(tmp_path, replicas=["http://gen-2:8000"]).fingerprint()
    )


async def test_an_adapter_is_published_to_every_server_that_lacks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = serving.adapter_version_name(1, "job-1")
    gens = [
        FakeGenerator("http://gen-1:8000", served=[name]),  # loaded before a kill: kept
        FakeGenerator("http://gen-2:8000"),
        FakeGenerator("http://gen-3:8000"),
    ]
    published: list[str] = []

    async def fake_publish(client: Any, path: str, served: str, **kwargs: Any) -> Any:
        published.append(client.base_url)
        client.served.append(served)
        probe = SimpleNamespace(max_abs_logprob_diff=0.5)
        return SimpleNamespace(rank=8, probe=probe, seconds=0.1)

    monkeypatch.setattr(serving, "publish", fake_publish)
    runner = _runner(tmp_path, gens)
    stage = runner.state.stage(1)
    stage.adapter, stage.job_id = "replicated-s1-abc", "job-1"
    await runner.fleet.publish_stage(1, stage)
    assert published == ["http://gen-2:8000", "http://gen-3:8000"]
    assert stage.served_name == name and await runner.fleet.served(name)


async def test_every_server_sleeps_while_the_job_trains_and_wakes_after(tmp_path: Path) -> None:
    gens = [FakeGenerator("http://gen-1:8000"), FakeGenerator("http://gen-2:8000")]
    runner = _runner(tmp_path, gens)
    stage = runner.state.stage(1)
    stage.job_id = "job-1"
    await runner.jobs.train(1, stage, None, "tiny")
    assert [g.calls for g in gens] == [["sleep", "wake_up"]] * 2
    assert stage.job_state == JobState.succeeded


async def test_every_server_is_woken_even_when_following_the_job_fails(tmp_path: Path) -> None:
    gens = [FakeGenerator("http://gen-1:8000"), FakeGenerator("http://gen-2:8000")]
    runner = _runner(tmp_path, gens, FakeTrainer(fail_events=True))
    stage = runner.state.stage(1)
    stage.job_id = "job-1"
    with pytest.raises(ConnectionError):
        await runner.jobs.train(1, stage, None, "tiny")
    assert not any(g.asleep for g in gens)


def _config_cai_run_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, yaml_text: str, env: dict[str, str]
) -> RunConfig:
    """The RunConfig `cai run` builds from a file and the environment (nothing runs)."""
    from typer.testing import CliRunner

    from cai.cli import app
    from cai.commands import run as run_command

    seen: list[RunConfig] = []

    async def fake_run_stages(config: RunConfig, reporter: Any = None) -> Any:
        seen.append(config)
        raise RunError("stop here")

    monkeypatch.setattr(run_command, "run_stages", fake_run_stages)
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"], env=env)
    assert result.exit_code == 1 and "stop here" in result.output
    return seen[0]


def test_cai_run_takes_replicas_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config_cai_run_sees(
        tmp_path,
        monkeypatch,
        "name: x\ngenerator: {url: 'http://generator:8000'}\nstages: [{}]\n",
        {"CAI_GENERATOR_REPLICAS": "http://generator-2:8000 http://generator-3:8000"},
    )
    assert config.generator.url == "http://generator:8000"
    assert config.generator.replicas == ["http://generator-2:8000", "http://generator-3:8000"]


def test_cai_run_takes_service_urls_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compose client sets CAI_GENERATOR_URL/CAI_TRAINER_URL to the containers' names."""
    config = _config_cai_run_sees(
        tmp_path,
        monkeypatch,
        "name: x\nstages: [{}]\n",
        {"CAI_GENERATOR_URL": "http://generator:8000", "CAI_TRAINER_URL": "http://trainer:8100"},
    )
    assert config.generator.url == "http://generator:8000"
    assert config.trainer.url == "http://trainer:8100"
