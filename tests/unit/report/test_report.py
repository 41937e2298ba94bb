"""The HTML report: built from a synthetic run folder, escaped, self-contained, degrading."""

from __future__ import annotations

import json
import re

import pytest
import typer
from typer.testing import CliRunner

from cai.commands.report import register
from cai.evaluation.records import pick_examples
from cai.report import build_report, load_run
from cai.report.inputs import read_train_events
from cai.report.judge_section import WARNING
from tests.unit.report.synthetic_run import HOSTILE, make_run

CHART_IDS = (
    "chart-eval-rules",
    "chart-eval-judge",
    "chart-pair-accuracy",
    "chart-pair-rewards",
    "chart-train-loss",
    "chart-train-rewards-margins",
    "chart-train-rewards-accuracies",
    "chart-length-chars",
    "chart-length-tokens",
    "chart-funnel-1",
    "chart-funnel-2",
    "chart-costs",
    "chart-judge-check",
)
TABLE_IDS = (
    "table-eval",
    "table-train",
    "table-lengths",
    "table-skips",
    "table-costs",
    "table-examples",
    "table-judge-check",
    "table-judge-bias",
    "table-judge-cases",
)


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path / "demo", stages=2)


def test_report_has_every_chart_and_table(run_dir):
    html = build_report(run_dir).read_text()
    for chart in CHART_IDS:
        assert f'<svg id="{chart}"' in html, chart
    for table in TABLE_IDS:
        assert f'id="{table}"' in html, table


def test_report_is_self_contained(run_dir):
    html = build_report(run_dir).read_text()
    assert "<script" not in html.replace("&lt;script", "")
    # The only URL is the SVG namespace, which is a name, not a download.
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls == {"http://www.w3.org/2000/svg"}
    assert "<link" not in html and "@import" not in html


def test_model_text_is_escaped(run_dir):
    html = build_report(run_dir).read_text()
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html


def test_headline_shows_base_model_stages_and_the_last_stage(run_dir):
    html = build_report(run_dir).read_text()
    header = html.split("<nav>")[0]
    assert "tiny" in header and "heldout-v1" in header
    assert "Rule success · stage 2" in header
    assert "Held-out pair accuracy · stage 2" in header


def test_a_run_with_only_a_baseline_still_makes_a_report(tmp_path):
    run_dir = make_run(tmp_path / "base-only", stages=0)
    html = build_report(run_dir).read_text()
    assert 'id="chart-eval-rules"' in html
    assert "No training events yet." in html
    assert "Base rule success" in html


def test_an_empty_run_folder_makes_a_report_saying_what_is_missing(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    html = build_report(run_dir).read_text()
    assert "No evaluation yet." in html
    assert "eval.jsonl" in html


def test_missing_summary_is_rebuilt_from_eval_records(run_dir):
    (run_dir / "stages" / "2" / "eval_summary.json").unlink()
    inputs = load_run(run_dir)
    stage = inputs.stage(2)
    assert stage is not None and stage.summary is not None and stage.summary_rebuilt
    assert stage.summary.vs_base is not None and stage.summary.vs_previous is not None


def test_train_events_accept_progress_rows_and_whole_job_events(tmp_path):
    path = tmp_path / "train_events.jsonl"
    rows = [
        {"step": 1, "metrics": {"loss": 0.69}},
        {
            "job_id": "j",
            "seq": 3,
            "type": "progress",
            "progress": {"step": 2, "metrics": {"loss": 0.6}},
        },
        {"job_id": "j", "seq": 4, "type": "state", "state": "succeeded"},
        {"step": 2, "metrics": {"loss": 0.5}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "metr')
    points = read_train_events(path)
    assert [(p.step, p.metrics["loss"]) for p in points] == [(1, 0.69), (2, 0.5)]


def test_funnel_counts_ok_records_and_names_skip_reasons(run_dir):
    stage = load_run(run_dir).stage(1)
    assert stage is not None
    funnel = {f.step: f for f in stage.funnel}
    assert funnel["instructions"].ok == 40
    assert funnel["instructions"].not_ok == {
        "rejected: near_duplicate": 7,
        "rejected: heldout_leak": 1,
    }
    assert funnel["responses"].not_ok == {"failed: timeout": 1}
    assert funnel["train"].ok + funnel["test"].ok == funnel["pairs"].ok


def test_examples_put_verdict_changes_first(run_dir):
    inputs = load_run(run_dir)
    base, stage = inputs.stage(0), inputs.stage(2)
    assert base is not None and stage is not None
    picked = pick_examples(base.records, stage.records, count=48)
    changed = [
        before is not None
        and (before.rule_ok != after.rule_ok or before.judge_ok != after.judge_ok)
        for before, after in picked
    ]
    assert changed == sorted(changed, reverse=True)
    assert len(picked) == 48


def test_cai_report_command_rebuilds_the_report(run_dir, tmp_path):
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps `report` a named subcommand
    out = tmp_path / "elsewhere" / "r.html"
    result = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and "chart-eval-rules" in out.read_text()


def test_cai_report_on_a_missing_folder_exits_2(tmp_path):
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no run folder" in result.output


def test_stage_models_come_from_the_run_state_when_the_manifest_lacks_them(tmp_path):
    run_dir = make_run(tmp_path / "r", stages=1)
    (run_dir / "manifest.json").unlink()
    (run_dir / "stages" / "1" / "eval_summary.json").unlink()
    (run_dir / "state.json").write_text(
        json.dumps({"fingerprint": "x", "stages": [{"number": 1, "served_name": "stage1-zzz"}]})
    )
    assert load_run(run_dir).stage(1).model == "stage1-zzz"


def _section(html: str, section_id: str) -> str:
    return html.split(f'<section id="{section_id}">', 1)[1].split("</section>", 1)[0]


def test_the_judges_agreement_stands_beside_every_judge_number(run_dir):
    check = load_run(run_dir).judge_check
    assert check is not None and check.trustworthy
    note = f"judge agreement {check.agreement.interval.rate:.0%}"
    html = build_report(run_dir).read_text()
    card = html.split('id="card-judge"', 1)[1].split('<div class="card"', 1)[0]
    assert note in card
    table = html.split('id="table-eval"', 1)[1].split("</table>", 1)[0]
    # Judge (all) for base and both stages, Judge vs base for both stages.
    assert table.count(note) == 5
    assert WARNING not in html


def test_the_judge_check_section_shows_agreement_per_kind_accuracy_and_position_bias(run_dir):
    section = _section(build_report(run_dir).read_text(), "judge")
    for kind in ("truncated", "repeated", "off topic", "wrong fact", "all corruptions"):
        assert kind in section
    assert "Good answers judged ok" in section and "Corrupted answers judged not ok" in section
    assert "A-first and B-first queries disagree" in section
    assert "prefers letter A by 0.00 nats" in section
    parse = section.split("(parse rate)", 1)[1].split("</tr>", 1)[0]
    assert "<strong>100%</strong>" in parse
    assert "jc1-qa-01" in section  # every case's margins, for inspection


def test_an_untrustworthy_judge_puts_a_warning_over_its_figures(tmp_path):
    run_dir = make_run(tmp_path / "chance", stages=1, judge="chance")
    html = build_report(run_dir).read_text()
    assert WARNING in html.split("<nav>", 1)[0]  # the header, beside the judge card
    assert WARNING in _section(html, "evaluation")
    judge = _section(html, "judge")
    assert WARNING in judge and "no better than chance" in judge
    assert "prefers letter A by 2.00 nats" in judge


def test_a_run_without_a_judge_check_says_its_judge_is_unchecked(tmp_path):
    run_dir = make_run(tmp_path / "old", stages=1, judge=None)
    inputs = load_run(run_dir)
    assert inputs.judge_check is None and "judge_check.json" in inputs.missing
    html = build_report(run_dir).read_text()
    assert "judge unchecked" in html.split('id="card-judge"', 1)[1]
    assert "No judge check in this run folder" in _section(html, "judge")
