"""The `cai` command. Each resource is a sub-app in `cai.commands.<name>`, registered here.

cai --help
"""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="cai",
    help="Constitutional-AI bootstrap: generate preference pairs with vLLM, train with DPO, repeat.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# (module under cai.commands, how it is mounted). A module exposes `app` (a typer.Typer
# mounted as a sub-command group) or `register(app)` (adds top-level commands).
_COMMAND_MODULES: tuple[str, ...] = ("generator", "generate", "trainer", "run", "report")


def _load_commands() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"cai.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cai.commands.{name}":
                continue  # that part of the CLI is not built yet
            raise
        if hasattr(module, "register"):
            module.register(app)
        else:
            app.add_typer(module.app, name=name)


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


_load_commands()


if __name__ == "__main__":
    app()
