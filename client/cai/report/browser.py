"""Headless Chromium (Debian's `chromium` package) driven over the DevTools pipe.

    python scripts/screenshot_report.py runs/demo/report.html out.png [--width 1280]

Renders a report.html to a full-page PNG (`screenshot`); the browser tests of the report and
the trainer's dashboard use the same launch flags and pipe (`BASE_FLAGS`, `DevToolsPipe`).

Chromium's `--screenshot` flag captures only the window; a report is taller than any window,
so this drives Chromium through the DevTools protocol on a pipe (`--remote-debugging-pipe`:
commands on fd 3, answers on fd 4, NUL-terminated JSON, no port opened): load the file, read
the page's full height, and capture beyond the viewport. The browser gets a throw-away
profile and no network features, so rendering reaches nothing outside the file.
Install the browser with `apt-get install -y chromium`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Flags for a quiet, offline, single-use browser: no sandbox (containers run as root), no GPU,
# no background fetches (updates, sync, QUIC probes), a fresh profile per run.
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
)
TIMEOUT_S = 60.0


class ScreenshotError(RuntimeError):
    """Chromium is missing or the page could not be captured; the message says which."""


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise ScreenshotError("no chromium on PATH: install it with `apt-get install -y chromium`")


class DevToolsPipe:
    """The DevTools protocol over Chromium's pipe (flattened sessions)."""

    def __init__(self, process: subprocess.Popen[bytes], to_browser: int, from_browser: int):
        self.process = process
        self.to_browser = to_browser
        self.from_browser = from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise ScreenshotError("chromium did not answer in time")
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise ScreenshotError(f"chromium closed the pipe (exit code {self.process.poll()})")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise ScreenshotError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self.events.append(self._read_message(deadline))


def wire_fds(cmd_read: int, out_write: int) -> None:
    """In the child, before exec: the command pipe on fd 3, the answer pipe on fd 4.

    os.pipe hands out the lowest free numbers, so out_write > cmd_read >= 3: copying
    cmd_read first never overwrites out_write, and fd 4 is free to take afterwards.
    """
    os.dup2(cmd_read, 3)
    os.dup2(out_write, 4)


def screenshot(
    html: Path, png: Path, *, width: int = 1280, region: tuple[int, int] | None = None
) -> Path:
    """Write a full-page PNG of `html` to `png` (or only `region` = (top, height)); return it."""
    html = Path(html).resolve()
    if not html.is_file():
        raise ScreenshotError(f"no such file {html}")
    with tempfile.TemporaryDirectory(prefix="cai-chromium-") as profile:
        # fd 3: the browser reads commands; fd 4: it writes answers and events.
        cmd_read, cmd_write = os.pipe()
        out_read, out_write = os.pipe()
        # dup2 into 3/4 happens in the child; pass_fds keeps them open across exec.
        process = subprocess.Popen(
            [
                chromium_binary(),
                *BASE_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                f"--window-size={width},900",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=lambda: wire_fds(cmd_read, out_write),
        )
        os.close(cmd_read)
        os.close(out_write)
        pipe = DevToolsPipe(process, cmd_write, out_read)
        try:
            targets = pipe.call("Target.getTargets")["targetInfos"]
            page = next((t for t in targets if t.get("type") == "page"), None)
            target_id = (
                page["targetId"]
                if page
                else pipe.call("Target.createTarget", url="about:blank")["targetId"]
            )
            session = pipe.call("Target.attachToTarget", targetId=target_id, flatten=True)[
                "sessionId"
            ]
            pipe.call("Page.enable", session)
            pipe.call(
                "Emulation.setDeviceMetricsOverride",
                session,
                width=width,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            pipe.call("Page.navigate", session, url=html.as_uri())
            pipe.wait_event("Page.loadEventFired")
            size = pipe.call("Page.getLayoutMetrics", session)["cssContentSize"]
            height = max(1, int(size["height"] + 0.5))
            pipe.call(
                "Emulation.setDeviceMetricsOverride",
                session,
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            params: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
            if region is not None:
                top, tall = region
                params["clip"] = {"x": 0, "y": top, "width": width, "height": tall, "scale": 1}
            data = pipe.call("Page.captureScreenshot", session, **params)["data"]
        finally:
            with contextlib.suppress(ScreenshotError, OSError):
                pipe.call("Browser.close")
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            os.close(cmd_write)
            os.close(out_read)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(base64.b64decode(data))
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("html", type=Path, help="the report.html to render")
    parser.add_argument("png", type=Path, help="where to write the PNG")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels")
    parser.add_argument(
        "--region",
        metavar="TOP:HEIGHT",
        help="capture only this band of the page, in CSS pixels (e.g. 0:900 for the header)",
    )
    args = parser.parse_args(argv)
    region = None
    if args.region:
        try:
            top, tall = (int(v) for v in args.region.split(":"))
        except ValueError:
            parser.error("--region takes TOP:HEIGHT, two integers")
        region = (top, tall)
    try:
        out = screenshot(args.html, args.png, width=args.width, region=region)
    except ScreenshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
