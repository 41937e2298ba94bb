"""`cai generate`: run (or resume) the pipeline into a run folder; `cai rerun <step>` redoes a step.

    cai generate configs/pipeline.example.yaml --name demo        # runs/demo/
    cai generate --small-test --endpoint http://127.0.0.1:8000    # a few dozen completions
    cai generate configs/x.yaml --run-dir /data/runs/x --model stage1-job42
    cai rerun judgements --run runs/demo --config judge2.yaml     # new judge, same responses
    cai rerun pairs --run runs/demo                               # pairs + split again

Started again with the same folder, `cai generate` continues where it stopped (killed or
not): nothing done is requested again. `cai rerun <step>` moves that step's file and every
later one to `<run>/replaced/<n>/` and runs again from there; a changed config is accepted
for a rerun (the manifest records it). Steps: instructions, responses, critiques,
revisions, judgements, pairs, split.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cai.generator import GeneratorError
from cai.pipeline import (
    STEPS,
    ConfigError,
    EndpointConfig,
    ModelNotServed,
    PipelineConfig,
    RunConfigMismatch,
    RunSummary,
    StoreCorrupt,
    load_config,
    run_pipeline,
)
from cai.pipeline.config import small_test_overlay, validate_config
from cai.pipeline.constitution import ConstitutionError
from cai.pipeline.heldout import HeldoutError
from cai.pipeline.instructions import InstructionFileError
from cai.pipeline.prompts import TemplateError
from cai.pipeline.runner import GeneratorUnreachable
from cai.pipeline.seeds import SeedPoolError
from cai.pipeline.store import RERUN_STEPS, archive_from
from cai.runfolder import CONFIG_FILE, RunFolderCorrupt

console = Console()
err_console = Console(stderr=True)
logger = logging.getLogger(__name__)

# A file the user gave cannot be used: exit 2, one line naming the file (and line).
INPUT_ERRORS = (
    ConfigError,
    ConstitutionError,
    SeedPoolError,
    TemplateError,
    HeldoutError,
    InstructionFileError,
    FileNotFoundError,
)
USER_ERRORS = (
    *INPUT_ERRORS,
    RunFolderCorrupt,
    GeneratorUnreachable,
    RunConfigMismatch,
    ModelNotServed,
    StoreCorrupt,
    GeneratorError,
)

ConfigArg = Annotated[
    Path | None, typer.Argument(help="Pipeline config (YAML); see configs/pipeline.example.yaml.")
]
EndpointOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--endpoint",
        envvar="CAI_GENERATOR_URL",
        help="Generator base URL (repeat for replicas); replaces the config's endpoints.",
    ),
]


def fail(problem: BaseException | str, code: int) -> NoReturn:
    """Print `problem` as one `error:` line (never wrapped, markup shown as text); exit `code`."""
    err_console.print(f"[red]error:[/red] {escape(str(problem))}", soft_wrap=True)
    raise typer.Exit(code) from (problem if isinstance(problem, BaseException) else None)


class RichProgress:
    """One bar per step: accepted instructions of the target, then records per started chain."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks = {step: progress.add_task(step, total=0) for step in STEPS}
        self.not_ok = dict.fromkeys(STEPS, 0)

    def planned(self, step: str, total: int) -> None:
        task = self.progress.tasks[self.tasks[step]]
        self.progress.update(self.tasks[step], total=(task.total or 0) + total)

    def advance(self, step: str, status: str) -> None:
        if status == "ok":
            self.progress.advance(self.tasks[step])
        else:
            self.not_ok[step] += 1
            if step != "instructions":
                self.progress.advance(self.tasks[step])
            self.progress.update(
                self.tasks[step], description=f"{step} ({self.not_ok[step]} not ok)"
            )


def _build_config(
    config_path: Path | None,
    small_test: bool,
    endpoints: list[str] | None,
    model: str | None,
    seed: int | None,
    concurrency: int | None,
) -> PipelineConfig:
    if config_path is not None:
        config = load_config(config_path)
        if small_test:
            config = small_test_overlay(config)
    else:
        config = PipelineConfig.small_test() if small_test else PipelineConfig()
    updates: dict[str, Any] = {}
    if endpoints:
        updates["endpoints"] = [EndpointConfig(url=url) for url in endpoints]
    if model:
        updates["model"] = model
    if seed is not None:
        updates["seed"] = seed
    if updates:
        config = validate_config({**config.model_dump(), **updates})
    if concurrency is not None:
        for endpoint in config.endpoints:
            endpoint.concurrency = concurrency
    return config


def _run(
    config: PipelineConfig, run_dir: Path, *, show_progress: bool, accept_change: bool
) -> RunSummary:
    async def go() -> RunSummary:
        if not show_progress:
            return await run_pipeline(config, run_dir, accept_config_change=accept_change)
        columns = (
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            return await run_pipeline(
                config, run_dir, progress=RichProgress(progress), accept_config_change=accept_change
            )

    try:
        return asyncio.run(go())
    except USER_ERRORS as exc:
        fail(exc, 2)


def print_summary(summary: RunSummary) -> None:
    funnel = Table(title=f"run {summary.name} ({summary.status}) - {summary.run_dir}")
    funnel.add_column("stage")
    funnel.add_column("ok", justify="right")
    funnel.add_column("not ok", justify="right")
    funnel.add_column("tokens in / out", justify="right")
    for stage, ok in summary.funnel:
        counts = summary.counts.get(stage, {})
        not_ok = sum(v for k, v in counts.items() if k != "ok")
        tokens = summary.tokens.get(stage)
        funnel.add_row(
            stage,
            str(ok),
            str(not_ok) if counts else "",
            f"{tokens.prompt_tokens:,} / {tokens.completion_tokens:,}" if tokens else "",
        )
    console.print(funnel)
    if summary.skip_reasons or summary.failures:
        reasons = Table(title="skipped and failed")
        reasons.add_column("step:reason")
        reasons.add_column("count", justify="right")
        for reason, count in summary.skip_reasons.items():
            reasons.add_row(reason, str(count))
        for step, failed in summary.failures.items():
            for reason, count in failed.items():
                reasons.add_row(f"{step}:failed {reason}", str(count))
        console.print(reasons)
    if summary.shortfall:
        console.print(f"[yellow]short of instructions:[/yellow] {summary.shortfall}")
    div = summary.diversity.get("instructions", {})
    console.print(
        f"diversity: unique {div.get('unique_ratio', 0):.2f}, distinct-1 {div.get('distinct_1', 0):.2f}, "
        f"distinct-2 {div.get('distinct_2', 0):.2f} | time {summary.wall_s:.1f}s, "
        f"{summary.gpu_s / 3600:.3f} GPU-h, ${summary.cost_usd:.2f} | retries {summary.retries}"
    )
    console.print(
        f"pairs: {summary.train_path} ({summary.train_rows}), {summary.test_path} ({summary.test_rows})"
    )


def generate(
    config_path: ConfigArg = None,
    small_test: Annotated[
        bool, typer.Option("--small-test", help="A few dozen short completions.")
    ] = False,
    run_dir: Annotated[
        Path | None, typer.Option(help="Run folder (default: <runs-root>/<name>).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Run name (default: the config's `name`).")
    ] = None,
    runs_root: Annotated[Path, typer.Option(help="Where named runs live.")] = Path("runs"),
    endpoint: EndpointOpt = None,
    model: Annotated[
        str | None, typer.Option(help="Served model or adapter that generates.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed.")] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Requests in flight per endpoint.")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Generate preference pairs: instructions -> responses -> critiques -> revisions -> judgements -> pairs."""
    try:
        config = _build_config(config_path, small_test, endpoint, model, seed, concurrency)
    except USER_ERRORS as exc:
        fail(exc, 2)
    folder = run_dir or runs_root / (name or config.name)
    summary = _run(config, folder, show_progress=progress, accept_change=False)
    print_summary(summary)
    if summary.status != "complete":
        fail(f"run {summary.status}: {summary.status_reason}", 1)


rerun_app = typer.Typer(help="Redo one step (and everything after it) of an existing run.")


def _rerun_command(step: str) -> Any:
    def rerun(
        run: Annotated[Path, typer.Option("--run", help="The run folder.")],
        config_path: Annotated[
            Path | None, typer.Option("--config", help="A changed config (default: the run's).")
        ] = None,
        endpoint: EndpointOpt = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    ) -> None:
        saved = run / CONFIG_FILE
        try:
            if config_path is None:
                if not saved.exists():
                    raise ConfigError(f"{saved} missing: is {run} a run folder?")
                config = load_config(saved)
            else:
                config = load_config(config_path)
            if endpoint:
                config = validate_config(
                    {**config.model_dump(), "endpoints": [{"url": url} for url in endpoint]}
                )
        except USER_ERRORS as exc:
            fail(exc, 2)
        moved = archive_from(run, step)
        for path in moved:
            console.print(f"moved {path.name} to {path.parent}")
        summary = _run(config, run, show_progress=progress, accept_change=True)
        print_summary(summary)
        if summary.status != "complete":
            fail(f"run {summary.status}: {summary.status_reason}", 1)

    rerun.__doc__ = f"Redo `{step}` and every later step of a run (old files kept under replaced/)."
    return rerun


for _step in RERUN_STEPS:
    rerun_app.command(_step)(_rerun_command(_step))


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.add_typer(rerun_app, name="rerun")
