"""The `cai` generation pipeline: instructions -> responses -> critiques -> revisions ->
judgements -> preference pairs -> train/test, streaming and resumable.

    from cai.pipeline import PipelineConfig, load_config, run_pipeline
    config = load_config("configs/pipeline.example.yaml").model_copy(update={"model": "stage1-j42"})
    summary = await run_pipeline(config, Path("runs/demo/stage1"))
    summary.train_path, summary.test_path, summary.funnel

See docs/pipeline.md for the data format and the rules.
"""

from cai.pipeline.config import (
    ConfigError,
    EndpointConfig,
    PipelineConfig,
    load_config,
    validate_config,
)
from cai.pipeline.records import STEPS, derive_seed
from cai.pipeline.runner import (
    ModelNotServed,
    PipelineRunner,
    ProgressSink,
    RunConfigMismatch,
    run_pipeline,
    run_pipeline_sync,
)
from cai.pipeline.store import StoreCorrupt
from cai.pipeline.summary import RunSummary

__all__ = [
    "STEPS",
    "ConfigError",
    "EndpointConfig",
    "ModelNotServed",
    "PipelineConfig",
    "PipelineRunner",
    "ProgressSink",
    "RunConfigMismatch",
    "RunSummary",
    "StoreCorrupt",
    "derive_seed",
    "load_config",
    "run_pipeline",
    "run_pipeline_sync",
    "validate_config",
]
