"""Reading the files a user hands the client (configs, constitution, held-out sets, templates).

    text = read_text(path, "pipeline config", ConfigError)     # UTF-8, a BOM accepted
    data = parse_mapping(text, path, "pipeline config", ConfigError)
    config = validate(PipelineConfig, data, str(path), ConfigError, text=text)

Every problem is raised as `error(message)`, one line that names the file and, where the
problem has one, the line (`configs/x.yaml:7: instructions.counts.qa: ...`): the CLI prints
it and exits 2, with no traceback. A byte-order mark is accepted (editors on Windows write
one; it carries no meaning in UTF-8), other encodings are refused rather than guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def decode(data: bytes, source: str, error: type[Exception], *, first_line: int = 1) -> str:
    """`data` as UTF-8 (a leading BOM dropped); `error` names the line of a bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(
            f"{source}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None


def read_text(path: str | Path, what: str, error: type[Exception]) -> str:
    """The file's text; `error` if it cannot be read or is not UTF-8."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {file}: {exc.strerror or exc}") from None
    return decode(data, str(file), error)


def load_yaml(text: str, source: str | Path, what: str, error: type[Exception]) -> Any:
    """The YAML document in `text`; `error` with the line of a syntax error."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else str(source)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise error(f"{where}: {what} is not valid YAML ({problem})") from None


def parse_mapping(
    text: str, source: str | Path, what: str, error: type[Exception]
) -> dict[str, Any]:
    """The top-level mapping of a YAML file; an empty file is an error, never the defaults."""
    data = load_yaml(text, source, what, error)
    if data is None:
        raise error(
            f"{source}: {what} is empty; write its fields (an empty file would silently run "
            "every default)"
        )
    if not isinstance(data, dict):
        raise error(f"{source}:1: {what} must be a mapping of fields, not {type(data).__name__}")
    return data


def read_mapping(path: str | Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The YAML file's top-level mapping; `error(message)` if unreadable, empty or not a mapping."""
    return parse_mapping(read_text(path, what, error), path, what, error)


def load_packaged(
    model: type[M],
    path: Path | str | None,
    package: str,
    default: str,
    what: str,
    error: type[Exception],
) -> M:
    """`path` (or the file `default` packaged in `package` when None) validated as `model`;
    `error(message)` naming the file when it cannot be read or is not valid."""
    if path is None:
        text = resources.files(package).joinpath(default).read_text("utf-8")
        source = f"{package.replace('.', '/')}/{default}"
    else:
        text = read_text(path, what, error)
        source = str(path)
    return validate(model, load_yaml(text, source, what, error), source, error, text=text)


def validate(
    model: type[M],
    data: Any,
    source: str,
    error: type[Exception],
    *,
    text: str | None = None,
    under: Sequence[Sequence[str]] = ((),),
    label: str = "",
) -> M:
    """`model` from `data`; `error("<source>[:line]: field.path: problem; ...")` if invalid.

    `text` is the YAML `data` came from: each problem then names its line. `under`: where
    `data` sits in that file, most specific first (data merged from several sections is
    looked up in each; the last is the fallback). `label` is written before each field.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        root = _compose(text)
        problems = []
        for err in exc.errors():
            loc = [str(part) for part in err["loc"]]
            paths = [[*prefix, *loc] for prefix in under]
            found = (line_of(root, path, exact=True) for path in paths)
            line = next((n for n in found if n is not None), None) or line_of(root, paths[-1])
            where = f"{source}:{line}" if line is not None else source
            problems.append(f"{where}: {label}{'.'.join(loc) or 'config'}: {err['msg']}")
        raise error("; ".join(problems)) from None


def _compose(text: str | None) -> yaml.Node | None:
    if text is None:
        return None
    try:
        return yaml.compose(text)
    except yaml.YAMLError:
        return None


def line_of(root: yaml.Node | None, loc: list[str], *, exact: bool = False) -> int | None:
    """The line of the deepest node of `loc` (field names, list indices) found in `root`;
    with `exact`, None unless the whole of `loc` is there."""
    node, line, depth = root, None, 0
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((item for item in node.value if str(item[0].value) == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
        depth += 1
    return None if exact and depth < len(loc) else line
