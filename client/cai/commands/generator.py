"""`cai generator ...`: talk to the generator (vLLM) directly.

    cai generator health
    cai generator models
    cai generator complete "Q: 2+2?\\nA:" --model tiny --max-tokens 16 --stop "###END###"
    cai generator publish adapters/stage1-job42 --name stage1-job42 --base-model tiny
    cai generator unload stage1-job42
    cai generator sleep --level 1 && cai generator wake
    cai generator smoke            # served models, completions, a stop-string check, timing

`--base-url` and `--api-key` default to `CAI_GENERATOR_URL` and `CAI_GENERATOR_API_KEY`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cai.generator import (
    GeneratorClient,
    GeneratorError,
    publish,
)
from cai.generator.smoke import SmokeReport, run_smoke

app = typer.Typer(help="The generator (vLLM): completions, models, adapters, sleep mode.")
console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")

BaseUrl = Annotated[
    str,
    typer.Option(
        "--base-url", envvar="CAI_GENERATOR_URL", help="The generator, e.g. http://127.0.0.1:8000."
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="CAI_GENERATOR_API_KEY", help="Bearer key, if the server has one."
    ),
]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds per request.")]
Retries = Annotated[
    int, typer.Option("--retries", help="Retries on connection errors, 429 and 5xx.")
]

DEFAULT_URL = "http://127.0.0.1:8000"


def _run(
    base_url: str,
    api_key: str | None,
    timeout: float,
    retries: int,
    action: Callable[[GeneratorClient], Awaitable[T]],
) -> T:
    """Run `action` with a client; a `GeneratorError` becomes its message and exit code 1."""

    async def main() -> T:
        async with GeneratorClient(
            base_url, api_key=api_key, timeout=timeout, max_retries=retries
        ) as client:
            return await action(client)

    try:
        return asyncio.run(main())
    except GeneratorError as exc:
        # soft_wrap: an error message stays one line, whole for grep and logs.
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc


@app.command()
def health(
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 10.0,
) -> None:
    """Exit 0 if the generator answers /health, 1 (with the reason) if not."""
    _run(base_url, api_key, timeout, 0, lambda c: c.health())
    console.print(f"healthy: {base_url}")


@app.command()
def models(
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 30.0,
    retries: Retries = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The base model and the loaded adapters (with their parent)."""
    cards = _run(base_url, api_key, timeout, retries, lambda c: c.models())
    if as_json:
        console.print_json(json.dumps([card.model_dump() for card in cards]))
        return
    table = Table("id", "parent", "root", "max_model_len")
    for card in cards:
        table.add_row(card.id, card.parent or "-", card.root or "-", str(card.max_model_len or "-"))
    console.print(table)


@app.command()
def complete(
    prompts: Annotated[list[str], typer.Argument(help="One or more prompts.")],
    model: Annotated[str, typer.Option(help="Served name: the base or an adapter.")] = "tiny",
    n: Annotated[int, typer.Option(help="Completions per prompt.")] = 1,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_tokens: int = 64,
    stop: Annotated[
        list[str] | None, typer.Option("--stop", help="A stop string; repeat for several.")
    ] = None,
    logprobs: Annotated[int | None, typer.Option(help="Top log-probs per token.")] = None,
    seed: int | None = None,
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 600.0,
    retries: Retries = 4,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole result as JSON.")
    ] = False,
) -> None:
    """Complete prompts with the base model or an adapter."""
    result = _run(
        base_url,
        api_key,
        timeout,
        retries,
        lambda c: c.complete(
            prompts,
            model=model,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            stop=stop,
            logprobs=logprobs,
            seed=seed,
        ),
    )
    if as_json:
        console.print_json(result.model_dump_json())
        return
    for prompt, group in zip(result.prompts, result.choices, strict=True):
        console.print(f"[bold]prompt[/bold] {prompt!r}", highlight=False)
        for i, choice in enumerate(group):
            console.print(
                f"  [{i}] {choice.text!r}  (finish={choice.finish_reason}, "
                f"stop={choice.stop_reason!r})",
                highlight=False,
            )
    u = result.usage
    console.print(f"tokens: prompt {u.prompt_tokens}, completion {u.completion_tokens}")


@app.command("publish")
def publish_command(
    adapter_path: Annotated[Path, typer.Argument(help="PEFT adapter folder.")],
    name: Annotated[str, typer.Option(help="New served name, e.g. stage1-<job id>.")],
    base_model: Annotated[str, typer.Option(help="The base's served name.")] = "tiny",
    max_lora_rank: Annotated[
        int | None, typer.Option(help="The server's --max-lora-rank (read from it if omitted).")
    ] = None,
    server_path: Annotated[
        str | None, typer.Option(help="The folder as the server sees it, if it differs.")
    ] = None,
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 300.0,
    retries: Retries = 2,
) -> None:
    """Check, load and probe an adapter under a new name."""
    record = _run(
        base_url,
        api_key,
        timeout,
        retries,
        lambda c: publish(
            c,
            adapter_path,
            name,
            base_model_name=base_model,
            max_lora_rank=max_lora_rank,
            server_path=server_path,
        ),
    )
    probe = record.probe
    console.print(
        f"published {record.name} (rank {record.rank}, parent {record.base_model_name}) "
        f"in {record.seconds:.2f}s; probe: text differs={probe.text_differs}, "
        f"max |Δlogprob|={probe.max_abs_logprob_diff:.4f} over {probe.tokens_compared} tokens",
        highlight=False,
    )


@app.command()
def unload(
    name: Annotated[str, typer.Argument(help="Served adapter name.")],
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 60.0,
    retries: Retries = 2,
) -> None:
    """Unload an adapter."""
    _run(base_url, api_key, timeout, retries, lambda c: c.unload_adapter(name))
    console.print(f"unloaded {name}")


@app.command()
def sleep(
    level: Annotated[int, typer.Option(min=1, max=2, help="1: offload weights; 2: drop them.")] = 1,
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 120.0,
    retries: Retries = 2,
) -> None:
    """Put the generator to sleep (frees the GPU for training; completions wait)."""
    _run(base_url, api_key, timeout, retries, lambda c: c.sleep(level))
    console.print(f"sleeping (level {level})")


@app.command()
def wake(
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 300.0,
    retries: Retries = 2,
) -> None:
    """Wake the generator up."""
    _run(base_url, api_key, timeout, retries, lambda c: c.wake_up())
    console.print("awake")


@app.command()
def smoke(
    model: Annotated[
        str | None, typer.Option(help="Served name; default the first base model.")
    ] = None,
    n: Annotated[int, typer.Option(help="Completions per prompt.")] = 2,
    max_tokens: int = 32,
    seed: int = 0,
    base_url: BaseUrl = DEFAULT_URL,
    api_key: ApiKey = None,
    timeout: Timeout = 300.0,
    retries: Retries = 2,
) -> None:
    """Generation smoke run: served models, a few completions, a multi-token stop check."""
    report = _run(
        base_url,
        api_key,
        timeout,
        retries,
        lambda c: run_smoke(c, model=model, n=n, max_tokens=max_tokens, seed=seed),
    )
    _print_smoke(report)
    if not report.passed:
        raise typer.Exit(1)


def _print_smoke(report: SmokeReport) -> None:
    console.print(f"[bold]generator[/bold] {report.base_url}")
    table = Table("served model", "parent", "root")
    for card in report.models:
        table.add_row(card.id, card.parent or "-", card.root or "-")
    console.print(table)
    console.print(
        f"[bold]{len(report.samples)} completions[/bold] from {report.model!r} "
        f"(stop strings '###END###' and a blank line):"
    )
    for sample in report.samples:
        console.print(
            f"  {sample.prompt[:40]!r} -> {sample.text[:60]!r} "
            f"(finish={sample.finish_reason}, stop={sample.stop_reason!r})",
            highlight=False,
        )
    u = report.usage
    rate = u.completion_tokens / report.seconds if report.seconds > 0 else 0.0
    console.print(
        f"tokens: prompt {u.prompt_tokens}, completion {u.completion_tokens}; "
        f"{report.seconds:.2f}s ({rate:.0f} completion tokens/s)"
    )
    check = report.stop_check
    if check is None:
        console.print("[red]stop check: no greedy output had a usable multi-token run[/red]")
        return
    verdict = "[green]OK[/green]" if check.passed else "[red]FAILED[/red]"
    console.print(
        f"stop check {verdict}: stop string {check.stop!r} ({len(check.stop_tokens)} tokens "
        f"{check.stop_tokens!r}) ended seeded generation after {len(check.text_with_stop)} "
        f"characters; text {check.text_with_stop!r}, expected {check.expected_text!r}, "
        f"stop_reason {check.stop_reason!r}",
        highlight=False,
    )
