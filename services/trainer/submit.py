"""Accepting a job: everything that can be checked at submit time is checked here, before
anything is written, so a bad job is a 4xx with what to fix and never a failed job later.

Refused (422): unknown datasets or adapters, a base model outside the model roots, 4-bit
loading or 8-bit Adam without CUDA (or with several processes, or without bitsandbytes), a
parent adapter or merge onto a base other than the adapter's own, an eval set that is the
training set or shares any prompt with it (split by prompt), a `target_modules` entry that
names no linear layer of the base model (read from its weights' headers: base_modules.py),
and a job whose estimated steps pass CAI_TRAINER_MAX_JOB_STEPS (`estimated_steps`). The
spec itself (protocol/jobs.py) already refused non-finite numbers, numbers past their
bounds, unknown loss types and seeds out of range. Refused (409): an output name already
registered or written by a queued/running job.

An `Idempotency-Key` maps to the job it created with a hash of the validated spec: the same
key with the same spec returns that job, with another spec it is a 409.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

from protocol.jobs import FORBIDDEN_TARGETS, MAX_PROCESSES, DpoJobSpec, JobRecord, MergeJobSpec
from services.trainer.base_modules import WeightsUnreadable, linear_modules, target_names
from services.trainer.core.config import TrainerSettings
from services.trainer.core.errors import BadRequest, Conflict, Unprocessable
from services.trainer.datasets import DatasetLayout, shared_prompts
from services.trainer.jobs.training_device import bitsandbytes_importable
from services.trainer.jobs.training_memory import CPU_MICRO_BATCH, MAX_AUTO_MICRO_BATCH
from services.trainer.models import ResolvedModel, resolve_base_model
from services.trainer.store import Store, new_job_id

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass(frozen=True)
class Submitted:
    job: JobRecord
    created: bool


def spec_digest(spec: DpoJobSpec | MergeJobSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()


def estimated_steps(spec: DpoJobSpec, rows: int, device: str) -> int:
    """Optimiser steps of the job as transformers counts them, ceil(epochs x ceil(batches /
    accumulation)). Where the spec leaves the micro-batch or the process count open, the
    largest the job could pick is assumed (the memory plan's cap, every GPU a host can
    hold), so the estimate is the fewest steps the job could take and a job is refused
    only when even those are too many."""
    dpo = spec.dpo
    on_gpu = device == "cuda"
    micro = dpo.per_device_train_batch_size or (MAX_AUTO_MICRO_BATCH if on_gpu else CPU_MICRO_BATCH)
    processes = spec.num_processes or (MAX_PROCESSES if on_gpu else 1)
    batches = math.ceil(rows / (micro * processes))
    per_epoch = max(1, math.ceil(batches / dpo.gradient_accumulation_steps))
    return math.ceil(dpo.num_train_epochs * per_epoch)


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
        self._check_processes(spec)
        self._check_dataset(spec.dataset_id, "dataset_id")
        self._check_size(spec)
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
        if spec.parent_adapter is None:
            self._check_targets(spec, base)
        else:
            # Continuing an adapter keeps its LoRA shape: the spec's targets are not used.
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

    def _check_processes(self, spec: DpoJobSpec) -> None:
        several = spec.num_processes is not None and spec.num_processes > 1
        if several and spec.load_in_4bit:
            raise Unprocessable(
                "load_in_4bit cannot be combined with num_processes > 1 (FSDP shards bf16 "
                "weights): set load_in_4bit to false, or num_processes to 1 for QLoRA on one GPU",
                field="load_in_4bit",
            )
        if several and spec.dpo.optimizer == "adamw_8bit":
            raise Unprocessable(
                "optimizer adamw_8bit is not supported with num_processes > 1 (FSDP shards the "
                "optimizer state instead): set dpo.optimizer to auto or adamw",
                field="dpo.optimizer",
            )
        needs_bnb = spec.load_in_4bit or spec.dpo.optimizer == "adamw_8bit"
        if needs_bnb and self.device == "cuda" and not bitsandbytes_importable():
            field = "load_in_4bit" if spec.load_in_4bit else "dpo.optimizer"
            raise Unprocessable(
                f"{field} needs the `bitsandbytes` package in the trainer's environment: "
                "install it on the trainer, or set load_in_4bit to false and dpo.optimizer "
                "to auto",
                field=field,
            )

    def _check_size(self, spec: DpoJobSpec) -> None:
        record = self.store.get_dataset(spec.dataset_id)
        assert record is not None  # _check_dataset ran first
        steps = estimated_steps(spec, record.rows, self.device)
        ceiling = self.settings.max_job_steps
        if steps > ceiling:
            raise Unprocessable(
                f"the job would take about {steps} optimiser steps ({record.rows} rows x "
                f"{spec.dpo.num_train_epochs:g} epochs), more than this trainer's ceiling of "
                f"{ceiling}: lower dpo.num_train_epochs, raise the micro-batch or "
                "gradient_accumulation_steps, or raise CAI_TRAINER_MAX_JOB_STEPS on the trainer",
                field="dpo.num_train_epochs",
                estimated_steps=steps,
                max_job_steps=ceiling,
            )

    def _check_targets(self, spec: DpoJobSpec, base: ResolvedModel) -> None:
        targets = spec.lora.target_modules
        forbidden = sorted(t for t in targets if t.rsplit(".", 1)[-1] in FORBIDDEN_TARGETS)
        if forbidden:
            raise Unprocessable(
                f"lora.target_modules {forbidden} cannot be adapted: vLLM serves LoRA on "
                "linear projections only (and TRL's fused LM head ignores an adapter on "
                "lm_head); remove them",
                field="lora.target_modules",
            )
        if base.kind == "hub":
            return  # not on disk: the job's PEFT call checks them
        try:
            modules = linear_modules(Path(base.path))
        except (OSError, WeightsUnreadable) as exc:
            raise Unprocessable(
                f"the weights of base model {spec.base_model!r} cannot be read ({exc}): "
                "check the model folder on the trainer",
                field="base_model",
            ) from None
        if modules is None:
            return  # no safetensors weights to read names from: the job checks them
        names = target_names(modules)
        unknown = [t for t in targets if t not in names]
        if unknown:
            leaves = sorted({m.rsplit(".", 1)[-1] for m in modules} - FORBIDDEN_TARGETS)
            shown = ", ".join(repr(t[:64]) for t in unknown[:5])
            raise Unprocessable(
                f"lora.target_modules: {shown} names no linear layer of base model "
                f"{spec.base_model!r}: use some of {', '.join(leaves)} (or a dotted suffix "
                f"of a full module name, such as {min(modules)!r})",
                field="lora.target_modules",
                allowed=leaves,
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
