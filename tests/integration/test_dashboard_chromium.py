"""The trainer's dashboard (`GET /`) in a real browser: headless Chromium (Debian's `chromium`)
driven over the DevTools protocol on a pipe, against `python -m services.trainer` on a free port.

One page stays open while a job trains: the test reads the job's row from the live DOM while
the job is held half-way, lets it finish, and sees the row's step move to the end (through
the job's event stream, without reloading) and the adapter appear in the registry with its
lineage. With a key, the page is refused until the sign-in form is given the right key.

    .venv/bin/pytest tests/integration/test_dashboard_chromium.py
    CAI_DASHBOARD_SCREENSHOT_DIR=/tmp/shots .venv/bin/pytest tests/integration/test_dashboard_chromium.py

The job body is `gated_body` below (the trainer's CAI_TRAINER_JOB_BODIES points at it): a job
named `gated-*` stops after step 5 of 10 until the test creates a gate file, so what the page
shows at each moment is decided by the test, not by timing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cai.report import browser as browser_driver
from protocol.jobs import DpoJobSpec, JobProgress
from services.trainer.api.deps import SESSION_COOKIE
from services.trainer.jobs.context import JobContext
from tests.integration.conftest import TrainerService, wait_state
from tests.integration.test_report_chromium import _install_chromium
from tests.unit.trainer.conftest import pairs_jsonl

ROOT = Path(__file__).resolve().parents[2]
BODY = f"{__name__}:gated_body"
GATE_ENV = "CAI_TEST_DASHBOARD_GATES"
TOTAL_STEPS = 10
HOLD_AT = 5
KEY = "dashboard-test-key-0123456789"
WAIT_S = 60.0
MARKUP = '<img id="injected" src="x"> <b>bold</b>'


def gated_body(spec: Any, ctx: JobContext) -> dict[str, Any]:
    """Ten progress steps and a small adapter folder; `gated-*` jobs hold after step 5 until
    the file <$CAI_TEST_DASHBOARD_GATES>/<output name> exists; `markup-*` jobs fail with an
    error message that is HTML."""
    if spec.output_name.startswith("markup-"):
        raise ValueError(MARKUP)
    gate = Path(os.environ[GATE_ENV]) / spec.output_name
    for step in range(1, TOTAL_STEPS + 1):
        ctx.emit(
            JobProgress(
                step=step,
                total_steps=TOTAL_STEPS,
                eta_seconds=3.0 * (TOTAL_STEPS - step),
                tokens_per_second=1500.0 + 10 * step,
                metrics={
                    "loss": 0.693 - 0.04 * step,
                    "rewards/margins": 0.05 * step,
                    "rewards/accuracies": min(1.0, 0.5 + 0.05 * step),
                },
            )
        )
        if step == HOLD_AT and spec.output_name.startswith("gated-"):
            deadline = time.monotonic() + 300
            while not gate.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the test never opened the gate {gate}")
                time.sleep(0.05)
    (ctx.output_dir / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (ctx.output_dir / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    return {
        "metrics": {"loss": 0.293, "rewards/accuracies": 1.0, "eval/pair_accuracy": 0.75},
        "config": {"test": True},
        "rank": 8,
    }


# -- the browser ------------------------------------------------------------------------------


class Browser:
    """One headless Chromium page over the DevTools pipe: navigate, evaluate, wait, capture."""

    def __init__(self, binary: str, profile: Path, width: int = 1440, height: int = 900) -> None:
        shot = browser_driver
        self.width = width
        cmd_read, cmd_write = os.pipe()
        out_read, out_write = os.pipe()
        self.process = subprocess.Popen(
            [
                binary,
                *shot.BASE_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=lambda: shot.wire_fds(cmd_read, out_write),
        )
        os.close(cmd_read)
        os.close(out_write)
        self._fds = (cmd_write, out_read)
        self.pipe = shot.DevToolsPipe(self.process, cmd_write, out_read)
        targets = self.pipe.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t.get("type") == "page")
        self.session = self.pipe.call(
            "Target.attachToTarget", targetId=page["targetId"], flatten=True
        )["sessionId"]
        self.pipe.call("Page.enable", self.session)
        self.pipe.call(
            "Emulation.setDeviceMetricsOverride",
            self.session,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def navigate(self, url: str) -> None:
        self.pipe.events.clear()
        self.pipe.call("Page.navigate", self.session, url=url)
        self.pipe.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        reply = self.pipe.call(
            "Runtime.evaluate", self.session, expression=expression, returnByValue=True
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float = WAIT_S) -> Any:
        """Poll `expression` in the page until it is truthy (the page updates itself)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        body = self.evaluate("document.body ? document.body.innerText : ''")
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; page:\n{body}")

    def submit_form(self, key: str) -> None:
        """Type `key` into the sign-in form and submit it, as a person would."""
        self.pipe.events.clear()
        self.evaluate(
            f"document.querySelector('input[name=key]').value = {json.dumps(key)};"
            "document.querySelector('form#login').requestSubmit(); true"
        )
        self.pipe.wait_event("Page.loadEventFired")

    def screenshot(self, png: Path) -> Path:
        size = self.pipe.call("Page.getLayoutMetrics", self.session)["cssContentSize"]
        data = self.pipe.call(
            "Page.captureScreenshot",
            self.session,
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": self.width, "height": size["height"], "scale": 1},
        )["data"]
        png.write_bytes(base64.b64decode(data))
        target = os.environ.get("CAI_DASHBOARD_SCREENSHOT_DIR")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copy(png, Path(target) / png.name)
        return png

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pipe.call("Browser.close")
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in self._fds:
            os.close(fd)


@pytest.fixture(scope="module")
def chromium() -> str:
    reason = _install_chromium()
    if reason:
        pytest.skip(reason)
    found = shutil.which("chromium")
    assert found is not None
    return found


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    page = Browser(chromium, tmp_path / "profile")
    yield page
    page.close()


@pytest.fixture
def gates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the test opens gates; the trainer (and its job children) inherit the variable."""
    folder = tmp_path / "gates"
    folder.mkdir()
    monkeypatch.setenv(GATE_ENV, str(folder))
    return folder


@pytest.fixture
def trainer_with_gates(
    start_trainer: Callable[..., TrainerService], gates: Path
) -> Callable[..., TrainerService]:
    def start(api_key: str | None = None) -> TrainerService:
        return start_trainer(
            fake_bodies=False, api_key=api_key, job_bodies=json.dumps({"dpo": BODY})
        )

    return start


def _submit(client: httpx.Client, dataset: str, name: str, parent: str | None = None) -> str:
    spec = DpoJobSpec(
        base_model="tiny", dataset_id=dataset, output_name=name, parent_adapter=parent
    )
    response = client.post("/v1/jobs", json=spec.model_dump(mode="json"))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _upload(client: httpx.Client) -> str:
    response = client.post(
        "/v1/datasets", content=pairs_jsonl(), headers={"content-type": "application/jsonl"}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _row(job_id: str, attribute: str) -> str:
    return f"document.querySelector('tr[data-job-id={json.dumps(job_id)}]')?.dataset.{attribute}"


def _cell_text(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)})?.innerText.trim()"


# -- tests -------------------------------------------------------------------------------------


def test_the_page_shows_a_training_job_move_and_its_adapter_join_the_registry(
    trainer_with_gates: Callable[..., TrainerService],
    gates: Path,
    browser: Browser,
    tmp_path: Path,
) -> None:
    trainer = trainer_with_gates()
    client = trainer.client()
    dataset = _upload(client)
    first = _submit(client, dataset, "stage1-dash")
    wait_state(client, first, "succeeded")
    job = _submit(client, dataset, "gated-stage2-dash", parent="stage1-dash")

    browser.navigate(f"{trainer.base_url}/")
    row = f"tr[data-job-id={json.dumps(job)}]"
    browser.wait_for(
        f"{_row(job, 'state')} === 'running' && {_row(job, 'step')} === '{HOLD_AT}'",
        f"{job} running at step {HOLD_AT}",
    )
    held_step = int(browser.evaluate(_row(job, "step")))
    assert browser.evaluate(_cell_text(f"{row} .step")) == f"{HOLD_AT} / {TOTAL_STEPS}"
    assert browser.evaluate(f"document.querySelector('{row} progress').value") == HOLD_AT
    held_loss = browser.evaluate(_cell_text(f"{row} .loss"))
    assert browser.evaluate(_cell_text(f"{row} .eta")) == "15s"
    browser.screenshot(tmp_path / "dashboard-running.png")

    (gates / "gated-stage2-dash").touch()
    # The same page, not reloaded: the row follows the job's event stream to the end.
    browser.wait_for(f"{_row(job, 'state')} === 'succeeded'", f"{job} succeeded on the page")
    final_step = int(browser.evaluate(_row(job, "step")))
    assert held_step < final_step == TOTAL_STEPS
    assert browser.evaluate(_cell_text(f"{row} .step")) == f"{TOTAL_STEPS} / {TOTAL_STEPS}"
    assert browser.evaluate(_cell_text(f"{row} .loss")) != held_loss
    assert browser.evaluate(f"document.querySelectorAll('{row} svg.spark polyline').length") == 1

    adapter = 'tr[data-adapter="gated-stage2-dash"]'
    browser.wait_for(f"!!document.querySelector({json.dumps(adapter)})", "the adapter's row")
    lineage = browser.evaluate(
        f"[...document.querySelectorAll('{adapter} .lineage .node')].map(n => n.textContent)"
    )
    assert lineage == ["tiny", "stage1-dash", "gated-stage2-dash"]
    metrics = browser.evaluate(_cell_text(f"{adapter} .metrics"))
    assert "eval/pair_accuracy" in metrics and "0.75" in metrics
    assert browser.evaluate("document.querySelectorAll('#adapters tbody tr').length") == 2
    assert browser.evaluate("document.getElementById('connection').dataset.status") == "live"
    png = browser.screenshot(tmp_path / "dashboard-done.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_with_a_key_the_page_is_refused_until_the_sign_in_form_gets_the_key(
    trainer_with_gates: Callable[..., TrainerService], browser: Browser, tmp_path: Path
) -> None:
    trainer = trainer_with_gates(api_key=KEY)
    client = trainer.client()
    job = _submit(client, _upload(client), "keyed-dash")
    wait_state(client, job, "succeeded")

    browser.navigate(f"{trainer.base_url}/")
    assert browser.evaluate("!!document.querySelector('form#login')")
    assert browser.evaluate("document.querySelector('#jobs')") is None
    browser.screenshot(tmp_path / "dashboard-login.png")

    browser.submit_form("not-the-key")
    assert browser.evaluate("!!document.querySelector('form#login')")
    assert "not this trainer's" in browser.evaluate("document.body.innerText")

    browser.submit_form(KEY)
    browser.wait_for(f"{_row(job, 'state')} === 'succeeded'", "the job's row after signing in")
    browser.wait_for("!!document.querySelector('tr[data-adapter=\"keyed-dash\"]')", "the adapter")
    assert browser.evaluate("location.pathname + location.search") == "/"
    assert browser.evaluate("document.cookie") == ""  # HttpOnly: the page's script cannot read it
    assert KEY not in trainer.log_path.read_text()


def test_sign_in_sets_a_strict_http_only_cookie_that_only_reads(
    trainer_with_gates: Callable[..., TrainerService],
) -> None:
    trainer = trainer_with_gates(api_key=KEY)
    with httpx.Client(base_url=trainer.base_url, timeout=30) as anonymous:
        api = anonymous.get("/")
        assert api.status_code == 401
        assert api.headers["content-type"] == "application/problem+json"
        form = anonymous.get("/", headers={"accept": "text/html"})
        assert form.status_code == 401 and 'name="key"' in form.text
        assert anonymous.get("/dashboard/dashboard.js").status_code == 401

        wrong = anonymous.post("/login", data={"key": KEY + "x"})
        assert wrong.status_code == 401 and SESSION_COOKIE not in anonymous.cookies

        right = anonymous.post("/login", data={"key": KEY})
        assert right.status_code == 303 and right.headers["location"] == "/"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert KEY not in cookie

        assert anonymous.get("/", headers={"accept": "text/html"}).status_code == 200
        assert anonymous.get("/v1/jobs").status_code == 200
        assert anonymous.get("/v1/adapters").status_code == 200
        # Reading only: a cookie (which any page could make the browser send) changes nothing.
        assert anonymous.post("/v1/jobs", json={}).status_code == 401
        assert anonymous.post("/v1/jobs/job-x/cancel").status_code == 401

        anonymous.post("/logout")
        assert anonymous.get("/v1/jobs").status_code == 401
    assert KEY not in trainer.log_path.read_text()


def test_text_from_the_server_is_shown_as_text_never_run_as_markup(
    trainer_with_gates: Callable[..., TrainerService], browser: Browser
) -> None:
    trainer = trainer_with_gates()
    client = trainer.client()
    job = _submit(client, _upload(client), "markup-dash")
    failed = wait_state(client, job, "failed")
    assert MARKUP in failed["error"]

    browser.navigate(f"{trainer.base_url}/")
    browser.wait_for(f"{_row(job, 'state')} === 'failed'", "the failed job's row")
    shown = browser.evaluate(_cell_text(f"tr[data-job-id={json.dumps(job)}] .error-text"))
    assert MARKUP in shown
    assert browser.evaluate("document.querySelectorAll('#injected, #jobs b').length") == 0
