"""`cai generate` and `cai rerun <step>` through typer's CliRunner."""

from __future__ import annotations

from typer.testing import CliRunner

from cai.cli import app
from cai.pipeline.store import RERUN_STEPS

runner = CliRunner()


def test_generate_is_registered_with_its_options():
    result = runner.invoke(app, ["generate", "--help"])
    assert result.exit_code == 0
    for option in ("--small-test", "--run-dir", "--name", "--endpoint", "--model"):
        assert option in result.output


def test_there_is_one_rerun_subcommand_per_step():
    result = runner.invoke(app, ["rerun", "--help"])
    assert result.exit_code == 0
    for step in RERUN_STEPS:
        assert step in result.output


def test_a_bad_config_exits_2_with_the_field_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("critiques:\n  rounds: 0\n")
    result = runner.invoke(app, ["generate", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "critiques.rounds" in result.output


def test_rerun_of_a_folder_that_is_not_a_run_says_so(tmp_path):
    result = runner.invoke(app, ["rerun", "pairs", "--run", str(tmp_path)])
    assert result.exit_code == 2
    assert "config.yaml" in result.output
