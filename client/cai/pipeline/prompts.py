"""Prompt templates: versioned text files in `templates/`, rendered with `{{name}}` values.

    tpl = load_template("responses")
    tpl.tag                      # "responses@1": recorded on every record it produced
    tpl.render("query", instruction="Why is the sky blue?")

File format (see `templates/instructions.txt`): `# key: value` header lines (YAML values;
`name`, `version` and optional `stop` / `labels`), then `=== section` blocks. Values are
inserted verbatim (a value containing `{{x}}` is not expanded again), and a missing value
is an error rather than an empty string.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from cai.yamlfile import read_text

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# vLLM's completions API answers 400 to more stop strings than this.
MAX_STOP_STRINGS = 4
# Blocks of a few-shot prompt are separated by one blank line.
BLOCK_JOINER = "\n\n"


class TemplateError(ValueError):
    """A template file is malformed or a value for a placeholder is missing."""


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    sections: dict[str, str]
    sha256: str
    stop: tuple[str, ...] = ()
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        """`name@version`, the label written on every record this template produced."""
        return f"{self.name}@{self.version}"

    def render(self, section: str, **values: str) -> str:
        try:
            text = self.sections[section]
        except KeyError:
            raise TemplateError(
                f"template {self.tag} has no section {section!r}; it has {sorted(self.sections)}"
            ) from None

        def substitute(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in values:
                raise TemplateError(
                    f"template {self.tag} section {section!r} needs a value for {key!r}"
                )
            return values[key]

        return _PLACEHOLDER.sub(substitute, text)


def parse_template(text: str, *, source: str = "<string>") -> Template:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it is not content
    header: dict[str, Any] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(lines, start=1):
        if line.startswith("=== "):
            name = line[4:].strip()
            if not name or name in sections:
                raise TemplateError(f"{source}:{number}: empty or repeated section name {name!r}")
            current = sections[name] = []
        elif current is not None:
            current.append(line)
        elif line.startswith("# ") and ":" in line:
            key, _, value = line[2:].partition(":")
            if key.strip().isidentifier():
                header[key.strip()] = _header_value(value.strip(), f"{source}:{number}")
        elif line.strip() and not line.startswith("#"):
            raise TemplateError(f"{source}:{number}: text before the first `=== section` line")
    for key in ("name", "version"):
        if header.get(key) in (None, ""):
            raise TemplateError(f"{source}: header `# {key}: ...` is missing")
    stop = header.get("stop") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise TemplateError(f"{source}: `# stop:` must be a list of non-empty strings")
    if len(stop) > MAX_STOP_STRINGS:
        raise TemplateError(
            f"{source}: {len(stop)} stop strings; vLLM accepts at most {MAX_STOP_STRINGS} "
            "(a shared prefix such as '\\n### Revis' stops at several headings)"
        )
    return Template(
        name=str(header["name"]),
        version=str(header["version"]),
        sections={name: "\n".join(body) for name, body in sections.items()},
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        stop=tuple(stop),
        header=header,
    )


def _header_value(value: str, where: str) -> Any:
    if not value:
        return None
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise TemplateError(f"{where}: the header value is not valid YAML ({problem})") from None


@cache
def _load_path(path: Path) -> Template:
    return parse_template(read_text(path, "template", TemplateError), source=str(path))


def load_template(name: str, directory: Path | None = None) -> Template:
    """Load `templates/<name>.txt` (or `<directory>/<name>.txt` to use your own)."""
    path = (directory or TEMPLATE_DIR) / f"{name}.txt"
    if not path.is_file():
        raise TemplateError(f"no template {path}; copy one from {TEMPLATE_DIR} to start")
    return _load_path(path.resolve())


def join_blocks(blocks: list[str]) -> str:
    return BLOCK_JOINER.join(block for block in blocks if block)


def few_shot_prompt(
    template: Template, examples: list[dict[str, str]], query: str, *, preamble: bool
) -> str:
    """The layout every few-shot step sends: the preamble (when asked), each example's
    `example` section rendered with its fields, then the query."""
    blocks = [template.render("preamble")] if preamble else []
    blocks += [template.render("example", **fields) for fields in examples]
    blocks.append(query)
    return join_blocks(blocks)
