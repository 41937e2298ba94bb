"""The report rendered by a real browser: headless Chromium (Debian's `chromium` package).

Builds a report from a synthetic two-stage run folder, lets Chromium parse and lay it out
(`--dump-dom`, `--screenshot`), and checks the charts and tables are in the rendered DOM and
the screenshot shows more than an empty page. Then `scripts/screenshot_report.py` makes a
full-page PNG. Chromium is installed if missing (`apt-get install -y chromium`, as root);
the tests skip, saying why, only when that is impossible.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cai.report import build_report
from cai.report.browser import BASE_FLAGS
from tests.unit.report.synthetic_run import make_run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "screenshot_report.py"
FLAGS = BASE_FLAGS
EXPECTED_CHARTS = {
    "chart-eval-rules": "Rule success by instruction type",
    "chart-eval-judge": "Judge success by instruction type",
    "chart-pair-accuracy": "Held-out pair accuracy",
    "chart-train-loss": "DPO loss",
    "chart-train-rewards-margins": "Reward margin (chosen - rejected)",
    "chart-train-rewards-accuracies": "Reward accuracy (train batches)",
    "chart-length-chars": "Response length (characters)",
    "chart-funnel-1": "Stage 1: records kept per step",
    "chart-funnel-2": "Stage 2: records kept per step",
    "chart-costs": "Wall time per step",
}
EXPECTED_TABLES = (
    "table-eval",
    "table-train",
    "table-lengths",
    "table-skips",
    "table-costs",
    "table-examples",
)


def _install_chromium() -> str | None:
    """Why Chromium cannot be had, or None once it is on PATH."""
    if shutil.which("chromium"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "chromium is not installed and apt-get cannot run here (not root): apt-get install -y chromium"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed: {done.stderr.strip()[-300:]}"
    return None if shutil.which("chromium") else "apt-get installed no `chromium` command"


@pytest.fixture(scope="module")
def chromium() -> str:
    reason = _install_chromium()
    if reason:
        pytest.skip(reason)
    found = shutil.which("chromium")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run_dir = make_run(tmp_path_factory.mktemp("runs") / "demo", stages=2)
    return build_report(run_dir)


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        timeout=120,
        check=True,
    )


class _Dom(HTMLParser):
    """Collects svg ids with their <title>, table ids, and drawn marks per chart."""

    def __init__(self) -> None:
        super().__init__()
        self.svg_titles: dict[str, str] = {}
        self.marks: dict[str, int] = {}
        self.tables: set[str] = set()
        self._svg: str | None = None
        self._in_title = False
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attr = dict(attrs)
        if tag == "svg" and attr.get("id"):
            self._svg = attr["id"]
            self.svg_titles[self._svg] = ""
            self.marks[self._svg] = 0
        elif tag == "table" and attr.get("id"):
            self.tables.add(attr["id"])
        elif self._svg and tag == "title" and not self.svg_titles[self._svg]:
            self._in_title = True
        elif self._svg and tag in ("rect", "polyline", "circle"):
            self.marks[self._svg] += 1

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag == "svg":
            self._svg = None

    def handle_data(self, data):
        if self._in_title and self._svg:
            self.svg_titles[self._svg] += data


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_rendered_dom_holds_every_chart_and_table(chromium, report, tmp_path):
    done = _chromium(chromium, tmp_path / "profile", "--dump-dom", report.as_uri())
    dom = _Dom()
    dom.feed(done.stdout.decode("utf-8"))
    for chart_id, title in EXPECTED_CHARTS.items():
        assert dom.svg_titles.get(chart_id) == title, chart_id
        assert dom.marks[chart_id] > 0, f"{chart_id} draws nothing"
    assert set(EXPECTED_TABLES) <= dom.tables


def test_screenshot_shows_more_than_an_empty_page(chromium, report, tmp_path):
    blank_html = tmp_path / "blank.html"
    blank_html.write_text("<!DOCTYPE html><html><body></body></html>")
    shots = {}
    for name, page in (("report", report), ("blank", blank_html)):
        png = tmp_path / f"{name}.png"
        _chromium(
            chromium,
            tmp_path / f"profile-{name}",
            "--window-size=1280,2000",
            f"--screenshot={png}",
            page.as_uri(),
        )
        shots[name] = png.read_bytes()
    assert _png_size(shots["report"]) == (1280, 2000)
    # Charts, text and colour compress far worse than a white page of the same size.
    assert len(shots["report"]) > 5 * len(shots["blank"])


def test_screenshot_script_captures_the_whole_page(chromium, report, tmp_path):
    png = tmp_path / "full.png"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(report), str(png)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    width, height = _png_size(png.read_bytes())
    assert width == 1280
    assert height > 3000  # every section, not just the first screen
