"""The run summary: the funnel from instructions to pairs, skip and failure reasons, tokens, time.

`summarise` reads only the step files and the manifest, so a summary of a resumed run covers
every session. `RunSummary` is what `run_pipeline` returns and what `cai generate` prints.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from cai.pipeline.config import PipelineConfig
from cai.pipeline.dedupe import DiversityTally, completed
from cai.pipeline.manifest import Manifest, StepTokens
from cai.pipeline.records import STEPS
from cai.pipeline.store import RunStore
from cai.runfolder import MANIFEST_FILE


class RunSummary(BaseModel):
    run_dir: str
    name: str
    model: str
    status: str
    status_reason: str | None = Field(default=None, description="Why a run is `failed`.")
    funnel: list[tuple[str, int]] = Field(
        description="(stage, records that are ok): instructions accepted -> ... -> train/test rows."
    )
    counts: dict[str, Any] = Field(description="Per step: records by status.")
    skip_reasons: dict[str, int] = Field(
        description="Why instructions, critiques and pairs were not kept."
    )
    failures: dict[str, dict[str, int]] = Field(description="Per step: failure reasons.")
    shortfall: dict[str, int] = Field(
        default_factory=dict, description="Per type: instructions asked for but not obtained."
    )
    diversity: dict[str, dict[str, float]] = Field(default_factory=dict)
    tokens: dict[str, StepTokens] = Field(default_factory=dict)
    wall_s: float = 0.0
    gpu_s: float = 0.0
    cost_usd: float = 0.0
    retries: int = 0
    train_path: str
    test_path: str
    train_rows: int = 0
    test_rows: int = 0
    manifest_path: str


def summarise(
    run_dir: Path,
    config: PipelineConfig,
    store: RunStore,
    manifest: Manifest,
    split_counts: dict[str, int],
    tallies: dict[str, DiversityTally] | None = None,
    steps: tuple[str, ...] = STEPS,
) -> RunSummary:
    """`tallies`: diversity of the ok instructions and responses, tallied by the runner as it
    wrote them (records of earlier sessions are added here). `steps`: the run's step files."""
    counts: dict[str, Any] = {}
    failures: dict[str, dict[str, int]] = {}
    skips: Counter[str] = Counter()
    for step in steps:
        records = store.files[step].records.values()
        counts[step] = dict(Counter(r.status for r in records))
        failed = Counter(_short(r.reason) for r in records if r.status == "failed")
        if failed:
            failures[step] = dict(failed)
        if step in ("instructions", "critiques", "pairs"):
            skips.update(
                f"{step}:{r.reason}" for r in records if r.status in ("rejected", "skipped")
            )
    instructions = [r for r in store.files["instructions"].records.values() if r.status == "ok"]
    shortfall = {}
    for kind, wanted in config.instructions.counts.items():
        got = sum(1 for r in instructions if r.type == kind)
        if got < wanted:
            shortfall[kind] = wanted - got
    ok = {step: counts[step].get("ok", 0) for step in steps}
    funnel = [(step, ok[step]) for step in steps]
    funnel += [("train", split_counts.get("train", 0)), ("test", split_counts.get("test", 0))]
    responses = [r for r in store.files["responses"].records.values() if r.status == "ok"]
    return RunSummary(
        run_dir=str(run_dir),
        name=manifest.name,
        model=config.model,
        status=manifest.status,
        status_reason=manifest.status_reason,
        funnel=funnel,
        counts=counts,
        skip_reasons=dict(sorted(skips.items())),
        failures=failures,
        shortfall=shortfall,
        diversity={
            "instructions": _diversity(instructions, (tallies or {}).get("instructions")),
            "responses": _diversity(responses, (tallies or {}).get("responses")),
        },
        tokens=manifest.tokens,
        wall_s=manifest.wall_s,
        gpu_s=manifest.gpu_s,
        cost_usd=manifest.cost_usd,
        retries=manifest.retries,
        train_path=str(store.path("train")),
        test_path=str(store.path("test")),
        train_rows=split_counts.get("train", 0),
        test_rows=split_counts.get("test", 0),
        manifest_path=str(run_dir / MANIFEST_FILE),
    )


def _diversity(records: list[Any], tally: DiversityTally | None) -> dict[str, float]:
    """Diversity of `records` (ok ones), from the runner's tally where it holds only them."""
    return completed(tally, DiversityTally, ((r.id, r.text) for r in records)).metrics()


def _short(reason: str | None) -> str:
    return (reason or "unknown").split(":", 1)[0][:80]
