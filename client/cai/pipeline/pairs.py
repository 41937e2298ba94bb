"""Step 6: a preference pair from the judgements, by the rules of DESIGN.md, or a skip reason.

| original ok | revision ok | result                                   | `rule`                     |
|-------------|-------------|------------------------------------------|----------------------------|
| any         | any         | texts identical -> skip                  | `identical`                |
| no          | yes         | chosen revision, rejected original       | `revision_ok_original_not` |
| yes         | no          | chosen original, rejected revision       | `original_ok_revision_not` |
| yes         | yes         | chosen revision, rejected original       | `both_ok`                  |
| no          | no          | skip                                     | `neither_ok`               |

Texts are compared after trimming whitespace. An empty text cannot be a DPO row: skip
`empty`. Chosen and rejected are always model outputs of this run (the two records named by
`chosen_id` / `rejected_id`); nothing here writes text of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

SKIP_REASONS = ("identical", "neither_ok", "empty")


@dataclass(frozen=True)
class PairDecision:
    rule: str
    chosen: str | None = None  # "original" or "revision"; None = skipped

    @property
    def skipped(self) -> bool:
        return self.chosen is None


def decide(original: str, revision: str, original_ok: bool, revision_ok: bool) -> PairDecision:
    if original.strip() == revision.strip():
        return PairDecision("identical")
    if not original.strip() or not revision.strip():
        return PairDecision("empty")
    if revision_ok and not original_ok:
        return PairDecision("revision_ok_original_not", "revision")
    if original_ok and not revision_ok:
        return PairDecision("original_ok_revision_not", "original")
    if original_ok and revision_ok:
        return PairDecision("both_ok", "revision")
    return PairDecision("neither_ok")
