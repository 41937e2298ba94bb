"""Publish a trained LoRA adapter into the running generator, safely.

    async with GeneratorClient(url) as gen:
        record = await publish(gen, "adapters/stage1-job42", adapter_version_name(1, "job42"),
                               base_model_name="tiny")

Order of work, so that a bad adapter never reaches the server:

1. local checks (folder, `adapter_config.json`, weights, no `modules_to_save`, rank <= the
   server's `--max-lora-rank`, the name is new and the base is served). Any failure raises
   `AdapterInvalid` (or a subclass) and nothing on the server changes;
2. `POST /v1/load_lora_adapter`;
3. `/v1/models` must list the adapter with `parent` = the base's served name;
4. a greedy probe on a fixed prompt must differ from the base: in text, or in the
   log-probabilities of the prompt or the generated tokens (a random tiny model can produce
   the same greedy text with a real adapter, its log-probs never match).

Steps 3-4 unload the adapter again before raising. Every version gets a new name:
re-loading an adapter under a name in use can serve stale prefix-cache entries.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pydantic import BaseModel, Field

from cai.generator.client import GeneratorClient
from cai.generator.errors import (
    AdapterInvalid,
    AdapterNameTaken,
    AdapterNotListed,
    AdapterProbeFailed,
    AdapterRankTooHigh,
    GeneratorError,
    GeneratorStatusError,
    PublishError,
)
from cai.generator.types import Choice
from protocol.names import check_name

logger = logging.getLogger(__name__)

# A fixed prompt, so probes of successive versions are comparable.
DEFAULT_PROBE_PROMPT = "Question: What is the capital of France?\nAnswer:"
PROBE_TOKENS = 8
# Log-probs of one model on one prompt agree to ~1e-6 between calls (float32 on CPU); an
# adapter with non-zero B moves them by orders of magnitude more.
PROBE_TOLERANCE = 1e-4
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterInfo(BaseModel):
    """What the local checks read from an adapter folder."""

    path: str
    rank: int = Field(description="The largest LoRA rank in the adapter (r or rank_pattern).")
    target_modules: list[str] = Field(default_factory=list)
    base_model_name_or_path: str | None = None
    weights_file: str


class ProbeResult(BaseModel):
    """Greedy output of the base and of the adapter on the same prompt."""

    prompt: str
    base_text: str
    adapter_text: str
    text_differs: bool
    max_abs_logprob_diff: float = Field(
        description="Largest per-token log-prob difference (prompt and generated tokens)."
    )
    mean_abs_logprob_diff: float
    tokens_compared: int

    @property
    def differs(self) -> bool:
        return self.text_differs or self.max_abs_logprob_diff > PROBE_TOLERANCE


class PublishRecord(BaseModel):
    """What `publish` did."""

    name: str
    path: str = Field(description="The adapter folder as the server loaded it.")
    base_model_name: str
    rank: int
    max_lora_rank: int | None = Field(description="The server's limit, when it was known.")
    probe: ProbeResult
    seconds: float = Field(description="Wall time of the whole publish, checks included.")


def adapter_version_name(stage: int, job_id: str) -> str:
    """The served name of a stage's adapter, e.g. `stage1-job-3f2a`: new for every version."""
    if stage < 0:
        raise ValueError(f"stage must be >= 0, got {stage}")
    return check_name(f"stage{stage}-{job_id}")


def check_adapter(adapter_path: Path, *, max_lora_rank: int | None = None) -> AdapterInfo:
    """Local checks of a PEFT LoRA folder; raise `AdapterInvalid` saying what to fix."""
    path = Path(adapter_path)
    if not path.exists():
        raise AdapterInvalid(f"adapter path {path} does not exist")
    if not path.is_dir():
        raise AdapterInvalid(f"adapter path {path} is not a folder (give the PEFT output folder)")
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterInvalid(
            f"{path} has no adapter_config.json: is it a PEFT adapter saved with save_pretrained?"
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterInvalid(f"cannot read {config_file}: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterInvalid(f"{config_file} is not a JSON object")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterInvalid(f"{path} is a {peft_type} adapter; vLLM serves LoRA adapters only")
    weights = next((name for name in WEIGHT_FILES if (path / name).is_file()), None)
    if weights is None:
        raise AdapterInvalid(f"{path} has no weights ({' or '.join(WEIGHT_FILES)})")
    if config.get("modules_to_save"):
        raise AdapterInvalid(
            f"{path} saves whole modules ({config['modules_to_save']}); vLLM refuses adapters "
            "with modules_to_save: train without it"
        )
    if config.get("use_dora"):
        raise AdapterInvalid(
            f"{path} is a DoRA adapter; vLLM serves plain LoRA: train without use_dora"
        )
    rank = _rank(config, config_file)
    if max_lora_rank is not None and rank > max_lora_rank:
        raise AdapterRankTooHigh(
            f"{path} has LoRA rank {rank}, above the generator's --max-lora-rank "
            f"{max_lora_rank}: train with r <= {max_lora_rank} or restart the generator "
            f"with CAI_GENERATOR_MAX_LORA_RANK >= {rank}"
        )
    targets = config.get("target_modules") or []
    return AdapterInfo(
        path=str(path.resolve()),
        rank=rank,
        target_modules=[targets] if isinstance(targets, str) else list(targets),
        base_model_name_or_path=config.get("base_model_name_or_path"),
        weights_file=weights,
    )


def _rank(config: dict[str, object], config_file: Path) -> int:
    r = config.get("r")
    if not isinstance(r, int) or r < 1:
        raise AdapterInvalid(f"{config_file} has no valid rank `r` (got {r!r})")
    pattern = config.get("rank_pattern") or {}
    ranks = (
        [r] + [v for v in pattern.values() if isinstance(v, int)]
        if isinstance(pattern, dict)
        else [r]
    )
    return max(ranks)


async def publish(
    client: GeneratorClient,
    adapter_path: str | Path,
    name: str,
    *,
    base_model_name: str,
    max_lora_rank: int | None = None,
    server_path: str | None = None,
    probe_prompt: str = DEFAULT_PROBE_PROMPT,
    probe_tokens: int = PROBE_TOKENS,
) -> PublishRecord:
    """Check, load, verify and probe an adapter; return what was published.

    Args:
        adapter_path: the PEFT folder as this machine sees it (checked locally).
        name: the new served name (see `adapter_version_name`); must not be in use.
        base_model_name: the base's served name; the adapter's `parent` must equal it.
        max_lora_rank: the server's limit; read from the server's /server_info when None.
        server_path: the same folder as the server sees it, when it differs (a container's
            shared volume); default the resolved `adapter_path`.
    """
    started = time.perf_counter()
    try:
        check_name(name)
    except ValueError as exc:
        raise AdapterInvalid(str(exc)) from exc
    if max_lora_rank is None:
        max_lora_rank = await client.max_lora_rank()
    info = check_adapter(Path(adapter_path), max_lora_rank=max_lora_rank)
    served = {card.id: card for card in await client.models()}
    if name in served:
        raise AdapterNameTaken(
            f"the generator already serves {name!r}; adapter versions need new names "
            "(re-loading a name can serve stale prefix-cache entries): use "
            "adapter_version_name(stage, job_id)"
        )
    base = served.get(base_model_name)
    if base is None or base.parent is not None:
        bases = sorted(card.id for card in served.values() if card.parent is None)
        raise AdapterInvalid(
            f"base model {base_model_name!r} is not served by {client.base_url} "
            f"(base models served: {', '.join(bases) or 'none'})"
        )

    load_path = server_path or info.path
    try:
        await client.load_adapter(name, load_path)
    except GeneratorStatusError as exc:
        if "already been loaded" in exc.server_message:
            raise AdapterNameTaken(
                f"the generator already serves {name!r} (loaded concurrently); use a new name"
            ) from exc
        raise PublishError(
            f"the generator at {client.base_url} refused adapter {load_path} as {name!r}: "
            f"{exc.server_message}"
        ) from exc

    try:
        await _check_listed(client, name, base_model_name)
        probe = await probe_adapter(
            client, name, base_model_name, prompt=probe_prompt, max_tokens=probe_tokens
        )
        if not probe.differs:
            raise AdapterProbeFailed(
                f"adapter {name!r} ({load_path}) does not change the output of "
                f"{base_model_name!r}: same greedy text and log-probs within "
                f"{PROBE_TOLERANCE} over {probe.tokens_compared} tokens. Are its lora_B "
                "weights all zero (an untrained adapter)? It was unloaded."
            )
    except BaseException:
        await _unload_quietly(client, name)
        raise

    record = PublishRecord(
        name=name,
        path=load_path,
        base_model_name=base_model_name,
        rank=info.rank,
        max_lora_rank=max_lora_rank,
        probe=probe,
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "published %s (rank %d) in %.2fs; probe max |dlogp| %.4f",
        name,
        info.rank,
        record.seconds,
        probe.max_abs_logprob_diff,
    )
    return record


async def _check_listed(client: GeneratorClient, name: str, base_model_name: str) -> None:
    card = next((c for c in await client.models() if c.id == name), None)
    if card is None:
        raise AdapterNotListed(
            f"adapter {name!r} loaded but /v1/models of {client.base_url} does not list it"
        )
    if card.parent != base_model_name:
        raise AdapterNotListed(
            f"adapter {name!r} is listed with parent {card.parent!r}, expected "
            f"{base_model_name!r}; it was unloaded"
        )


async def probe_adapter(
    client: GeneratorClient,
    adapter: str,
    base_model_name: str,
    *,
    prompt: str = DEFAULT_PROBE_PROMPT,
    max_tokens: int = PROBE_TOKENS,
) -> ProbeResult:
    """Greedy completion of `prompt` by the base and by `adapter`, compared token by token.

    Also used after a wake-up, to check the adapter still changes outputs.
    """
    base = await _greedy(client, base_model_name, prompt, max_tokens)
    tuned = await _greedy(client, adapter, prompt, max_tokens)
    diffs = [
        abs(a - b) for a, b in zip(_prompt_logprobs(base), _prompt_logprobs(tuned), strict=False)
    ]
    # Generated tokens are comparable one to one only while both texts agree; the first
    # differing token already settles the probe.
    for a_tok, b_tok, a_lp, b_lp in zip(
        _tokens(base), _tokens(tuned), base.token_logprobs, tuned.token_logprobs, strict=False
    ):
        if a_tok != b_tok:
            break
        diffs.append(abs(a_lp - b_lp))
    return ProbeResult(
        prompt=prompt,
        base_text=base.text,
        adapter_text=tuned.text,
        text_differs=base.text != tuned.text,
        max_abs_logprob_diff=max(diffs, default=0.0),
        mean_abs_logprob_diff=sum(diffs) / len(diffs) if diffs else 0.0,
        tokens_compared=len(diffs),
    )


async def _greedy(client: GeneratorClient, model: str, prompt: str, max_tokens: int) -> Choice:
    result = await client.complete(
        [prompt],
        model=model,
        temperature=0.0,
        max_tokens=max_tokens,
        logprobs=0,
        prompt_logprobs=0,
        seed=0,
    )
    return result.choices[0][0]


def _prompt_logprobs(choice: Choice) -> list[float]:
    return [t.logprob for t in choice.prompt_logprobs or [] if t is not None]


def _tokens(choice: Choice) -> list[str]:
    return choice.logprobs.tokens if choice.logprobs is not None else []


async def _unload_quietly(client: GeneratorClient, name: str) -> None:
    try:
        await client.unload_adapter(name)
    except GeneratorError as exc:
        logger.warning("could not unload %s after a failed publish: %s", name, exc)
