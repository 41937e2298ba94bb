"""`cai generate` and `cai run` given a bad file: one `error:` line, exit 2, nothing written.

Issue 13, class 6. Every file the commands read is tried: the config itself, and each file
a config names (instructions, constitution, seed pool, held-out set, templates). The
generator URL points at a port nobody listens on: a bad file must be refused before any
request would be sent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cai.cli import app

runner = CliRunner()


def not_utf8(path: Path) -> Path:
    path.write_bytes(b"name: caf\xe9\n")
    return path


def garbage_instructions(path: Path) -> Path:
    path.write_text('{"type": "qa", "text": "A fine question?"}\nnot json at all\n')
    return path


# (a name, the config section it sets, how the bad file is made, the line it is bad on)
NAMED_FILES = [
    ("instructions", "instructions", garbage_instructions, 2),
    ("constitution", "constitution", not_utf8, 1),
    ("seed pool", "seed_pool", not_utf8, 1),
    ("held-out", "heldout", not_utf8, 1),
]


def setting(key: str, path: Path) -> dict[str, object]:
    if key == "instructions":
        return {"instructions": {"source": "file", "file": str(path)}}
    return {key: str(path)}


def assert_refused(result: object, run_dir: Path, *names: str) -> None:
    output: str = result.output  # type: ignore[attr-defined]
    lines = [line for line in output.splitlines() if line.strip()]
    assert result.exit_code == 2, output  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    for name in names:
        assert name in lines[0]
    assert not run_dir.exists()


def generate(config: Path, run_dir: Path, url: str) -> object:
    return runner.invoke(
        app,
        ["generate", str(config), "--run-dir", str(run_dir), "--endpoint", url, "--no-progress"],
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "is empty"),
        (b"# nothing but a comment\n", "is empty"),
        (b"seed: 3\nname: caf\xe9\n", ":2: not UTF-8"),
        (b"instructions:\n  counts: {qa: -5}\n", ":2: instructions.counts.qa"),
        (b"instructions:\n  counts: [qa\n", "not valid YAML"),
        (b"- a list\n", "must be a mapping"),
        (b"retry: {max_total_s: .inf}\n", ":1: retry.max_total_s"),
    ],
)
def test_generate_refuses_a_bad_config(
    tmp_path: Path, closed_url: str, content: bytes, says: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    run_dir = tmp_path / "run"
    assert_refused(generate(config, run_dir, closed_url), run_dir, str(config), says)


@pytest.mark.parametrize(
    ("name", "key", "make", "line"), NAMED_FILES, ids=[n[0] for n in NAMED_FILES]
)
def test_generate_refuses_a_bad_file_the_config_names(
    tmp_path: Path, closed_url: str, name: str, key: str, make: object, line: int
) -> None:
    bad = make(tmp_path / "bad.file")  # type: ignore[operator]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": "x", **setting(key, bad)}))
    run_dir = tmp_path / "run"
    assert_refused(generate(config, run_dir, closed_url), run_dir, f"{bad}:{line}")


def test_generate_refuses_a_bad_template(tmp_path: Path, closed_url: str) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    packaged = Path(__file__).resolve().parents[3] / "client/cai/pipeline/templates"
    for source in packaged.glob("*.txt"):
        (templates / source.name).write_bytes(source.read_bytes())
    (templates / "critiques.txt").write_bytes(b"# name: critiques\n# version: \xff\n")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": "x", "templates_dir": str(templates)}))
    run_dir = tmp_path / "run"
    assert_refused(generate(config, run_dir, closed_url), run_dir, "critiques.txt:2: not UTF-8")


def run_config(tmp_path: Path, url: str, pipeline: dict[str, object]) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "bad",
                "run_root": str(tmp_path / "runs"),
                "generator": {"url": url},
                "trainer": {"url": url},
                "stages": [{}, {"pipeline": pipeline}],
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("name", "key", "make", "line"), NAMED_FILES, ids=[n[0] for n in NAMED_FILES]
)
def test_run_refuses_a_bad_file_of_a_later_stage_before_the_first_step(
    tmp_path: Path, closed_url: str, name: str, key: str, make: object, line: int
) -> None:
    bad = make(tmp_path / "bad.file")  # type: ignore[operator]
    config = run_config(tmp_path, closed_url, setting(key, bad))
    result = runner.invoke(app, ["run", str(config), "--no-progress"])
    assert_refused(result, tmp_path / "runs", f"{bad}:{line}")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "is empty"),
        (b"name: r\nstages: [{}]\nseed: -4\n", ":3: seed"),
        (b"name: r\nstages:\n  - pipeline: {instructions: {counts: {qa: -1}}}\n", ":3: stage 1"),
        (b"\xef\xbb\xbfname: r\nstages: [{chain: merge}]\n", "stage 1 cannot use chain: merge"),
    ],
)
def test_run_refuses_a_bad_run_config(tmp_path: Path, content: bytes, says: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_bytes(content)
    result = runner.invoke(app, ["run", str(config), "--no-progress"])
    assert_refused(result, tmp_path / "runs", says)
    assert not (Path("runs") / "r").exists()


def test_a_held_out_file_of_the_evaluation_is_checked_too(tmp_path: Path, closed_url: str) -> None:
    bad = tmp_path / "heldout.yaml"
    bad.write_text(json.dumps({"version": "x", "instructions": [{"id": "A b"}]}))
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "bad",
                "run_root": str(tmp_path / "runs"),
                "generator": {"url": closed_url},
                "evaluation": {"heldout": str(bad)},
                "stages": [{}],
            }
        )
    )
    result = runner.invoke(app, ["run", str(config), "--no-progress"])
    assert_refused(result, tmp_path / "runs", f"{bad}:1: instructions.0")
