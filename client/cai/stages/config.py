"""`RunConfig`: the stages of `cai run`, loaded from YAML (see configs/demo.yaml).

    config = load_run_config("configs/demo.yaml")

A run is a baseline assessment followed by stages. Each stage generates preference pairs
with the current model (the base, then the previous stage's adapter), trains a LoRA adapter
on them with a DPO job, hot-swaps it into vLLM and evaluates it. Hyper-parameters are data:
`pipeline` and `job` hold the run's defaults, and each stage may override any of them.

Loading merges and validates every stage's `pipeline` and `job` as that stage will build
them, so a typo in stage 3 is refused before the baseline runs, naming the file, the line,
the stage and the field: `run.yaml:14: stage 3: job.dpo.betta: Extra inputs are not
permitted`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai.evaluation.settings import EvalSettings
from cai.pipeline.config import (
    EndpointConfig,
    PipelineConfig,
    small_test_overlay,
    validate_config,
)
from cai.yamlfile import parse_mapping, read_text, validate
from protocol.jobs import DpoJobSpec
from protocol.names import SafeName


class RunConfigError(ValueError):
    """The run config is invalid; the message names the field and what to change."""


class _Section(BaseModel):
    # `.inf` and `.nan` are valid YAML floats; no knob of a run means anything at either.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class GeneratorConfig(_Section):
    url: str = Field(default="http://127.0.0.1:8000", description="vLLM base URL (no /v1).")
    api_key_env: str = Field(
        default="CAI_GENERATOR_API_KEY", description="Environment variable holding vLLM's key."
    )
    base_model: str = Field(default="tiny", description="vLLM's served name of the base model.")
    concurrency: int = Field(
        default=64, ge=1, description="Requests in flight at most, per server (url, replicas)."
    )
    embedded: bool = Field(
        default=False,
        description=(
            "The generator is the embedded one (`make serve`, embedded/launch.py). vLLM cannot "
            "swap its base model at run time, so for `chain: merge` `cai run` restarts it on the "
            "merged model itself; otherwise it stops and says how to restart it."
        ),
    )
    replicas: list[str] = Field(
        default_factory=list,
        description=(
            "Base URLs of more vLLM servers with the same model, key and settings (e.g. "
            "docker-compose.replicas.yml's generator-2). The pipeline spreads its requests over "
            "`url` and these; adapters are published to, and sleep/wake sent to, every one. "
            "The held-out evaluation runs on `url`."
        ),
    )


class TrainerConfig(_Section):
    url: str = Field(default="http://127.0.0.1:8100", description="Trainer service base URL.")
    api_key_env: str = Field(
        default="CAI_TRAINER_API_KEY", description="Environment variable holding the trainer's key."
    )
    base_model: str = Field(
        default="tiny",
        description="The base model as the trainer names it (a folder under its model roots).",
    )


class StageConfig(_Section):
    chain: Literal["continue", "merge"] = Field(
        default="continue",
        description=(
            "How this stage builds on the previous one. `continue`: train on top of the previous "
            "adapter (iterative DPO: it is the reference). `merge`: merge the previous adapter into "
            "the base (a trainer merge job) and train a fresh adapter on the merged model."
        ),
    )
    pipeline: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the run's `pipeline` for this stage."
    )
    job: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the run's `job` (DPO spec) for this stage."
    )


class RunConfig(_Section):
    name: SafeName = Field(description="Run folder name under `run_root`.")
    run_root: str = Field(default="runs")
    seed: int = Field(default=0, ge=0, description="Stage N's pipeline seed is seed + N.")
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    sleep_during_training: bool = Field(
        default=True,
        description=(
            "Put vLLM to sleep while a job trains and wake it after (one GPU shared by both). "
            "Turn off when the services have separate GPUs."
        ),
    )
    small_test: bool = Field(
        default=False,
        description="Start from the pipeline's small-test preset (a few dozen calls).",
    )
    pipeline: dict[str, Any] = Field(
        default_factory=dict, description="PipelineConfig fields shared by every stage."
    )
    job: dict[str, Any] = Field(
        default_factory=dict,
        description="DpoJobSpec fields shared by every stage (lora, dpo, seed, load_in_4bit).",
    )
    evaluation: EvalSettings = Field(
        default_factory=EvalSettings, description="The held-out evaluation of every stage."
    )
    pair_accuracy_reference: Literal["training", "base"] = Field(
        default="training",
        description=(
            "Reference of the held-out pair accuracy (the DPO implicit reward). `training`: the "
            "reference the stage trained against (the base for stage 1 and after a merge, the "
            "previous adapter for `continue`), so it measures what the stage learned. `base`: "
            "always the base, so it measures where the chain stands overall."
        ),
    )
    usd_per_gpu_hour: float = Field(default=2.5, ge=0.0, description="For cost estimates.")
    stages: list[StageConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _first_stage_has_nothing_to_merge(self) -> RunConfig:
        if self.stages[0].chain == "merge":
            raise ValueError("stage 1 cannot use chain: merge (there is no previous adapter)")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.run_root) / self.name

    def fingerprint(self) -> str:
        """Hash of everything that decides a run's results (not URLs or keys)."""
        data = self.model_dump(mode="json", exclude={"generator", "trainer", "run_root"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def stage_pipeline(self, number: int) -> dict[str, Any]:
        """The run's pipeline fields with stage `number`'s overrides on top (deep merge)."""
        return deep_merge(self.pipeline, self.stages[number - 1].pipeline)

    def stage_job(self, number: int) -> dict[str, Any]:
        return deep_merge(self.job, self.stages[number - 1].job)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def with_base_model(config: RunConfig, name: str) -> RunConfig:
    """`config` on another base model: the generator's and the trainer's base, and a judge
    that was the old base (a fixed judge stays the base, whichever base that is)."""
    data = config.model_dump()
    old = config.generator.base_model
    data["generator"]["base_model"] = name
    data["trainer"]["base_model"] = name
    judge = data["pipeline"].get("judge")
    if isinstance(judge, dict) and judge.get("model") == old:
        judge["model"] = name
    return validate(RunConfig, data, "--base-model", RunConfigError)


def stage_pipeline_data(config: RunConfig, number: int, model: str) -> dict[str, Any]:
    """Stage `number`'s PipelineConfig fields: the preset, the run's `pipeline`, the stage's
    own overrides, and what the run decides (name, seed, model, endpoints)."""
    base = PipelineConfig.small_test() if config.small_test else PipelineConfig()
    data = deep_merge(base.model_dump(mode="json"), config.stage_pipeline(number))
    data.update(
        name=f"{config.name}-stage{number}",
        seed=config.seed + number,
        model=model,
        base_model=config.generator.base_model,
        endpoints=[
            EndpointConfig(
                url=url,
                concurrency=config.generator.concurrency,
                api_key_env=config.generator.api_key_env,
            ).model_dump()
            for url in [config.generator.url, *config.generator.replicas]
        ],
    )
    return data


def stage_pipeline_config(config: RunConfig, number: int, model: str) -> PipelineConfig:
    """Stage `number`'s PipelineConfig, `model` generating (see `stage_pipeline_data`)."""
    data = stage_pipeline_data(config, number, model)
    pipeline = validate_config(data, source=f"{config.name} stage {number} pipeline")
    return small_test_overlay(pipeline) if config.small_test else pipeline


def stage_job_data(config: RunConfig, number: int, **decided: Any) -> dict[str, Any]:
    """Stage `number`'s DpoJobSpec fields: the run's `job`, the stage's own overrides, and
    what the run decides (`decided`: base model, datasets, parent adapter, output name)."""
    fields = config.stage_job(number)
    fields.update(kind="dpo", **decided)
    fields.setdefault("seed", config.seed + number)
    return fields


# What the run fills in when a stage's job is submitted; any valid value checks the rest.
_JOB_AT_LOAD = {"dataset_id": "checked-at-load", "output_name": "checked-at-load"}


def load_run_config(path: str | Path, **overrides: Any) -> RunConfig:
    """The run config at `path`, every stage's merged pipeline and job checked too: a bad
    count or a misspelt field in stage 3 is refused now, not after the baseline and two
    stages have run."""
    text = read_text(path, "run config", RunConfigError)
    data = deep_merge(parse_mapping(text, path, "run config", RunConfigError), overrides)
    config = validate(RunConfig, data, str(path), RunConfigError, text=text)
    for number in range(1, len(config.stages) + 1):
        stage = ("stages", str(number - 1))
        validate(
            PipelineConfig,
            stage_pipeline_data(config, number, config.generator.base_model),
            str(path),
            RunConfigError,
            text=text,
            under=((*stage, "pipeline"), ("pipeline",)),
            label=f"stage {number}: pipeline.",
        )
        validate(
            DpoJobSpec,
            stage_job_data(config, number, base_model=config.trainer.base_model, **_JOB_AT_LOAD),
            str(path),
            RunConfigError,
            text=text,
            under=((*stage, "job"), ("job",)),
            label=f"stage {number}: job.",
        )
    return config


def check_run_inputs(config: RunConfig) -> None:
    """Read every file the run's stages and evaluation name (templates, constitution, seed
    pool, held-out sets, instruction files): a bad one is refused before the first step
    writes anything, with its loader's one-line error."""
    from cai.pipeline.heldout import load_heldout
    from cai.pipeline.inputs import PipelineInputs

    load_heldout(config.evaluation.heldout)
    for number in range(1, len(config.stages) + 1):
        PipelineInputs.load(stage_pipeline_config(config, number, config.generator.base_model))
