"""Every `--flag` the client's messages and docstrings name is an option of a `cai` command.

Issue 13, class 5: a hint that names a flag the command does not have sends the user
nowhere. The strings of client/cai are read with `ast`, so a new message is checked as soon
as it is written. Flags of other programs that the client talks about are listed here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

from cai.cli import app
from cai.generator import GeneratorClient, GeneratorError
from cai.trainer import TrainerClient, TrainerError

CLIENT = Path(__file__).resolve().parents[2] / "client" / "cai"
# Files whose strings are another program's command line or CSS, not cai's.
OTHER_PROGRAMS = {"report/browser.py", "report/style.py"}  # Chromium's flags; CSS variables
# Flags of the vLLM server that messages about it name.
VLLM_FLAGS = {"--max-lora-rank"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def cai_options(command: Any) -> set[str]:
    """Every option of `command` and of its sub-commands (a group has `commands`)."""
    options = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for sub in getattr(command, "commands", {}).values():
        options |= cai_options(sub)
    return options


def flags_in_client() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in CLIENT.rglob("*.py"):
        relative = path.relative_to(CLIENT).as_posix()
        if relative in OTHER_PROGRAMS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for flag in FLAG.findall(node.value):
                    found.setdefault(flag, set()).add(relative)
    return found


def test_the_scan_sees_the_flags_of_the_commands() -> None:
    found = flags_in_client()
    assert {"--endpoint", "--run-dir", "--name", "--base-url"} <= set(found)


def test_every_flag_a_message_names_exists() -> None:
    options = cai_options(typer.main.get_command(app)) | {"--help"}
    unknown = {
        flag: sorted(files)
        for flag, files in flags_in_client().items()
        if flag not in options and flag not in VLLM_FLAGS
    }
    assert unknown == {}


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def unauthorized(request: httpx.Request) -> httpx.Response:
    return httpx.Response(401, json={"error": "Unauthorized"})


@pytest.mark.parametrize("answer", [refuse, unauthorized], ids=["refused", "401"])
async def test_the_shared_clients_hints_name_variables_not_one_commands_flags(
    answer: Any,
) -> None:
    """`cai generator`, `cai generate`, `cai run` and `cai trainer` share the HTTP clients but
    not their flags (--base-url, --endpoint, --generator-url, --url): the clients' hints name
    the environment variables that all of them read."""
    transport = httpx.MockTransport(answer)
    messages = []
    async with GeneratorClient("http://gen", transport=transport, max_retries=0) as gen:
        with pytest.raises(GeneratorError) as gen_error:
            await gen.models()
        messages.append(str(gen_error.value))
    async with TrainerClient("http://trainer", transport=transport, max_retries=0) as trainer:
        with pytest.raises(TrainerError) as trainer_error:
            await trainer.list_jobs()
        messages.append(str(trainer_error.value))
    for message in messages:
        assert FLAG.findall(message) == [], message
    if answer is refuse:
        assert "CAI_GENERATOR_URL" in messages[0] and "CAI_TRAINER_URL" in messages[1]
    else:
        assert "CAI_GENERATOR_API_KEY" in messages[0]
