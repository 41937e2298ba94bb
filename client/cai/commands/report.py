"""`cai report RUN_DIR`: rebuild `RUN_DIR/report.html` from what the run folder holds.

    cai report runs/demo
    cai report runs/demo --out /tmp/demo.html
    python scripts/screenshot_report.py runs/demo/report.html demo.png   # a PNG of it

Registered as a top-level command (`register(app)`). Safe while a run is going: it only
reads the run folder and replaces the report atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cai.report import build_report

console = Console()
err_console = Console(stderr=True)


def report(
    run_dir: Annotated[
        Path, typer.Argument(help="The run folder, e.g. runs/demo.", show_default=False)
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Where to write the HTML (default RUN_DIR/report.html)."),
    ] = None,
) -> None:
    """Rebuild the HTML report of a run (one self-contained file)."""
    try:
        path = build_report(run_dir, out)
    except FileNotFoundError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"report: [bold]{path}[/bold]")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
