"""Settings of the trainer service, read from `CAI_TRAINER_*` environment variables.

    CAI_TRAINER_DATA_DIR=/data CAI_TRAINER_MODEL_ROOTS='["/models"]' python -m services.trainer

List settings take JSON (`'["/a", "/b"]'`) or, for `model_roots`, a plain path list joined
with `:` (what embedded/launch.py passes). Bad values are refused at start, with the
variable to change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Where each job kind's body lives, as `module:function`; imported in the job's child
# process only, so the web process never imports torch.
DEFAULT_JOB_BODIES: dict[str, str] = {
    "dpo": "services.trainer.jobs.dpo:run_dpo",
    "merge": "services.trainer.jobs.merge:run_merge",
}


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAI_TRAINER_", extra="ignore")

    host: str = Field(
        default="127.0.0.1", description="Bind address; 0.0.0.0 only inside a container."
    )
    port: int = Field(default=8100, ge=1, le=65535)
    data_dir: Path = Field(
        default=Path(".cache/trainer"),
        description="SQLite state, datasets, job folders, adapters and merged models.",
    )
    model_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders where base models may live; a base model name is a folder under one.",
    )
    allow_hub_models: bool = Field(
        default=False,
        description="Accept hub ids (`org/name`) that are not local folders; needs downloads.",
    )
    api_key: SecretStr | None = Field(
        default=None, description="When set, every route but /health needs `Bearer <key>`."
    )
    max_upload_bytes: int = Field(
        default=1 << 30, ge=1, description="Largest dataset upload; bigger ones get 413."
    )
    max_request_bytes: int = Field(
        default=1 << 20,
        ge=1024,
        description=(
            "Largest body of every other route (job specs, forms); bigger ones get 413 before "
            "they are read past the limit. A job spec is a few KB: 1 MiB leaves room for a "
            "target_modules list naming every projection of a large model."
        ),
    )
    max_job_steps: int = Field(
        default=100_000,
        ge=1,
        description=(
            "Largest estimated number of optimiser steps of a DPO job; larger ones are refused "
            "at submission (422). The estimate is rows x epochs / (micro-batch x accumulation "
            "x processes), with the largest micro-batch and process count the job could use "
            "where the spec leaves them open. 100000 steps is days of one GPU at a 32B model's "
            "few seconds a step: past it a job is a mistake that would hold the worker."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="`auto`: cuda when torch sees a GPU, else cpu."
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Jobs run at once (one per GPU); with cuda, worker i sees GPU i only.",
    )
    job_bodies: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_JOB_BODIES),
        description=(
            "kind -> `module:function` of the job body run in the child process. Tests point "
            "a kind at a small stand-in body here; production keeps the default."
        ),
    )
    cancel_grace_s: float = Field(
        default=5.0, ge=0.0, description="SIGTERM to SIGKILL delay when a running job is cancelled."
    )
    log_level: str = Field(default="INFO")

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value in ("", None) else value

    @field_validator("model_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    @field_validator("job_bodies", mode="after")
    @classmethod
    def _check_bodies(cls, value: dict[str, str]) -> dict[str, str]:
        merged = dict(DEFAULT_JOB_BODIES) | value
        for kind, target in merged.items():
            module, _, function = target.partition(":")
            if not module or not function:
                raise ValueError(
                    f"job_bodies[{kind!r}] = {target!r}: write it as `package.module:function`"
                )
        return merged

    @model_validator(mode="after")
    def _resolve_paths(self) -> TrainerSettings:
        self.data_dir = self.data_dir.expanduser().resolve()
        self.model_roots = [root.expanduser().resolve() for root in self.model_roots]
        return self

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "trainer.db"

    @property
    def compile_cache_dir(self) -> Path:
        """Compiled kernels, shared by the jobs (services/trainer/compile_cache.py)."""
        return self.data_dir / "compile-cache"
