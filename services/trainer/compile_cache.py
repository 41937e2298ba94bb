"""Where a job's compiled kernels are kept: in the trainer's data volume, shared by its jobs.

A packed DPO job compiles flex attention (Inductor) and Triton kernels (Liger's, TRL's LM
head) on its first micro-batch and its first step. Filled caches made a job 16.5 s shorter
at the 7B shape and 18.6 s at 32B on an H200 (docs/benchmarks.md). Both caches are keyed by
the code and the shapes, so the next job reuses them; in the data volume they also outlive a container restart,
where the default (/tmp) would not. Both caches write atomically, so concurrent jobs can
share them.
"""

from __future__ import annotations

from pathlib import Path

INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"
TRITON_ENV = "TRITON_CACHE_DIR"


def compile_cache_env(root: Path) -> dict[str, str]:
    """The environment variables that put both caches under `root`."""
    return {INDUCTOR_ENV: str(root / "inductor"), TRITON_ENV: str(root / "triton")}
