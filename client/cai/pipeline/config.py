"""`PipelineConfig`: every knob of `cai generate`, loaded from YAML (see configs/pipeline.example.yaml).

    config = load_config("configs/pipeline.example.yaml")
    config = PipelineConfig.small_test(endpoints=[EndpointConfig(url="http://127.0.0.1:8000")])

Fields that change what the model is asked (counts, seeds, sampling, templates, model) are
part of `fingerprint()`: a run folder refuses to resume under a different fingerprint.
Operational fields (endpoints, concurrency, retries, fsync, cost) may change between
sessions of one run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from cai.pipeline.critiques import CritiquesConfig
from cai.pipeline.instructions import InstructionsConfig
from cai.pipeline.judgements import JudgeConfig
from cai.pipeline.responses import ResponsesConfig
from cai.pipeline.revisions import RevisionsConfig
from cai.pipeline.rules import RulesConfig
from cai.pipeline.schema import INSTRUCTION_TYPES
from cai.pipeline.sections import EndpointConfig, SamplingConfig, Section
from cai.yamlfile import parse_mapping, read_text, validate

__all__ = [
    "ConfigError",
    "CritiquesConfig",
    "EndpointConfig",
    "InstructionsConfig",
    "JudgeConfig",
    "PipelineConfig",
    "ResponsesConfig",
    "RetryConfig",
    "RevisionsConfig",
    "RulesConfig",
    "SamplingConfig",
    "SplitConfig",
    "StoreConfig",
    "load_config",
    "small_test_overlay",
    "validate_config",
]


class ConfigError(ValueError):
    """The pipeline config is invalid; the message names the field and what to change."""


class SplitConfig(Section):
    train_ratio: float = Field(default=0.9, gt=0.0, lt=1.0)
    group_threshold: float = Field(
        default=0.6,
        gt=0.0,
        le=1.0,
        description="Instructions this similar share a group; a group is never split.",
    )


class RetryConfig(Section):
    max_attempts: int = Field(
        default=30,
        ge=1,
        description="Tries per request (first included); with the backoff cap, max_total_s "
        "is what usually ends the retries.",
    )
    initial_backoff_s: float = Field(default=0.5, ge=0.0)
    max_backoff_s: float = Field(default=10.0, ge=0.0)
    max_total_s: float = Field(
        default=180.0, gt=0.0, description="Give up on a request after this long (a restart fits)."
    )
    trip_after: int = Field(
        default=3,
        ge=1,
        description="Consecutive connection failures (refused, reset, timeout) after which an "
        "endpoint is skipped while others are reachable; 429 and 5xx do not count (the server "
        "answered).",
    )
    cooldown_s: float = Field(
        default=5.0,
        gt=0.0,
        description="Seconds a tripped endpoint is skipped; then one request probes it "
        "(success: back in rotation, failure: skipped again).",
    )
    max_failed_share: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="A run whose failed records (requests that kept failing after every retry) "
        "pass this share of its records ends `failed` with a non-zero exit, not `complete`: "
        "past a few percent the cause is the server or the network, not bad luck, and the "
        "pairs would over-represent what was easy to serve. Running again retries them.",
    )


class StoreConfig(Section):
    fsync: Literal["always", "periodic", "never"] = Field(
        default="periodic",
        description="always: fsync every record (power-loss safe, slow); periodic: at most every "
        "fsync_interval_s and at close; never. A killed process loses nothing in any mode: "
        "records are written with one write() each.",
    )
    fsync_interval_s: float = Field(default=1.0, ge=0.0)
    retry_failed: bool = Field(
        default=True,
        description="On resume, ask again for the records that failed (instruction attempts "
        "included); off keeps them as they are.",
    )


class PipelineConfig(Section):
    name: str = Field(default="run", description="Default run folder name under run_root.")
    seed: int = Field(
        default=0, ge=0, description="Run seed: every request's seed derives from it."
    )
    model: str = Field(default="tiny", description="Served model or adapter name that generates.")
    base_model: str | None = Field(default=None, description="The base, if `model` is an adapter.")
    endpoints: list[EndpointConfig] = Field(
        default_factory=lambda: [EndpointConfig(url="http://127.0.0.1:8000")], min_length=1
    )
    instructions: InstructionsConfig = Field(default_factory=InstructionsConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    critiques: CritiquesConfig = Field(default_factory=CritiquesConfig)
    revisions: RevisionsConfig = Field(default_factory=RevisionsConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    constitution: str | None = Field(default=None, description="Path; None: the packaged one.")
    seed_pool: str | None = Field(default=None, description="Path; None: the packaged one.")
    heldout: str | None = Field(
        default=None,
        description=(
            "The evaluation's held-out instruction set (path; None: the packaged heldout-v1). "
            "Generated instructions that copy or nearly copy one of them are rejected "
            "(`matches_heldout`), so no training pair is ever about an evaluation question."
        ),
    )
    templates_dir: str | None = Field(default=None, description="Path; None: the packaged ones.")
    usd_per_gpu_hour: float = Field(default=2.5, ge=0.0, description="For the cost estimate.")

    @classmethod
    def small_test(cls, **overrides: Any) -> PipelineConfig:
        """A few dozen short completions: the whole pipeline in well under a minute on CPU."""
        data: dict[str, Any] = {
            "name": "small-test",
            "seed": 1234,
            "instructions": {
                "counts": {t: 3 for t in INSTRUCTION_TYPES},
                "few_shot": 3,
                "sampling": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 24},
            },
            "responses": {"sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 32}},
            "critiques": {"sampling": {"temperature": 0.3, "top_p": 0.95, "max_tokens": 24}},
            "revisions": {"sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 32}},
        }
        data.update(overrides)
        return cls.model_validate(data)

    def fingerprint(self) -> str:
        """Hash of what decides the records' contents (not endpoints, retries or cost)."""
        data = self.model_dump(
            mode="json", exclude={"endpoints", "retry", "store", "usd_per_gpu_hour", "name"}
        )
        data["judge"].pop("endpoints", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def judge_model(self) -> str:
        return self.judge.model or self.model


def load_config(path: str | Path, **overrides: Any) -> PipelineConfig:
    text = read_text(path, "pipeline config", ConfigError)
    data = parse_mapping(text, path, "pipeline config", ConfigError)
    data.update(overrides)
    return validate_config(data, source=str(path), text=text)


def validate_config(
    data: dict[str, Any], *, source: str = "config", text: str | None = None
) -> PipelineConfig:
    """`text`: the YAML `data` was read from, so that errors name their line."""
    return validate(PipelineConfig, data, source, ConfigError, text=text)


def small_test_overlay(config: PipelineConfig) -> PipelineConfig:
    """`config` with the sizes of the small-test preset (counts, max_tokens); the rest kept."""
    preset = PipelineConfig.small_test()
    data = config.model_dump()
    for section in ("instructions", "responses", "critiques", "revisions"):
        data[section]["sampling"] = getattr(preset, section).sampling.model_dump()
    data["instructions"]["counts"] = dict(preset.instructions.counts)
    data["instructions"]["few_shot"] = preset.instructions.few_shot
    data["critiques"]["rounds"] = 1
    return PipelineConfig.model_validate(data)
