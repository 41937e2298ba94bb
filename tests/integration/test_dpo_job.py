"""The DPO job body on the tiny model, on CPU: real TRL training, real PEFT adapter on disk.

    .venv/bin/python -m pytest tests/integration/test_dpo_job.py

The data has a consistent preference: every chosen answer is made of "agreeable" words
(yes, good, kind, ...), every rejected one of their opposites, after random prompts. The
held-out pairs use other prompts and other word draws, so a positive margin there means the
adapter learned the preference, not the rows.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from protocol.jobs import DpoJobSpec, DpoSpec, JobProgress, LoraSpec
from services.trainer.jobs.context import JobContext
from services.trainer.jobs.dpo import run_dpo
from services.trainer.jobs.training_device import DeviceUnsupportedError

pytestmark = pytest.mark.slow

_PROMPT_WORDS = [
    *("the", "a", "of", "to", "and", "in", "is", "was", "for", "on", "with", "as", "by"),
    *("at", "from", "that", "this", "it", "be", "are", "or", "not", "what", "why", "how"),
    *("when", "where", "who", "which", "answer", "question", "explain", "write"),
]
CHOSEN_WORDS = ("yes", "good", "kind", "clear", "true", "safe")
REJECTED_WORDS = ("no", "bad", "rude", "vague", "false", "harm")


def preference_rows(n: int, seed: int, long_rows: int = 0) -> list[dict[str, str]]:
    """`n` pairs with a consistent preference, plus `long_rows` pairs far over 128 tokens."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choice(_PROMPT_WORDS) for _ in range(rng.randint(4, 10))) + ":"
        k = rng.randint(3, 6)
        rows.append(
            {
                "prompt": prompt,
                "chosen": " " + " ".join(rng.choice(CHOSEN_WORDS) for _ in range(k)) + ".",
                "rejected": " " + " ".join(rng.choice(REJECTED_WORDS) for _ in range(k)) + ".",
            }
        )
    for _ in range(long_rows):
        rows.append(
            {
                "prompt": " ".join(rng.choice(_PROMPT_WORDS) for _ in range(300)) + ":",
                "chosen": " yes.",
                "rejected": " no.",
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tiny_spec(**dpo: Any) -> DpoJobSpec:
    # The tiny model is random and its LoRA B matrices start at zero: at the production
    # learning rate (5e-6) 64 steps move nothing. 5e-3 for 2 epochs (64 steps of 2 pairs)
    # learns the word-level preference on every seed tried, in about a second of CPU.
    settings: dict[str, Any] = {
        "learning_rate": 5e-3,
        "num_train_epochs": 2,
        "max_length": 128,
        "warmup_ratio": 0.0,
    }
    settings.update(dpo)
    return DpoJobSpec(
        base_model="tiny",
        dataset_id="ds-test",
        output_name="tiny-dpo",
        lora=LoraSpec(r=8),
        dpo=DpoSpec(**settings),
        seed=0,
    )


def make_context(
    root: Path,
    tiny_model: Path,
    train: Path,
    eval_path: Path | None = None,
    parent: Path | None = None,
    events: list[JobProgress] | None = None,
) -> JobContext:
    output = root / "output"
    output.mkdir(parents=True)
    sink = events if events is not None else []
    return JobContext(
        job_id=root.name,
        work_dir=root / "work",
        output_dir=output,
        base_model_path=str(tiny_model),
        train_path=train,
        eval_path=eval_path,
        parent_adapter_path=parent,
        emit=sink.append,
    )


def greedy_tokens(model: Any, tokenizer: Any, prompt: str, n: int = 12) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return [int(t) for t in out[0, ids["input_ids"].shape[1] :]]


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One DPO job over 64 consistent pairs (+3 over-long ones), evaluated on 32 held-out."""
    root = tmp_path_factory.mktemp("dpo")
    train = write_jsonl(root / "train.jsonl", preference_rows(64, seed=0, long_rows=3))
    heldout = write_jsonl(root / "eval.jsonl", preference_rows(32, seed=1))
    events: list[JobProgress] = []
    ctx = make_context(root / "job", tiny_model, train, heldout, events=events)
    result = run_dpo(tiny_spec(), ctx)
    return {"result": result, "ctx": ctx, "events": events, "root": root, "train": train}


def test_adapter_folder_holds_the_adapter_and_tokenizer_only(trained: dict[str, Any]) -> None:
    names = {p.name for p in trained["ctx"].output_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert names <= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    }


def test_adapter_config_is_servable_by_vllm(trained: dict[str, Any], tiny_model: Path) -> None:
    config = json.loads((trained["ctx"].output_dir / "adapter_config.json").read_text())
    assert config["modules_to_save"] is None
    assert config["r"] == 8
    assert config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == str(tiny_model)
    assert set(config["target_modules"]) == set(LoraSpec().target_modules)


def test_adapter_loads_with_peft_and_changes_outputs(
    trained: dict[str, Any], tiny_model: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    prompt = "what is the answer to this question:"
    before = greedy_tokens(base, tokenizer, prompt)
    adapted = PeftModel.from_pretrained(base, str(trained["ctx"].output_dir))
    assert greedy_tokens(adapted, tokenizer, prompt) != before


def test_progress_is_emitted_for_every_step_from_first_to_last(trained: dict[str, Any]) -> None:
    events: list[JobProgress] = trained["events"]
    steps = [e for e in events if "loss" in e.metrics]
    total = steps[-1].total_steps
    assert total == 64  # 64 kept pairs / 2 a micro-batch x 2 epochs
    assert [e.step for e in steps] == list(range(1, total + 1))
    last = steps[-1]
    assert last.eta_seconds == 0.0
    assert last.tokens_per_second is not None and last.tokens_per_second > 0
    assert {"rewards/margins", "rewards/accuracies"} <= set(last.metrics)
    assert events[0].step == 0 and events[0].total_steps == total


def test_the_first_step_sees_a_reference_equal_to_the_policy(trained: dict[str, Any]) -> None:
    # LoRA B starts at zero, so before the first update the policy is the reference: the
    # precomputed reference log-probs must reproduce the policy's, loss ln 2, margin 0.
    first = next(e for e in trained["events"] if "loss" in e.metrics)
    assert first.step == 1
    assert first.metrics["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert first.metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("packing", [True, False])
def test_liger_kernels_are_in_place_before_the_reference_pre_pass(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packing: bool
) -> None:
    """The Trainer applies Liger in `train()`, after TRL's constructor has run the pre-pass;
    the job patches first, so that reference and policy come from the same kernels (on an
    H200 the first step was 0.635-0.746 instead of ln 2 without it). Liger needs CUDA, so
    the patching is recorded here rather than done. Packed, the pre-pass is the job's own."""
    import transformers.integrations.liger as liger_integration
    import transformers.trainer as hf_trainer

    from services.trainer.jobs import dpo

    events: list[tuple[str, dict[str, Any]]] = []

    def record_liger(model: Any, config: dict[str, Any]) -> None:
        events.append(("liger", dict(config)))

    monkeypatch.setattr(dpo, "use_liger_kernel", lambda device, importable: True)
    monkeypatch.setattr(liger_integration, "apply_liger_kernel", record_liger)
    monkeypatch.setattr(hf_trainer, "apply_liger_kernel", record_liger)
    make_trainer_class = dpo._make_trainer_class

    def recording_trainer_class(packed: bool) -> Any:
        class Recording(make_trainer_class(packed)):  # type: ignore[misc]
            def compute_ref_log_probs(self, model: Any, inputs: Any) -> Any:
                events.append(("pre-pass batch", {}))
                return super().compute_ref_log_probs(model, inputs)

            def precompute_reference(self) -> None:
                events.append(("pre-pass batch", {}))
                super().precompute_reference()

        return Recording

    monkeypatch.setattr(dpo, "_make_trainer_class", recording_trainer_class)
    train = write_jsonl(tmp_path / "train.jsonl", preference_rows(8, seed=3))
    spec = tiny_spec(num_train_epochs=1, packing=packing)
    result = run_dpo(spec, make_context(tmp_path / "job", tiny_model, train))

    assert result["config"]["packing"]["enabled"] is packing
    kinds = [kind for kind, _ in events]
    assert "pre-pass batch" in kinds
    assert kinds[: kinds.index("pre-pass batch")] == ["liger"]
    assert all(
        config["fused_linear_cross_entropy"] is False for kind, config in events if kind == "liger"
    )


def test_heldout_pair_accuracy_beats_the_base(trained: dict[str, Any]) -> None:
    metrics = trained["result"]["metrics"]
    assert metrics["eval/reference_pair_accuracy"] == 0.5
    assert metrics["eval/pair_accuracy"] > 0.5
    assert metrics["eval/margin"] > 0


def test_over_long_rows_are_dropped_and_counted(trained: dict[str, Any]) -> None:
    result = trained["result"]
    assert result["config"]["dropped_rows"] == 3
    assert result["config"]["train_rows"] == 64


def test_result_records_the_effective_configs_and_decisions(trained: dict[str, Any]) -> None:
    result = trained["result"]
    config = result["config"]
    assert result["rank"] == 8
    assert result["train_tokens"] > 0 and result["tokens_per_second"] > 0
    assert config["dpo"]["precompute_ref_log_probs"] is True
    assert config["dpo"]["learning_rate"] == 5e-3
    assert config["dpo"]["bf16"] is False
    assert config["lora"]["r"] == 8
    assert config["device"] == "cpu" and config["dtype"] == "float32"
    assert config["micro_batch"] == 2
    assert config["gradient_checkpointing"] is False
    assert config["reference"]["kind"] == "base"
    assert config["packing"]["enabled"] is True  # the tiny model is a Qwen2
    assert config["packing"]["attn_implementation"] == "sdpa"
    assert "dense mask" in config["packing"]["reason"]
    assert config["padding_free"] is True
    json.dumps(result)  # the runner stores it as JSON


def test_packed_and_unpacked_jobs_learn_alike(trained: dict[str, Any], tmp_path: Path) -> None:
    # The same spec with TRL's padded rows: micro-batches are drawn differently, so steps
    # differ, but both start at ln 2 and end on the same held-out margin, near enough.
    root = trained["root"]
    events: list[JobProgress] = []
    ctx = make_context(
        tmp_path / "job",
        Path(trained["ctx"].base_model_path),
        trained["train"],
        root / "eval.jsonl",
        events=events,
    )
    unpacked = run_dpo(tiny_spec(packing=False), ctx)
    assert unpacked["config"]["packing"]["enabled"] is False
    packed_losses = [e.metrics["loss"] for e in trained["events"] if "loss" in e.metrics]
    unpacked_losses = [e.metrics["loss"] for e in events if "loss" in e.metrics]
    assert len(packed_losses) == len(unpacked_losses)
    assert packed_losses[0] == pytest.approx(unpacked_losses[0], abs=1e-6)
    late = slice(-16, None)
    assert sum(packed_losses[late]) / 16 == pytest.approx(sum(unpacked_losses[late]) / 16, abs=0.1)
    packed_margin = trained["result"]["metrics"]["eval/margin"]
    assert packed_margin == pytest.approx(unpacked["metrics"]["eval/margin"], rel=0.1)


def test_the_varlen_attention_trains_step_for_step_as_the_dense_mask(
    trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CUDA path's layout (flash attention's variable-length sequences, here run segment
    # by segment through sdpa on CPU) through the whole job: collator, pre-pass, steps. Same
    # batches as the dense-mask job above, so the same losses step by step.
    from dataclasses import replace

    from services.trainer.jobs import dpo
    from services.trainer.jobs.packing_plan import PACKED_VARLEN_ATTENTION

    choose = dpo.choose_packing

    def varlen(*args: Any, **kwargs: Any) -> Any:
        return replace(choose(*args, **kwargs), attn_implementation=PACKED_VARLEN_ATTENTION)

    monkeypatch.setattr(dpo, "choose_packing", varlen)
    root = trained["root"]
    events: list[JobProgress] = []
    ctx = make_context(
        tmp_path / "job",
        Path(trained["ctx"].base_model_path),
        trained["train"],
        root / "eval.jsonl",
        events=events,
    )
    result = run_dpo(tiny_spec(), ctx)
    assert result["config"]["packing"]["attn_implementation"] == PACKED_VARLEN_ATTENTION
    dense_losses = [e.metrics["loss"] for e in trained["events"] if "loss" in e.metrics]
    varlen_losses = [e.metrics["loss"] for e in events if "loss" in e.metrics]
    assert varlen_losses == pytest.approx(dense_losses, abs=1e-4)
    dense_margin = trained["result"]["metrics"]["eval/margin"]
    assert result["metrics"]["eval/margin"] == pytest.approx(dense_margin, rel=1e-3)


def test_iterative_dpo_trains_against_the_parent(
    trained: dict[str, Any], tiny_model: Path, tmp_path: Path
) -> None:
    parent = trained["ctx"].output_dir
    parent_bytes = (parent / "adapter_model.safetensors").read_bytes()
    heldout = write_jsonl(tmp_path / "eval.jsonl", preference_rows(32, seed=2))
    ctx = make_context(tmp_path / "job", tiny_model, trained["train"], heldout, parent=parent)
    result = run_dpo(tiny_spec(num_train_epochs=1), ctx)

    assert result["config"]["reference"] == {"kind": "parent_adapter", "path": str(parent)}
    assert result["config"]["lora_source"] == "parent"
    assert (parent / "adapter_model.safetensors").read_bytes() == parent_bytes
    assert (ctx.output_dir / "adapter_model.safetensors").read_bytes() != parent_bytes
    assert not (ctx.output_dir / "ref").exists()  # TRL's frozen copy is not saved
    metrics = result["metrics"]
    # Both adapters prefer the chosen style over the base; the child is scored against the parent.
    assert metrics["eval/reference_pair_accuracy_vs_base"] > 0.5
    assert metrics["eval/pair_accuracy_vs_base"] > 0.5
    assert metrics["eval/reference_pair_accuracy"] == 0.5


def test_4bit_on_cpu_fails_before_loading_anything(tiny_model: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", preference_rows(4, seed=0))
    ctx = make_context(tmp_path / "job", tiny_model, train)
    spec = tiny_spec().model_copy(update={"load_in_4bit": True})
    with pytest.raises(DeviceUnsupportedError, match="load_in_4bit needs a CUDA GPU"):
        run_dpo(spec, ctx)
    assert list(ctx.output_dir.iterdir()) == []
