"""`cai run`: the whole bootstrap (baseline, then every stage), resumable; writes the report.

    cai run configs/demo.yaml                 # runs/demo/, report at runs/demo/report.html
    cai run configs/gpu-box.yaml --name try2  # same config, a fresh run folder

Started again after an interruption (Ctrl-C, a kill, a reboot), `cai run` continues at the
step where it stopped; a DPO job already submitted is followed, not submitted again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cai.commands.generate import INPUT_ERRORS, USER_ERRORS, RichProgress, fail
from cai.evaluation.evaluate import EvaluationError
from cai.evaluation.records import EvalSummary
from cai.pipeline.runner import ProgressSink
from cai.report import build_report
from cai.runfolder import RunFolderCorrupt
from cai.stages.config import (
    RunConfigError,
    check_run_inputs,
    load_run_config,
    with_base_model,
)
from cai.stages.preflight import ServicesUnreachable
from cai.stages.runner import RunError, RunResult, run_stages
from cai.trainer import TrainerError
from protocol.jobs import JobEvent

console = Console()

# A file that cannot be used exits 2 with nothing written; what fails while running exits 1.
BAD_INPUT = (*INPUT_ERRORS, RunConfigError)
RUN_ERRORS = (*USER_ERRORS, RunConfigError, RunError, TrainerError, EvaluationError)


class ConsoleReporter:
    """Step lines, a progress bar per pipeline step, and a training bar fed by job events."""

    def __init__(self, show_progress: bool) -> None:
        self.show_progress = show_progress
        self._progress: Progress | None = None
        self._train_task: Any = None

    def _bars(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not self.show_progress,
        )

    def step(self, stage: int, step: str, message: str) -> None:
        self._stop_bars()
        label = "baseline" if stage == 0 else f"stage {stage}"
        console.print(f"[bold]{label}[/] [cyan]{step}[/]: {message}")

    def pipeline_progress(self, stage: int) -> ProgressSink | None:
        self._stop_bars()
        self._progress = self._bars()
        self._progress.start()
        return RichProgress(self._progress)

    def training(self, stage: int, event: JobEvent) -> None:
        if event.type != "progress" or event.progress is None:
            if event.type == "state" and event.state is not None:
                console.print(f"[bold]stage {stage}[/] [cyan]train[/]: job {event.state.value}")
            return
        progress = event.progress
        if self._progress is None:
            self._progress = self._bars()
            self._progress.start()
            self._train_task = self._progress.add_task("training", total=progress.total_steps)
        metrics = progress.metrics
        desc = "training"
        if "loss" in metrics:
            desc += f" loss {metrics['loss']:.4f}"
        if "rewards/accuracies" in metrics:
            desc += f" acc {metrics['rewards/accuracies']:.2f}"
        self._progress.update(
            self._train_task, completed=progress.step, total=progress.total_steps, description=desc
        )

    def _stop_bars(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._train_task = None


def _rate(summary: EvalSummary, verdict: str) -> str:
    rate = getattr(summary, verdict).get("all")
    if rate is None or rate.rate is None:
        return "-"
    return f"{rate.rate:.0%} [{rate.low:.0%}, {rate.high:.0%}]"


def print_result(result: RunResult, report: Path) -> None:
    table = Table(title=f"{result.run_dir}: held-out evaluation")
    table.add_column("stage")
    table.add_column("model")
    table.add_column("rules ok [95% CI]")
    table.add_column("judge ok [95% CI]")
    table.add_column("pair accuracy")
    for number, summary in enumerate([result.baseline, *result.stages]):
        pair = summary.pair_accuracy
        table.add_row(
            "base" if number == 0 else str(number),
            summary.model,
            _rate(summary, "rules"),
            _rate(summary, "judge"),
            "-" if pair is None or pair.accuracy is None else f"{pair.accuracy:.2f} (n={pair.n})",
        )
    console.print(table)
    check = result.judge_check
    if check is not None:
        # Beside the judge column: whether its numbers mean anything (cai.evaluation.judge_check).
        style = "green" if check.trustworthy else "bold yellow"
        console.print(f"judge check: [{style}]{escape(check.verdict)}[/]")
    console.print(f"report: [bold]{report}[/]")


def run(
    config_path: Annotated[Path, typer.Argument(help="Run config (YAML); see configs/demo.yaml.")],
    name: Annotated[str | None, typer.Option(help="Run name (folder under run_root).")] = None,
    small_test: Annotated[
        bool, typer.Option("--small-test", help="Use the pipeline's small-test sizes.")
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
    generator_url: Annotated[
        str | None,
        typer.Option(
            envvar="CAI_GENERATOR_URL",
            help="vLLM base URL; replaces the config's generator.url (a container's address).",
        ),
    ] = None,
    trainer_url: Annotated[
        str | None,
        typer.Option(envvar="CAI_TRAINER_URL", help="Replaces the config's trainer.url."),
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            "--base-model",
            help="Another base model (its served and trainer name, e.g. smollm2-135m); "
            "replaces generator.base_model, trainer.base_model and a judge that was the base.",
        ),
    ] = None,
    replicas: Annotated[
        list[str] | None,
        typer.Option(
            "--replica",
            envvar="CAI_GENERATOR_REPLICAS",
            help="Another vLLM server of the same model (repeat; the variable takes URLs "
            "separated by spaces); replaces the config's generator.replicas.",
        ),
    ] = None,
) -> None:
    """Run (or resume) the baseline and every stage of CONFIG; write the report."""
    overrides: dict[str, Any] = {}
    generator: dict[str, Any] = {}
    if generator_url:
        generator["url"] = generator_url
    if replicas:
        generator["replicas"] = list(replicas)
    if generator:
        overrides["generator"] = generator
    if trainer_url:
        overrides["trainer"] = {"url": trainer_url}
    if name:
        overrides["name"] = name
    if small_test:
        overrides["small_test"] = True
    try:
        config = load_run_config(config_path, **overrides)
        if base_model:
            config = with_base_model(config, base_model)
        check_run_inputs(config)
    except BAD_INPUT as exc:
        fail(exc, 2)
    try:
        result = asyncio.run(run_stages(config, ConsoleReporter(show_progress=not no_progress)))
        report = build_report(config.run_dir)
    except (ServicesUnreachable, RunFolderCorrupt) as exc:
        fail(exc, 2)  # found before anything was written, like a bad file
    except RUN_ERRORS as exc:
        fail(exc, 1)
    print_result(result, report)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
