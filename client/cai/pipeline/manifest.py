"""`manifest.json` of a run: what ran, with what, how long and at what cost. Written atomically.

    manifest = Manifest.load_or_new(run_dir)
    manifest.sessions.append(...)
    manifest.save(run_dir)              # cai.runfolder.write_atomic: never half-written

Sessions accumulate: a run killed and resumed three times has three sessions, and its wall
time and GPU-seconds are their sums. A killed session's numbers come from `accounting.jsonl`
(cai.pipeline.accounting), written as requests return. GPU-seconds = wall time x the GPUs behind the
endpoints (the generator holds its GPUs for the whole run); cost = GPU-hours x
`usd_per_gpu_hour`. Token counts are the servers' own `usage` numbers.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cai.runfolder import MANIFEST_FILE, read_record, write_atomic

PACKAGES = ("cai-bootstrap", "httpx", "pydantic", "pyyaml", "typer", "rich")


class StepTokens(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Session(BaseModel):
    started_at: str
    ended_at: str | None = None
    wall_s: float = 0.0
    gpu_s: float = 0.0
    records_written: dict[str, int] = Field(default_factory=dict)
    repaired_torn_bytes: dict[str, int] = Field(default_factory=dict)
    dropped_failed: dict[str, int] = Field(default_factory=dict)
    retries: int = 0
    retry_reasons: dict[str, int] = Field(default_factory=dict)
    failed_requests: int = 0
    tokens: dict[str, StepTokens] = Field(
        default_factory=dict, description="Per step, this session's requests only."
    )
    completed: bool = False
    accounted_from_log: bool = Field(
        default=False,
        description="The session was killed: its time, tokens and counters were read back "
        "from accounting.jsonl (cai.pipeline.accounting).",
    )


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    status: str = Field(
        default="running",
        description="running, interrupted (killed or stopped), failed (ran to the end with "
        "too many failed records: `status_reason`), complete.",
    )
    status_reason: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    config_fingerprint: str = ""
    seed: int = 0
    model: str = ""
    base_model: str | None = None
    judge_model: str = ""
    served_models: list[dict[str, Any]] = Field(
        default_factory=list, description="/v1/models of each endpoint: what was actually loaded."
    )
    templates: dict[str, dict[str, str]] = Field(default_factory=dict)
    constitution: dict[str, Any] = Field(default_factory=dict)
    seed_pool: dict[str, Any] = Field(default_factory=dict)
    packages: dict[str, str] = Field(default_factory=dict)
    python: str = ""
    platform: str = ""
    sessions: list[Session] = Field(default_factory=list)
    counts: dict[str, Any] = Field(default_factory=dict)
    skip_reasons: dict[str, int] = Field(default_factory=dict)
    failures: dict[str, dict[str, int]] = Field(default_factory=dict)
    diversity: dict[str, dict[str, float]] = Field(default_factory=dict)
    tokens: dict[str, StepTokens] = Field(default_factory=dict)
    wall_s: float = 0.0
    gpu_s: float = 0.0
    usd_per_gpu_hour: float = 0.0
    cost_usd: float = 0.0
    retries: int = 0
    failed_requests: int = 0

    @classmethod
    def load_or_new(cls, run_dir: Path, name: str) -> Manifest:
        found = read_record(run_dir / MANIFEST_FILE, cls)
        return found if found is not None else cls(name=name)

    def save(self, run_dir: Path) -> None:
        write_atomic(
            run_dir / MANIFEST_FILE, json.dumps(self.model_dump(mode="json"), indent=2) + "\n"
        )

    def total_up(self) -> None:
        """Recompute the run totals from the sessions."""
        self.wall_s = round(sum(s.wall_s for s in self.sessions), 3)
        self.gpu_s = round(sum(s.gpu_s for s in self.sessions), 3)
        self.cost_usd = round(self.gpu_s / 3600.0 * self.usd_per_gpu_hour, 4)
        self.retries = sum(s.retries for s in self.sessions)
        self.failed_requests = sum(s.failed_requests for s in self.sessions)
        tokens: dict[str, StepTokens] = {}
        for session in self.sessions:
            for step, t in session.tokens.items():
                total = tokens.setdefault(step, StepTokens())
                total.requests += t.requests
                total.prompt_tokens += t.prompt_tokens
                total.completion_tokens += t.completion_tokens
        self.tokens = tokens


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment() -> dict[str, str]:
    return {"python": sys.version.split()[0], "platform": platform.platform()}
