"""What `cai run` shows a person as it goes: the `Reporter` protocol and a silent default.

The CLI draws it with rich (`cai.commands.run.ConsoleReporter`); tests record it.
"""

from __future__ import annotations

import logging
from typing import Protocol

from cai.pipeline.runner import ProgressSink
from protocol.jobs import JobEvent

logger = logging.getLogger(__name__)


class Reporter(Protocol):
    """What `cai run` shows a person. The CLI draws it with rich; tests record it."""

    def step(self, stage: int, step: str, message: str) -> None: ...

    def pipeline_progress(self, stage: int) -> ProgressSink | None: ...

    def training(self, stage: int, event: JobEvent) -> None: ...


class SilentReporter:
    def step(self, stage: int, step: str, message: str) -> None:
        logger.info("stage %d %s: %s", stage, step, message)

    def pipeline_progress(self, stage: int) -> ProgressSink | None:
        return None

    def training(self, stage: int, event: JobEvent) -> None:
        return None
