"""Every shipped config validates (a typo in a recipe fails here, not on a GPU box)."""

from pathlib import Path

import pytest
import yaml

from cai.pipeline.config import load_config
from cai.stages.config import load_run_config, stage_pipeline_config
from cai.stages.state import StageState
from cai.stages.training import stage_dpo_spec

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
# A run config has stages; every other file under configs/ is a pipeline config.
RUN_CONFIGS = sorted(
    p.name for p in CONFIGS.glob("*.yaml") if "stages" in yaml.safe_load(p.read_text())
)
PIPELINE_CONFIGS = sorted({p.name for p in CONFIGS.glob("*.yaml")} - set(RUN_CONFIGS))


def test_the_shipped_configs_are_found() -> None:
    assert {"demo.yaml", "gpu-box.yaml", "real-cpu.yaml"} <= set(RUN_CONFIGS)
    assert {"small-test.yaml", "pipeline.example.yaml"} <= set(PIPELINE_CONFIGS)


@pytest.mark.parametrize("name", PIPELINE_CONFIGS)
def test_pipeline_config_validates(name: str) -> None:
    load_config(CONFIGS / name)


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_run_config_and_its_stage_pipelines_validate(name: str, tmp_path: Path) -> None:
    config = load_run_config(CONFIGS / name, run_root=str(tmp_path))
    for number in range(1, len(config.stages) + 1):
        pipeline = stage_pipeline_config(config, number, config.generator.base_model)
        assert pipeline.seed == config.seed + number
        assert pipeline.endpoints[0].url == config.generator.url
        stage = StageState(number=number, train_dataset_id="ds-1", test_dataset_id="ds-2")
        spec = stage_dpo_spec(config, number, stage, parent=None, base=config.trainer.base_model)
        assert spec.output_name.startswith(f"{config.name}-s{number}-")
        again = stage_dpo_spec(config, number, stage, parent=None, base=config.trainer.base_model)
        assert spec == again
