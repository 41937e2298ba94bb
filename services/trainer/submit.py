"""Accepting a job: everything that can be checked at submit time is checked here, before
anything is written, so a bad job is a 4xx with what to fix and never a failed job later.

Refused (422): unknown datasets or adapters, a base model outside the model roots, 4-bit
loading without CUDA, a parent adapter or merge onto a base other than the adapter's own, an
eval set that is the training set or shares any prompt with it (split by prompt). Refused
(409): an output name already registered or written by a queued/running job.

An `Idempotency-Key` maps to the job it created with a hash of the validated spec: the same
key with the same spec returns that job, with another spec it is a 409.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from protocol.jobs import DpoJobSpec, JobRecord, MergeJobSpec
from services.trainer.core.config import TrainerSettings
from services.trainer.core.errors import BadRequest, Conflict, Unprocessable
from services.trainer.datasets import DatasetLayout, shared_prompts
from services.trainer.models import resolve_base_model
from services.trainer.store import Store, new_job_id

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass(frozen=True)
class Submitted:
    job: JobRecord
    created: bool


def spec_digest(spec: DpoJobSpec | MergeJobSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()


def check_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise BadRequest(
            "the Idempotency-Key header must be 1-200 visible ASCII characters "
            "(a UUID is a good choice)"
        )
    return key


class JobSubmitter:
    def __init__(self, settings: TrainerSettings, store: Store, device: str) -> None:
        self.settings = settings
        self.store = store
        self.device = device
        self.layout = DatasetLayout(settings.data_dir)

    def submit(self, spec: DpoJobSpec | MergeJobSpec, key: str | None) -> Submitted:
        key = check_key(key)
        digest = spec_digest(spec)
        if key is not None:
            # A retry of an accepted submit must get its job back even though the checks
            # below would now fail (its own output name is taken by itself).
            known = self._known(key, digest)
            if known is not None:
                return Submitted(known, created=False)
        if isinstance(spec, DpoJobSpec):
            self._check_dpo(spec)
        else:
            self._check_merge(spec)
        with self.store.db.transaction() as conn:
            if key is not None:
                seen = self.store.idempotent_job(conn, key)
                if seen is not None:
                    return self._replay(key, digest, seen)
            taken = self.store.output_name_taken(conn, spec.output_name)
            if taken:
                raise Conflict(
                    f"output_name {spec.output_name!r} is not free: {taken}; choose a new name",
                    field="output_name",
                )
            job_id = new_job_id()
            self.store.insert_job(conn, job_id, spec)
            if key is not None:
                self.store.remember_key(conn, key, digest, job_id)
        job = self.store.get_job(job_id)
        assert job is not None
        return Submitted(job, created=True)

    def _known(self, key: str, digest: str) -> JobRecord | None:
        seen = self.store.idempotent_job(self.store.db.connection(), key)
        if seen is None:
            return None
        return self._replay(key, digest, seen).job

    def _replay(self, key: str, digest: str, seen: tuple[str, str]) -> Submitted:
        body_sha, job_id = seen
        if body_sha != digest:
            raise Conflict(
                f"Idempotency-Key {key!r} was already used for job {job_id} with a different "
                "body: use a new key for a new job, or resend the original body",
                job_id=job_id,
            )
        job = self.store.get_job(job_id)
        assert job is not None
        return Submitted(job, created=False)

    # -- checks -------------------------------------------------------------------------

    def _check_dataset(self, dataset_id: str, field: str) -> None:
        path = self.layout.path(dataset_id)  # 404 for ids of the wrong shape
        if self.store.get_dataset(dataset_id) is None or not path.is_file():
            raise Unprocessable(
                f"{field} {dataset_id!r} is not a dataset on this trainer: upload it first "
                "with POST /v1/datasets and use the id it returns",
                field=field,
            )

    def _check_dpo(self, spec: DpoJobSpec) -> None:
        if spec.load_in_4bit and self.device != "cuda":
            raise Unprocessable(
                f"load_in_4bit needs a CUDA GPU and this trainer runs jobs on {self.device}: "
                "set load_in_4bit to false (or submit to a trainer with a GPU)",
                field="load_in_4bit",
            )
        if spec.dpo.optimizer == "adamw_8bit" and self.device != "cuda":
            raise Unprocessable(
                f"optimizer adamw_8bit needs a CUDA GPU and this trainer runs jobs on "
                f"{self.device}: set dpo.optimizer to auto or adamw",
                field="dpo.optimizer",
            )
        self._check_dataset(spec.dataset_id, "dataset_id")
        if spec.eval_dataset_id is not None:
            if spec.eval_dataset_id == spec.dataset_id:
                raise Unprocessable(
                    "eval_dataset_id is the training dataset: held-out accuracy needs pairs "
                    "the model did not train on; upload a separate eval split",
                    field="eval_dataset_id",
                )
            self._check_dataset(spec.eval_dataset_id, "eval_dataset_id")
            shared, example = shared_prompts(
                self.layout.path(spec.dataset_id), self.layout.path(spec.eval_dataset_id)
            )
            if shared:
                raise Unprocessable(
                    f"eval_dataset_id shares {shared} prompt(s) with dataset_id (e.g. "
                    f"{(example or '')[:80]!r}): held-out accuracy would measure memory; "
                    "split train and eval by prompt",
                    field="eval_dataset_id",
                )
        base = resolve_base_model(spec.base_model, self.settings, self.store)
        if spec.parent_adapter is not None:
            parent = self.store.get_adapter(spec.parent_adapter)
            if parent is None or parent.kind != "lora":
                raise Unprocessable(
                    f"parent_adapter {spec.parent_adapter!r} is not a LoRA adapter registered "
                    "here: see GET /v1/adapters, or leave parent_adapter out to start fresh",
                    field="parent_adapter",
                )
            parent_base = resolve_base_model(parent.base_model, self.settings, self.store)
            if parent_base.path != base.path:
                raise Unprocessable(
                    f"parent_adapter {parent.name!r} was trained on {parent.base_model!r}, "
                    f"not on {spec.base_model!r}: continue it on its own base",
                    field="parent_adapter",
                )

    def _check_merge(self, spec: MergeJobSpec) -> None:
        adapter = self.store.get_adapter(spec.adapter)
        if adapter is None or adapter.kind != "lora":
            raise Unprocessable(
                f"adapter {spec.adapter!r} is not a LoRA adapter registered here: "
                "see GET /v1/adapters",
                field="adapter",
            )
        own = resolve_base_model(adapter.base_model, self.settings, self.store)
        if spec.base_model is not None:
            other = resolve_base_model(spec.base_model, self.settings, self.store)
            if other.path != own.path:
                raise Unprocessable(
                    f"adapter {adapter.name!r} was trained on {adapter.base_model!r}; merging "
                    f"it onto {spec.base_model!r} would give a broken model: leave base_model "
                    "out or set it to the adapter's base",
                    field="base_model",
                )
