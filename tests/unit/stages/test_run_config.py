from pathlib import Path

import pytest

from cai.stages.config import (
    RunConfig,
    RunConfigError,
    deep_merge,
    load_run_config,
    with_base_model,
)
from cai.stages.state import RunState, load_state, save_state
from cai.stages.training import _last_seq

ROOT = Path(__file__).resolve().parents[3]


def test_demo_config_is_valid_and_chains_two_stages() -> None:
    config = load_run_config(ROOT / "configs" / "demo.yaml")
    assert [s.chain for s in config.stages] == ["continue", "continue"]
    assert config.run_dir == Path("runs/demo")


def test_stage_overrides_merge_deeply_into_run_defaults() -> None:
    config = RunConfig.model_validate(
        {
            "name": "x",
            "pipeline": {"responses": {"sampling": {"temperature": 0.7, "max_tokens": 9}}},
            "stages": [{}, {"pipeline": {"responses": {"sampling": {"temperature": 0.2}}}}],
        }
    )
    assert config.stage_pipeline(1)["responses"]["sampling"] == {
        "temperature": 0.7,
        "max_tokens": 9,
    }
    assert config.stage_pipeline(2)["responses"]["sampling"] == {
        "temperature": 0.2,
        "max_tokens": 9,
    }


def test_deep_merge_does_not_modify_its_inputs() -> None:
    base = {"a": {"b": 1}}
    merged = deep_merge(base, {"a": {"c": 2}})
    assert merged == {"a": {"b": 1, "c": 2}} and base == {"a": {"b": 1}}


def test_first_stage_cannot_merge() -> None:
    with pytest.raises(ValueError, match="stage 1 cannot use chain: merge"):
        RunConfig.model_validate({"name": "x", "stages": [{"chain": "merge"}]})


def test_bad_run_config_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: ../escape\nstages: [{}]\n")
    with pytest.raises(RunConfigError, match="name"):
        load_run_config(path)


THREE_STAGES = "name: r\njob:\n  lora: {r: 8}\nstages:\n  - {}\n  - {}\n"


@pytest.mark.parametrize(
    ("override", "line", "field"),
    [
        ("  - job:\n      dpo:\n        betta: 0.2\n", 9, "stage 3: job.dpo.betta"),
        ("  - job:\n      lora: {r: 0}\n", 8, "stage 3: job.lora.r"),
        (
            "  - pipeline:\n      critiques:\n        roundz: 2\n",
            9,
            "stage 3: pipeline.critiques.roundz",
        ),
    ],
)
def test_a_typo_in_a_later_stage_fails_when_the_run_config_loads(
    tmp_path: Path, override: str, line: int, field: str
) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(THREE_STAGES + override)
    with pytest.raises(RunConfigError) as info:
        load_run_config(path)
    assert str(info.value).startswith(f"{path}:{line}: {field}: ")


def test_the_shared_job_is_checked_as_each_stage_merges_it(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "name: r\njob:\n  dpo: {beta: -1}\nstages:\n  - job: {dpo: {beta: 0.1}}\n  - {}\n"
    )
    with pytest.raises(RunConfigError) as info:
        load_run_config(path)
    # Stage 1 overrides the bad value; stage 2 inherits it from the run's `job` (line 3).
    assert str(info.value).startswith(f"{path}:3: stage 2: job.dpo.beta: ")


def test_fingerprint_ignores_urls_but_not_hyperparameters() -> None:
    base = {"name": "x", "stages": [{}]}
    one = RunConfig.model_validate(base)
    moved = RunConfig.model_validate({**base, "generator": {"url": "http://elsewhere:1"}})
    tuned = RunConfig.model_validate({**base, "job": {"dpo": {"beta": 0.2}}})
    assert one.fingerprint() == moved.fingerprint() != tuned.fingerprint()


def test_state_round_trips_and_grows_stages(tmp_path: Path) -> None:
    state = RunState(fingerprint="f")
    state.stage(2).job_id = "job-1"
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert loaded is not None and [s.number for s in loaded.stages] == [1, 2]
    assert loaded.stages[1].job_id == "job-1"


def test_torn_last_event_line_is_dropped_not_parsed(tmp_path: Path) -> None:
    events = tmp_path / "train_events.jsonl"
    events.write_text('{"seq": 1, "step": 1}\n{"seq": 2, "step": 2}\n{"seq": 3, "st')
    assert _last_seq(events) == 2
    assert events.read_text().endswith('"step": 2}\n')


def test_real_cpu_config_on_another_base_keeps_the_judge_the_base() -> None:
    config = load_run_config(Path(__file__).parents[3] / "configs" / "real-cpu.yaml")
    assert config.generator.base_model == config.pipeline["judge"]["model"] == "gemma3-270m"
    other = with_base_model(config, "smollm2-135m")
    assert other.generator.base_model == other.trainer.base_model == "smollm2-135m"
    assert other.pipeline["judge"]["model"] == "smollm2-135m"
    assert other.stages == config.stages and other.job == config.job
