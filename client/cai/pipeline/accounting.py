"""`accounting.jsonl`: a session's time and tokens written as they happen, so a kill loses none.

    log = AccountingLog.start(run_dir, session=3, gpus=1.0)
    log.tokens("responses", prompt_tokens=120, completion_tokens=45)   # after every request
    log.heartbeat(session)                                              # every second
    recover(manifest, run_dir)          # on load: killed sessions get what their lines say

The manifest is saved every few seconds and at the end of a session; a session SIGKILLed
before its first save used to count 0 s and no tokens. Here each request appends one short
line (one `os.write` on an `O_APPEND` descriptor, like the step files: a kill leaves whole
lines and at most one torn tail, which is skipped), and a heartbeat line every second carries
the elapsed time and the retry counters, so what a killed session did is on disk to the last
request and within a second of its time. A session that ended normally is taken from the
manifest, never from here; the lines of earlier sessions are dropped once the manifest that
holds them is saved, so the file only ever holds one session or two.

Lines: {"s": session, "t": seconds since it started} plus either the step's token counts
("step", "p", "c") or the heartbeat's counters ("gpus", "retries", ...).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from cai.pipeline.manifest import Manifest, Session, StepTokens
from cai.runfolder import ACCOUNTING_FILE, write_atomic

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


class AccountingLog:
    """The append side: one line per request, one heartbeat a second."""

    def __init__(self, path: Path, session: int, gpus: float, fd: int) -> None:
        self.path = path
        self.session = session
        self.gpus = gpus
        self._fd: int | None = fd
        self._started = time.monotonic()

    @classmethod
    def start(cls, run_dir: Path, *, session: int, gpus: float) -> AccountingLog:
        """Open the log for session `session`; lines of sessions before it are dropped
        (call only after the manifest that holds them is saved)."""
        path = run_dir / ACCOUNTING_FILE
        lines = [line for line in _lines(path) if line.get("s") == session]
        write_atomic(path, "".join(json.dumps(line) + "\n" for line in lines))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        log = cls(path, session, gpus, fd)
        log._append(f'"gpus":{gpus!r}')
        return log

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def tokens(self, step: str, *, prompt_tokens: int, completion_tokens: int) -> None:
        # Formatted by hand: this runs once per request (json.dumps costs 4x as much).
        self._append(f'"step":{json.dumps(step)},"p":{prompt_tokens},"c":{completion_tokens}')

    def heartbeat(self, session: Session) -> None:
        counters = {
            "gpus": self.gpus,
            "records_written": session.records_written,
            "retries": session.retries,
            "retry_reasons": session.retry_reasons,
            "failed_requests": session.failed_requests,
        }
        self._append(json.dumps(counters)[1:-1])

    def _append(self, fields: str) -> None:
        if self._fd is None:
            return
        line = f'{{"s":{self.session},"t":{self.elapsed():.3f},{fields}}}\n'.encode()
        os.write(self._fd, line)  # one write of one short line: whole, or a torn tail

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _lines(path: Path) -> list[dict[str, Any]]:
    """The whole lines of the log (a torn or unreadable one is skipped, with a warning)."""
    if not path.exists():
        return []
    lines = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            logger.warning("%s:%d is torn or unreadable; skipped", path, number)
            continue
        if isinstance(line, dict) and isinstance(line.get("s"), int):
            lines.append(line)
    return lines


def recover(manifest: Manifest, run_dir: Path) -> None:
    """Give each session that did not end (killed) the time, tokens and counters of its log
    lines, and total the run up again. Idempotent: values are set, never added."""
    by_session: dict[int, list[dict[str, Any]]] = {}
    for line in _lines(run_dir / ACCOUNTING_FILE):
        by_session.setdefault(line["s"], []).append(line)
    changed = False
    for number, lines in by_session.items():
        if not 0 <= number < len(manifest.sessions) or manifest.sessions[number].ended_at:
            continue
        _fill(manifest.sessions[number], lines)
        changed = True
    if changed:
        manifest.total_up()


def _fill(session: Session, lines: list[dict[str, Any]]) -> None:
    tokens: dict[str, StepTokens] = {}
    wall = max(float(line.get("t", 0.0)) for line in lines)
    gpus = 1.0
    beat: dict[str, Any] | None = None
    for line in lines:
        if "step" in line:
            step = tokens.setdefault(str(line["step"]), StepTokens())
            step.requests += 1
            step.prompt_tokens += int(line.get("p", 0))
            step.completion_tokens += int(line.get("c", 0))
        if "gpus" in line:
            gpus = float(line["gpus"])
        if "retries" in line:
            beat = line  # counters so far: the last heartbeat wins
    # The manifest's periodic save may be newer than the last line (or the log gone):
    # whichever knows more wins, so a recovery never lowers a number.
    if beat is not None and float(beat["t"]) >= session.wall_s:
        session.records_written = dict(beat.get("records_written", {}))
        session.retries = int(beat["retries"])
        session.retry_reasons = dict(beat.get("retry_reasons", {}))
        session.failed_requests = int(beat.get("failed_requests", 0))
    if wall >= session.wall_s:
        session.wall_s = round(wall, 3)
        session.gpu_s = round(wall * gpus, 3)
    requests = sum(t.requests for t in tokens.values())
    if requests >= sum(t.requests for t in session.tokens.values()):
        session.tokens = tokens
    session.accounted_from_log = True
