"""One session of a run, in the run folder: its config, its manifest entry, its accounting.

    book = SessionBook(run_dir, config, gpus=1.0, stats=stats)
    book.check_config(accept_change=False)          # refuses a folder started differently
    manifest = book.start(previous, inputs, dropped, repaired)   # a new Session, saved
    usage = book.count("responses", result)         # tokens, in the manifest and the log
    book.end(manifest, session, started)            # interrupted unless completed

A heartbeat goes to `accounting.jsonl` every second and the manifest is saved every
MANIFEST_EVERY_S (cai.pipeline.accounting): what a kill must not lose is on disk.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import yaml

from cai.generator.types import CompletionResult
from cai.pipeline.accounting import HEARTBEAT_S, AccountingLog, recover
from cai.pipeline.config import PipelineConfig, load_config
from cai.pipeline.endpoints import CallStats
from cai.pipeline.inputs import PipelineInputs
from cai.pipeline.manifest import Manifest, Session, StepTokens, environment, package_versions
from cai.pipeline.schema import TokenUsage
from cai.runfolder import CONFIG_FILE, write_atomic

MANIFEST_EVERY_S = 5.0


class RunConfigMismatch(ValueError):
    """The run folder was started with a config that decides different records."""


class ProgressSink(Protocol):
    """What the CLI's progress bars implement; the runner calls it after each record."""

    def planned(self, step: str, total: int) -> None: ...

    def advance(self, step: str, status: str) -> None: ...


class NoProgress:
    def planned(self, step: str, total: int) -> None:
        pass

    def advance(self, step: str, status: str) -> None:
        pass


@dataclass
class SessionCounters:
    written: Counter[str] = field(default_factory=Counter)
    tokens: dict[str, StepTokens] = field(default_factory=dict)


class SessionBook:
    def __init__(
        self, run_dir: Path, config: PipelineConfig, *, gpus: float, stats: CallStats
    ) -> None:
        self.run_dir = run_dir
        self.config = config
        self.gpus = gpus
        self.stats = stats
        self.counters = SessionCounters()
        self.accounting: AccountingLog | None = None  # opened with the session

    def check_config(self, *, accept_change: bool) -> None:
        path = self.run_dir / CONFIG_FILE
        if path.exists():
            saved = load_config(path)
            if saved.fingerprint() != self.config.fingerprint() and not accept_change:
                raise RunConfigMismatch(
                    f"{self.run_dir} was started with a different config ({path}); records would "
                    "not match. Resume with that config, or start a new run (--name)."
                )
        write_atomic(path, yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))

    def start(
        self,
        manifest: Manifest,
        inputs: PipelineInputs,
        dropped: dict[str, int],
        repaired: dict[str, int],
    ) -> Manifest:
        config = self.config
        recover(manifest, self.run_dir)  # killed sessions: their time and tokens, as logged
        manifest.status = "running"
        manifest.config = config.model_dump(mode="json")
        manifest.config_fingerprint = config.fingerprint()
        manifest.seed = config.seed
        manifest.model = config.model
        manifest.base_model = config.base_model
        manifest.judge_model = config.judge_model()
        manifest.templates = {
            name: {"tag": t.tag, "sha256": t.sha256} for name, t in inputs.templates.items()
        }
        manifest.constitution = {
            "tag": inputs.constitution.tag,
            "path": config.constitution or "packaged",
            "principles": [p.id for p in inputs.constitution.principles],
        }
        manifest.seed_pool = {
            "version": str(inputs.pool.version),
            "path": config.seed_pool or "packaged",
        }
        manifest.packages = package_versions()
        env = environment()
        manifest.python, manifest.platform = env["python"], env["platform"]
        manifest.usd_per_gpu_hour = config.usd_per_gpu_hour
        manifest.sessions.append(
            Session(
                started_at=datetime.now(UTC).isoformat(timespec="seconds"),
                repaired_torn_bytes=repaired,
                dropped_failed=dropped,
            )
        )
        manifest.save(self.run_dir)
        self.accounting = AccountingLog.start(
            self.run_dir, session=len(manifest.sessions) - 1, gpus=self.gpus
        )
        return manifest

    def count(self, step: str, result: CompletionResult) -> TokenUsage:
        """One answer's tokens: tallied for the session (and logged), returned for its record."""
        tokens = self.counters.tokens.setdefault(step, StepTokens())
        tokens.requests += 1
        tokens.prompt_tokens += result.usage.prompt_tokens
        tokens.completion_tokens += result.usage.completion_tokens
        if self.accounting is not None:
            self.accounting.tokens(
                step,
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
            )
        return TokenUsage(
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
        )

    def fill(self, session: Session, started: float) -> None:
        session.wall_s = round(time.monotonic() - started, 3)
        session.gpu_s = round(session.wall_s * self.gpus, 3)
        session.records_written = dict(self.counters.written)
        session.tokens = {k: v.model_copy() for k, v in self.counters.tokens.items()}
        session.retries = self.stats.retries
        session.retry_reasons = dict(self.stats.retry_reasons)
        session.failed_requests = self.stats.failed

    def end(self, manifest: Manifest, session: Session, started: float) -> None:
        self.fill(session, started)
        session.ended_at = datetime.now(UTC).isoformat(timespec="seconds")
        if not session.completed:
            manifest.status = "interrupted"
        manifest.total_up()
        manifest.save(self.run_dir)
        if self.accounting is not None:
            self.accounting.close()

    async def save_periodically(self, manifest: Manifest, session: Session, started: float) -> None:
        """A heartbeat in the accounting log every second (what a kill must not lose is on
        disk), the whole manifest every MANIFEST_EVERY_S (it is larger, and fsynced)."""
        saved = time.monotonic()
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self.fill(session, started)
            if self.accounting is not None:
                self.accounting.heartbeat(session)
            if time.monotonic() - saved >= MANIFEST_EVERY_S:
                manifest.total_up()
                manifest.save(self.run_dir)
                saved = time.monotonic()
