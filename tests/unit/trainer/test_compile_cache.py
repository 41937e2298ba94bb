"""A job's compile caches live in the trainer's data volume, shared by the next jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.trainer.compile_cache import INDUCTOR_ENV, TRITON_ENV
from services.trainer.core.config import TrainerSettings
from services.trainer.job_process import child_env


def test_jobs_keep_their_compiled_kernels_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(INDUCTOR_ENV, raising=False)
    monkeypatch.delenv(TRITON_ENV, raising=False)
    env = child_env(TrainerSettings(data_dir=tmp_path), device="cuda", slot=0)
    assert env[INDUCTOR_ENV] == str(tmp_path.resolve() / "compile-cache" / "inductor")
    assert env[TRITON_ENV] == str(tmp_path.resolve() / "compile-cache" / "triton")


def test_an_operators_cache_setting_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INDUCTOR_ENV, "/fast/disk/inductor")
    monkeypatch.delenv(TRITON_ENV, raising=False)
    env = child_env(TrainerSettings(data_dir=tmp_path), device="cpu", slot=0)
    assert env[INDUCTOR_ENV] == "/fast/disk/inductor"
    assert env[TRITON_ENV] == str(tmp_path.resolve() / "compile-cache" / "triton")
