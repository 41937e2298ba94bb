"""The merge job body on the tiny model: base + a DPO-trained adapter -> one model folder.

.venv/bin/python -m pytest tests/integration/test_merge_job.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from protocol.jobs import MergeJobSpec
from services.trainer.jobs.context import JobContext
from services.trainer.jobs.dpo import run_dpo
from services.trainer.jobs.merge import MergeError, run_merge
from tests.integration.test_dpo_job import (
    greedy_tokens,
    make_context,
    preference_rows,
    tiny_spec,
    write_jsonl,
)

pytestmark = pytest.mark.slow

PROMPTS = (
    "what is the answer to this question:",
    "explain how it was:",
    "write a story about the sea:",
    "who are you:",
)


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("merge-adapter")
    train = write_jsonl(root / "train.jsonl", preference_rows(64, seed=0))
    ctx = make_context(root / "job", tiny_model, train)
    run_dpo(tiny_spec(), ctx)
    return ctx.output_dir


def merge_context(root: Path, tiny_model: Path, adapter: Path) -> JobContext:
    output = root / "output"
    output.mkdir(parents=True)
    return JobContext(
        job_id=root.name,
        work_dir=root / "work",
        output_dir=output,
        base_model_path=str(tiny_model),
        parent_adapter_path=adapter,
    )


def test_merged_model_generates_what_base_plus_adapter_generates(
    adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ctx = merge_context(tmp_path, tiny_model, adapter)
    result = run_merge(MergeJobSpec(adapter="tiny-dpo", output_name="tiny-merged"), ctx)
    assert result["metrics"] == {}
    assert result["config"]["dtype"] == "float32"

    tokenizer = AutoTokenizer.from_pretrained(ctx.output_dir)
    merged = AutoModelForCausalLM.from_pretrained(ctx.output_dir, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    base_tokens = {p: greedy_tokens(base, tokenizer, p) for p in PROMPTS}
    adapted = PeftModel.from_pretrained(base, str(adapter))
    for prompt in PROMPTS:
        expected = greedy_tokens(adapted, tokenizer, prompt)
        assert greedy_tokens(merged, tokenizer, prompt) == expected, prompt
    # The comparison means something only if the adapter changes generation.
    assert any(greedy_tokens(adapted, tokenizer, p) != base_tokens[p] for p in PROMPTS)


def test_merged_folder_is_a_plain_model(adapter: Path, tiny_model: Path, tmp_path: Path) -> None:
    ctx = merge_context(tmp_path, tiny_model, adapter)
    run_merge(MergeJobSpec(adapter="tiny-dpo", output_name="tiny-merged"), ctx)
    names = {p.name for p in ctx.output_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(name.startswith("adapter_") for name in names)
    config = json.loads((ctx.output_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2"


def test_merge_refuses_an_adapter_trained_on_another_base(
    adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign-adapter"
    foreign.mkdir()
    config: dict[str, Any] = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-32B"
    (foreign / "adapter_config.json").write_text(json.dumps(config))
    (foreign / "adapter_model.safetensors").write_bytes(
        (adapter / "adapter_model.safetensors").read_bytes()
    )
    ctx = merge_context(tmp_path / "job", tiny_model, foreign)
    with pytest.raises(MergeError, match=re.escape("trained on 'Qwen/Qwen2.5-32B'")):
        run_merge(MergeJobSpec(adapter="foreign", output_name="m"), ctx)
    assert list(ctx.output_dir.iterdir()) == []
