"""Every file a user hands the client: a bad one is one typed error naming the file and line.

Issue 13, class 6. Each loader is fed the same kinds of damage (bytes that are not UTF-8, a
YAML syntax error, an empty file, a field of the wrong shape), and a byte-order mark in
front of a good file, which is accepted.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cai.evaluation.judge_cases import DEFAULT_JUDGE_CASES, JudgeCasesError, load_judge_cases
from cai.pipeline.config import ConfigError, load_config
from cai.pipeline.constitution import DEFAULT_CONSTITUTION, ConstitutionError, load_constitution
from cai.pipeline.heldout import DEFAULT_HELDOUT, HeldoutError, load_heldout
from cai.pipeline.prompts import TEMPLATE_DIR, TemplateError, load_template
from cai.pipeline.seeds import DEFAULT_SEED_POOL, SeedPoolError, load_seed_pool
from cai.stages.config import RunConfigError, load_run_config

ROOT = Path(__file__).resolve().parents[2]
EVALUATION = ROOT / "client" / "cai" / "evaluation"

# (what, loader, its error, a good file's text)
LOADERS: list[tuple[str, Callable[[Path], Any], type[Exception], str]] = [
    ("pipeline config", load_config, ConfigError, (ROOT / "configs/small-test.yaml").read_text()),
    ("run config", load_run_config, RunConfigError, (ROOT / "configs/demo.yaml").read_text()),
    ("constitution", load_constitution, ConstitutionError, DEFAULT_CONSTITUTION.read_text()),
    ("seed pool", load_seed_pool, SeedPoolError, DEFAULT_SEED_POOL.read_text()),
    (
        "held-out set",
        load_heldout,
        HeldoutError,
        (ROOT / "client" / "cai" / "pipeline" / DEFAULT_HELDOUT).read_text(),
    ),
    (
        "judge cases",
        load_judge_cases,
        JudgeCasesError,
        (EVALUATION / DEFAULT_JUDGE_CASES).read_text(),
    ),
]
IDS = [case[0] for case in LOADERS]


def one_line(exc: pytest.ExceptionInfo[Exception]) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(("what", "load", "error", "good"), LOADERS, ids=IDS)
def test_a_byte_order_mark_is_accepted(
    tmp_path: Path, what: str, load: Callable[[Path], Any], error: type[Exception], good: str
) -> None:
    plain, marked = tmp_path / "plain.yaml", tmp_path / "marked.yaml"
    plain.write_text(good, encoding="utf-8")
    marked.write_bytes(codecs.BOM_UTF8 + good.encode())
    assert load(marked) == load(plain)


@pytest.mark.parametrize(("what", "load", "error", "good"), LOADERS, ids=IDS)
def test_bytes_that_are_not_utf8_name_their_line(
    tmp_path: Path, what: str, load: Callable[[Path], Any], error: type[Exception], good: str
) -> None:
    lines = good.encode().split(b"\n")
    lines[2] = lines[2] + b" \xff\xfe latin-1 caf\xe9"
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(error) as info:
        load(path)
    assert one_line(info).startswith(f"{path}:3: not UTF-8")


@pytest.mark.parametrize(("what", "load", "error", "good"), LOADERS, ids=IDS)
def test_a_yaml_syntax_error_names_its_line(
    tmp_path: Path, what: str, load: Callable[[Path], Any], error: type[Exception], good: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("# a comment\nname: [unclosed\nother: 1\n")
    with pytest.raises(error) as info:
        load(path)
    message = one_line(info)
    assert message.startswith(f"{path}:") and "not valid YAML" in message


@pytest.mark.parametrize(("what", "load", "error", "good"), LOADERS, ids=IDS)
@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_file_is_refused_not_read_as_defaults(
    tmp_path: Path,
    what: str,
    load: Callable[[Path], Any],
    error: type[Exception],
    good: str,
    text: str,
) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(error) as info:
        load(path)
    assert str(path) in one_line(info)


@pytest.mark.parametrize(("what", "load", "error", "good"), LOADERS, ids=IDS)
def test_a_missing_file_is_a_typed_error(
    tmp_path: Path, what: str, load: Callable[[Path], Any], error: type[Exception], good: str
) -> None:
    with pytest.raises(error) as info:
        load(tmp_path / "nope.yaml")
    assert "nope.yaml" in one_line(info)


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("instructions:\n  counts:\n    qa: -3\n", 3, "instructions.counts.qa"),
        ("seed: 1\nretry:\n  max_total_s: .inf\n", 3, "retry.max_total_s"),
        ("usd_per_gpu_hour: .nan\n", 1, "usd_per_gpu_hour"),
        ("endpoints:\n  - url: http://x\n    concurrency: -1\n", 3, "endpoints.0.concurrency"),
        ("critiques:\n  rounds: 1\n  few_shot: -2\n", 3, "critiques.few_shot"),
        ("responses:\n  sampling: {temperature: -0.5, max_tokens: 4}\n", 2, "temperature"),
        ("retry:\n  max_failed_share: 1.5\n", 2, "retry.max_failed_share"),
    ],
)
def test_negative_and_non_finite_numbers_in_a_pipeline_config_name_field_and_line(
    tmp_path: Path, text: str, line: int, field: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = one_line(info)
    assert message.startswith(f"{path}:{line}:") and field in message


def test_counts_that_ask_for_no_instruction_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("instructions:\n  counts: {qa: 0, completion: 0, generation: 0, response: 0}\n")
    with pytest.raises(ConfigError, match="asks for no instruction"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("name: r\nseed: -1\nstages: [{}]\n", 2, "seed"),
        ("name: r\ngenerator:\n  concurrency: 0\nstages: [{}]\n", 3, "generator.concurrency"),
        ("name: r\nevaluation:\n  max_tokens: .inf\nstages: [{}]\n", 3, "evaluation.max_tokens"),
        ("name: r\nevaluation:\n  max_tokns: 9\nstages: [{}]\n", 3, "evaluation.max_tokns"),
    ],
)
def test_bad_numbers_in_a_run_config_name_field_and_line(
    tmp_path: Path, text: str, line: int, field: str
) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(RunConfigError) as info:
        load_run_config(path)
    message = one_line(info)
    assert message.startswith(f"{path}:{line}:") and field in message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # In the run's shared pipeline: every stage inherits it.
        ("name: r\npipeline:\n  instructions:\n    counts: {qa: -1}\nstages: [{}]\n", 4),
        # In the second stage's own overrides: refused at load, not when stage 2 starts.
        (
            "name: r\nstages:\n  - {}\n  - pipeline:\n      critiques:\n        rounds: -2\n",
            6,
        ),
    ],
)
def test_a_bad_stage_pipeline_is_refused_when_the_run_config_loads(
    tmp_path: Path, text: str, line: int
) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(RunConfigError) as info:
        load_run_config(path)
    assert one_line(info).startswith(f"{path}:{line}:")


def test_a_template_with_a_bom_loads_and_one_with_bad_bytes_names_the_line(
    tmp_path: Path,
) -> None:
    good = (TEMPLATE_DIR / "responses.txt").read_bytes()
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / "responses.txt").write_bytes(codecs.BOM_UTF8 + good)
    assert load_template("responses", marked).sections == load_template("responses").sections
    broken = tmp_path / "broken"
    broken.mkdir()
    lines = good.split(b"\n")
    lines[3] += b"\xc3("
    (broken / "responses.txt").write_bytes(b"\n".join(lines))
    with pytest.raises(TemplateError) as info:
        load_template("responses", broken)
    assert one_line(info).startswith(f"{broken / 'responses.txt'}:4: not UTF-8")


def test_a_template_header_that_is_not_yaml_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "responses.txt").write_text("# name: responses\n# stop: [unclosed\n=== query\nx\n")
    with pytest.raises(TemplateError) as info:
        load_template("responses", tmp_path)
    assert one_line(info).startswith(f"{tmp_path / 'responses.txt'}:2:")
