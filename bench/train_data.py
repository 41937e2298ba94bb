"""Inputs of the training benchmark: model shapes, a word-level tokenizer, synthetic pairs.

No weights or tokenizer can be downloaded here, so the benchmark builds its own:
- `SHAPES`: Qwen2.5-7B and -32B dimensions (the real configs), and the tiny test model's for
  `--smoke` on CPU. Weights are random (`random_model`), initialised straight on the device.
- `write_tokenizer`: a byte-level BPE tokenizer in Qwen2's format whose words (" a" ... " zzz")
  are single tokens. Text made of such words tokenizes to exactly the ids drawn, so both
  trainers see known token counts, through the same text path TRL and the project take
  (prompt + completion strings, EOS appended). Ids past the words (up to the model's
  152,064) are never drawn: which ids appear changes no cost (the LM head scores them all).
- `make_pairs`: seeded pairs whose lengths vary like real ones (see `LengthProfile`).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"
# Byte-level BPE spells a space "Ġ" (GPT-2's bytes_to_unicode); lowercase letters are themselves.
SPACE = "Ġ"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Words up to three letters: 26 + 676 + 17,576 = 18,278 word tokens, plenty for random text.
MAX_WORD_LETTERS = 3


@dataclass(frozen=True)
class Shape:
    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool

    def config(self) -> Any:
        from transformers import Qwen2Config

        return Qwen2Config(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            vocab_size=self.vocab_size,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            bos_token_id=None,
            eos_token_id=EOS_ID,
            pad_token_id=EOS_ID,
        )


SHAPES: dict[str, Shape] = {
    # Qwen2.5-7B / -32B config.json dimensions.
    "7b": Shape("7b", 3584, 18944, 28, 28, 4, 152064, False),
    "32b": Shape("32b", 5120, 27648, 64, 40, 8, 152064, False),
    # The tiny test model (services/generator/tiny_model.py): CPU smoke runs only.
    "tiny": Shape("tiny", 64, 128, 2, 2, 1, 760, True),
}


@dataclass(frozen=True)
class LengthProfile:
    """Token lengths of a pair. Prompts and answers are log-normal (most short, a long tail),
    clipped to the ranges of issue 6; the chosen answer (a revision) is drawn around the
    rejected one's length, as revisions stay near the original's length."""

    prompt_min: int = 50
    prompt_max: int = 400
    prompt_median: float = 150.0
    answer_min: int = 20
    answer_max: int = 500
    answer_median: float = 180.0
    sigma: float = 0.6
    revision_sigma: float = 0.3


SMOKE_PROFILE = LengthProfile(5, 40, 12.0, 2, 50, 15.0)


def _clipped_lognormal(rng: random.Random, median: float, sigma: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(rng.lognormvariate(math.log(median), sigma))))


def word_tokens(vocab_size: int) -> list[str]:
    """Word tokens in breadth-first order (every word's prefix comes before it), as many as
    the vocabulary holds after the 256 byte tokens and EOS."""
    room = vocab_size - FIRST_WORD_ID
    words: list[str] = []
    level = [""]
    for _ in range(MAX_WORD_LETTERS):
        level = [prefix + letter for prefix in level for letter in LETTERS]
        words.extend(level)
    if room < len(LETTERS):
        raise ValueError(f"vocab_size {vocab_size} is too small for the benchmark tokenizer")
    return words[:room]


# ids: 0-255 the byte-level alphabet, then EOS, then the words.
EOS_ID = 256
FIRST_WORD_ID = 257


@dataclass(frozen=True)
class Pair:
    """Token ids of one preference pair (EOS not included)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    @property
    def tokens(self) -> int:
        """Non-pad tokens of the chosen and rejected sequences (EOS included)."""
        return 2 * len(self.prompt) + len(self.chosen) + len(self.rejected) + 2

    @property
    def completion_tokens(self) -> int:
        return len(self.chosen) + len(self.rejected) + 2

    def row(self, words: list[str]) -> dict[str, str]:
        return {
            "prompt": _text(self.prompt, words),
            "chosen": _text(self.chosen, words),
            "rejected": _text(self.rejected, words),
        }


def _text(ids: list[int], words: list[str]) -> str:
    # Every word starts with a space, so each is one pre-token of Qwen's split regex and the
    # concatenation prompt + completion tokenizes to the two id lists back to back.
    return "".join(" " + words[i - FIRST_WORD_ID] for i in ids)


def make_pairs(count: int, vocab_size: int, profile: LengthProfile, seed: int) -> list[Pair]:
    rng = random.Random(seed)
    top = FIRST_WORD_ID + len(word_tokens(vocab_size))

    def ids(n: int) -> list[int]:
        return [rng.randrange(FIRST_WORD_ID, top) for _ in range(n)]

    pairs = []
    for _ in range(count):
        p = profile
        prompt = _clipped_lognormal(rng, p.prompt_median, p.sigma, p.prompt_min, p.prompt_max)
        rejected = _clipped_lognormal(rng, p.answer_median, p.sigma, p.answer_min, p.answer_max)
        chosen = _clipped_lognormal(rng, rejected, p.revision_sigma, p.answer_min, p.answer_max)
        pairs.append(Pair(ids(prompt), ids(chosen), ids(rejected)))
    return pairs


def write_pairs(pairs: list[Pair], vocab_size: int, path: Path) -> None:
    words = word_tokens(vocab_size)
    with path.open("w", encoding="utf-8") as fh:
        for pair in pairs:
            fh.write(json.dumps(pair.row(words)) + "\n")


def write_tokenizer(vocab_size: int, out_dir: Path) -> None:
    """Byte-level BPE in Qwen2's own format (transformers 5 loads a `qwen2` model's tokenizer
    as `Qwen2Tokenizer`, which keeps only vocab and merges and re-creates Qwen's normalizer
    and split regex). Merges build each word letter by letter from " " (a trie), so " abc"
    is one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from services.generator.tiny_model import QWEN_SPLIT_REGEX

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab[EOS] = EOS_ID
    merges: list[tuple[str, str]] = []
    for offset, word in enumerate(word_tokens(vocab_size)):
        vocab[SPACE + word] = FIRST_WORD_ID + offset
        merges.append((SPACE + word[:-1], word[-1]))
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, byte_fallback=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS, pad_token=EOS, unk_token=None, bos_token=None
    )
    tokenizer.save_pretrained(str(out_dir))
    config_file = out_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "Qwen2Tokenizer"
    config_file.write_text(json.dumps(config, indent=2))


def write_model_dir(shape: Shape, out_dir: Path) -> None:
    """config.json and tokenizer files: what the job reads besides the weights."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = shape.config()
    config.dtype = "bfloat16"
    config.save_pretrained(str(out_dir))
    write_tokenizer(shape.vocab_size, out_dir)


def random_model(model_dir: str, dtype: str, device: str, seed: int) -> Any:
    """Random weights at the config's shape, created on `device` in `dtype` (no host copy,
    no disk: a 32B checkpoint would not fit the device machine's disk)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=getattr(torch, dtype), attn_implementation="sdpa"
        )
    return model
