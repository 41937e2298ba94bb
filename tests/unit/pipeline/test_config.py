"""PipelineConfig: defaults, YAML loading, presets and the resume fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest

from cai.pipeline.config import ConfigError, PipelineConfig, load_config, small_test_overlay

ROOT = Path(__file__).resolve().parents[3]


def test_defaults_follow_the_design():
    config = PipelineConfig()
    assert config.responses.sampling.temperature == 0.7
    assert config.critiques.sampling.temperature == 0.3
    assert config.revisions.sampling.temperature == 0.7
    assert config.critiques.rounds == 1
    assert config.split.train_ratio == 0.9


@pytest.mark.parametrize("name", ["pipeline.example.yaml", "small-test.yaml"])
def test_shipped_configs_load(name):
    config = load_config(ROOT / "configs" / name)
    assert config.endpoints


def test_small_test_config_file_matches_the_preset():
    from_file = load_config(ROOT / "configs" / "small-test.yaml")
    assert from_file.fingerprint() == PipelineConfig.small_test().fingerprint()


def test_small_test_is_a_few_dozen_completions():
    config = PipelineConfig.small_test()
    assert sum(config.instructions.counts.values()) <= 16
    assert config.responses.sampling.max_tokens <= 64


def test_unknown_fields_and_bad_values_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("critiques:\n  rounds: 0\nresponse: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "critiques.rounds" in str(info.value) and "response" in str(info.value)


def test_file_source_needs_a_file():
    with pytest.raises(ValueError, match=r"instructions\.file"):
        PipelineConfig.model_validate({"instructions": {"source": "file"}})


def test_fingerprint_ignores_operational_fields_only():
    base = PipelineConfig()
    moved = PipelineConfig.model_validate(
        {"endpoints": [{"url": "http://other:1", "concurrency": 3}], "retry": {"max_attempts": 2}}
    )
    assert moved.fingerprint() == base.fingerprint()
    assert PipelineConfig(seed=1).fingerprint() != base.fingerprint()
    assert PipelineConfig(model="stage1-x").fingerprint() != base.fingerprint()


def test_small_test_overlay_keeps_endpoints_and_model():
    config = PipelineConfig.model_validate(
        {"model": "big", "endpoints": [{"url": "http://gpu:8000"}]}
    )
    small = small_test_overlay(config)
    assert small.model == "big" and small.endpoints[0].url == "http://gpu:8000"
    assert small.instructions.counts == PipelineConfig.small_test().instructions.counts
