"""`cai trainer ...`: datasets, jobs and adapters of the trainer service.

    cai trainer datasets upload runs/x/train.jsonl
    cai trainer jobs submit recipes/dpo.yaml --dataset ds-1234... --output-name stage1 --watch
    cai trainer jobs list --state running
    cai trainer jobs show job-...      cai trainer jobs watch job-...      cai trainer jobs cancel job-...
    cai trainer adapters list          cai trainer adapters show stage1

`--url` and `--api-key` (before the sub-command) default to `CAI_TRAINER_URL` and
`CAI_TRAINER_API_KEY`. Exit codes: 0 ok, 1 the trainer refused or failed (the message says
why), 2 bad usage; `jobs watch` exits 1 when the job did not succeed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cai.trainer import DEFAULT_URL, JobNotSucceeded, TrainerClient, TrainerError
from cai.yamlfile import read_mapping
from protocol.jobs import DpoJobSpec, JobEvent, JobRecord, JobSpec, JobState, MergeJobSpec

app = typer.Typer(help="The trainer service: datasets, DPO and merge jobs, adapters.")
datasets_app = typer.Typer(help="Upload and inspect preference datasets.")
jobs_app = typer.Typer(help="Submit, follow and cancel jobs.")
adapters_app = typer.Typer(help="Trained adapters and merged models.")
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.add_typer(adapters_app, name="adapters")

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")
_SPEC: TypeAdapter[DpoJobSpec | MergeJobSpec] = TypeAdapter(JobSpec)
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@dataclass(frozen=True)
class Target:
    url: str
    api_key: str | None


def make_client(target: Target) -> TrainerClient:
    """The client every command uses (tests replace it to add a transport)."""
    return TrainerClient(target.url, api_key=target.api_key)


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option("--url", envvar="CAI_TRAINER_URL", help="The trainer's base URL.")
    ] = DEFAULT_URL,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="CAI_TRAINER_API_KEY", help="Bearer key, if set."),
    ] = None,
) -> None:
    ctx.obj = Target(url=url, api_key=api_key or None)


def _run(ctx: typer.Context, action: Callable[[TrainerClient], Awaitable[T]]) -> T:
    """Run `action` with a client; a TrainerError becomes its message and exit code 1."""

    async def go() -> T:
        async with make_client(ctx.obj) as client:
            return await action(client)

    try:
        return asyncio.run(go())
    except TrainerError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc


def _print_json(model: BaseModel | list[Any]) -> None:
    if isinstance(model, list):
        console.print_json(json.dumps([m.model_dump(mode="json") for m in model]))
    else:
        console.print_json(model.model_dump_json())


# ---- datasets ----------------------------------------------------------------------------


@datasets_app.command("upload")
def datasets_upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A JSONL file.")],
    name: Annotated[str | None, typer.Option(help="A label for the dataset.")] = None,
    as_json: AsJson = False,
) -> None:
    """Upload preference pairs; prints the dataset id (same bytes, same id)."""
    record = _run(ctx, lambda c: c.upload_dataset(path, name=name))
    if as_json:
        _print_json(record)
    else:
        console.print(f"{record.id}  {record.rows} rows  {record.bytes} bytes")


@datasets_app.command("show")
def datasets_show(ctx: typer.Context, dataset_id: str) -> None:
    _print_json(_run(ctx, lambda c: c.get_dataset(dataset_id)))


# ---- jobs --------------------------------------------------------------------------------


def load_spec(path: Path, overrides: dict[str, str | None]) -> DpoJobSpec | MergeJobSpec:
    """A YAML or JSON recipe plus command-line overrides, validated as a JobSpec."""
    data = read_mapping(path, "job spec", typer.BadParameter)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return _SPEC.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
        raise typer.BadParameter(f"{path}: {problems}") from exc


@jobs_app.command("submit")
def jobs_submit(
    ctx: typer.Context,
    spec_file: Annotated[Path, typer.Argument(exists=True, help="Job spec (YAML or JSON).")],
    dataset: Annotated[str | None, typer.Option("--dataset", help="Set dataset_id.")] = None,
    output_name: Annotated[str | None, typer.Option(help="Set output_name.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Set base_model.")] = None,
    key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Resubmitting with it returns the same job."),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job to its end.")] = False,
    as_json: AsJson = False,
) -> None:
    """Submit a DPO or merge job (the spec's `kind` says which)."""
    spec = load_spec(
        spec_file,
        {"dataset_id": dataset, "output_name": output_name, "base_model": base_model},
    )
    job = _run(ctx, lambda c: c.submit_job(spec, idempotency_key=key))
    if as_json:
        _print_json(job)
    else:
        console.print(f"{job.id}  {job.kind}  {job.state.value}")
    if watch:
        _watch(ctx, job.id)


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state.")] = None,
    as_json: AsJson = False,
) -> None:
    jobs = _run(ctx, lambda c: c.list_jobs(state))
    if as_json:
        _print_json(jobs)
        return
    table = Table("id", "kind", "state", "output", "step", "created", "error")
    for job in jobs:
        total = job.progress.total_steps
        step = f"{job.progress.step}/{total}" if total else str(job.progress.step or "-")
        table.add_row(
            job.id,
            job.kind,
            job.state.value,
            job.spec.output_name,
            step,
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            (job.error or "")[:60],
        )
    console.print(table)


@jobs_app.command("show")
def jobs_show(ctx: typer.Context, job_id: str) -> None:
    _print_json(_run(ctx, lambda c: c.get_job(job_id)))


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: str) -> None:
    job = _run(ctx, lambda c: c.cancel_job(job_id))
    console.print(f"{job.id}  {job.state.value}")


@jobs_app.command("watch")
def jobs_watch(ctx: typer.Context, job_id: str) -> None:
    """Show progress until the job ends; exit 1 unless it succeeded."""
    _watch(ctx, job_id)


def _metrics_text(event: JobEvent) -> str:
    if event.progress is None:
        return ""
    shown = ("loss", "rewards/margins", "rewards/accuracies")
    parts = [f"{k}={event.progress.metrics[k]:.4g}" for k in shown if k in event.progress.metrics]
    if event.progress.tokens_per_second:
        parts.append(f"{event.progress.tokens_per_second:.0f} tok/s")
    return " ".join(parts)


def _watch(ctx: typer.Context, job_id: str) -> JobRecord:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
        console=console,
        transient=False,
    )
    task = progress.add_task(job_id, total=None, metrics="")

    def on_event(event: JobEvent) -> None:
        if event.type == "state" and event.state is not None:
            progress.console.print(f"{event.time:%H:%M:%S} {job_id} {event.state.value}")
        elif event.type == "progress" and event.progress is not None:
            progress.update(
                task,
                completed=event.progress.step,
                total=event.progress.total_steps,
                metrics=_metrics_text(event),
            )

    async def follow(client: TrainerClient) -> JobRecord:
        try:
            return await client.wait_for_job(job_id, on_event=on_event)
        except JobNotSucceeded as exc:
            return exc.job

    with progress:
        job = _run(ctx, follow)
    if job.state != JobState.succeeded:
        err_console.print(f"[red]{job.id} {job.state.value}:[/red] {job.error}", soft_wrap=True)
        raise typer.Exit(1)
    output = job.result.get("output_name", "")
    console.print(f"{job.id} succeeded: {output}")
    return job


# ---- adapters ----------------------------------------------------------------------------


@adapters_app.command("list")
def adapters_list(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Option(help="`lora` or `merged`.")] = None,
    as_json: AsJson = False,
) -> None:
    adapters = _run(ctx, lambda c: c.list_adapters(kind))
    if as_json:
        _print_json(adapters)
        return
    table = Table("name", "kind", "base", "parent", "rank", "job", "path")
    for a in adapters:
        table.add_row(
            a.name,
            a.kind,
            a.base_model,
            a.parent_adapter or "-",
            str(a.rank or "-"),
            a.job_id or "-",
            a.path,
        )
    console.print(table)


@adapters_app.command("show")
def adapters_show(ctx: typer.Context, name: str) -> None:
    _print_json(_run(ctx, lambda c: c.get_adapter(name)))
