"""The operations of the OpenAI-compatible routes, over the trainer's one state: uploads go
through the dataset ingest, jobs through the job submitter and the runner's queue, events
and adapters are read from the store. Nothing here keeps state of its own.

Lists are newest first and page with `after` (the last id of the previous page) and `limit`,
as OpenAI's do; files also take `order=asc`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import Depends, Request
from starlette.datastructures import UploadFile

from protocol.jobs import JobRecord
from protocol.names import check_name
from services.trainer.api.deps import State
from services.trainer.core.errors import BadRequest, NotFound, TrainerError, UnsupportedMediaType
from services.trainer.datasets import ingest
from services.trainer.openai_compat import views
from services.trainer.openai_compat.conversion import converted
from services.trainer.openai_compat.hyperparams import openai_param, to_spec
from services.trainer.openai_compat.models import (
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    JobCreate,
    Page,
)
from services.trainer.state import TrainerState

MAX_SEQ = 2**63 - 1


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1 << 20):
        yield chunk


class FineTuningHandler:
    def __init__(self, state: TrainerState) -> None:
        self.state = state

    # -- files ---------------------------------------------------------------------------

    async def upload_file(self, request: Request) -> FileObject:
        """`client.files.create(file=..., purpose="fine-tune")`: a multipart upload, stored
        as a dataset (converted from OpenAI's preference rows where it holds them)."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UnsupportedMediaType(
                "send the file as multipart/form-data with a `file` part and purpose=fine-tune "
                "(what client.files.create sends)"
            )
        form = await request.form(max_files=1, max_fields=4)
        purpose = form.get("purpose")
        if purpose != "fine-tune":
            raise BadRequest(
                f"purpose must be 'fine-tune' (got {purpose!r:.40}): this trainer stores "
                "training files only",
                field="purpose",
            )
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadRequest(
                "the upload has no `file` part: send the JSONL as `file`", field="file"
            )
        name = upload.filename or None
        if name is not None:
            try:
                check_name(name)
            except ValueError:
                name = None  # a label only: a name that is no safe file name is dropped
        state = self.state
        record, _ = await ingest(
            converted(_chunks(upload)),
            layout=state.datasets,
            store=state.store,
            max_bytes=state.settings.max_upload_bytes,
            name=name,
        )
        return views.file_object(record)

    def list_files(
        self, after: str | None, limit: int, order: Literal["asc", "desc"], purpose: str | None
    ) -> Page[FileObject]:
        if purpose not in (None, "fine-tune"):
            return Page(data=[], has_more=False)
        records = self.state.store.datasets_page(after, limit + 1, newest_first=order == "desc")
        if records is None:
            raise BadRequest(f"after: no file {after!r:.70} on this trainer", field="after")
        files = [views.file_object(record) for record in records[:limit]]
        return Page(data=files, has_more=len(records) > limit)

    def get_file(self, file_id: str) -> FileObject:
        record = self.state.store.get_dataset(file_id)
        if record is None:
            raise NotFound(f"no file {file_id!r:.70} on this trainer: see client.files.list()")
        return views.file_object(record)

    def _check_file(self, file_id: str | None, param: str) -> None:
        if file_id is not None and self.state.store.get_dataset(file_id) is None:
            raise BadRequest(
                f"{param} {file_id!r:.70} is not a file on this trainer: upload it with "
                "client.files.create(file=..., purpose='fine-tune') and pass the id it returns",
                field=param,
            )

    # -- jobs ----------------------------------------------------------------------------

    def create_job(self, body: JobCreate, idempotency_key: str | None) -> FineTuningJob:
        spec = to_spec(body, idempotency_key)
        self._check_file(body.training_file, "training_file")
        self._check_file(body.validation_file, "validation_file")
        try:
            submitted = self.state.submitter.submit(spec, idempotency_key)
        except TrainerError as exc:
            if exc.extra.get("field"):
                exc.extra["field"] = openai_param(str(exc.extra["field"]))
            raise
        if submitted.created:
            self.state.runner.notify()
        return views.job_object(submitted.job)

    def _job(self, job_id: str) -> JobRecord:
        job = self.state.store.get_job(job_id)
        if job is None or job.kind != "dpo":
            raise NotFound(
                f"no fine-tuning job {job_id!r:.70} on this trainer: see "
                "client.fine_tuning.jobs.list()"
            )
        return job

    def list_jobs(self, after: str | None, limit: int) -> Page[FineTuningJob]:
        jobs = self.state.store.jobs_before("dpo", after, limit + 1)
        if jobs is None:
            raise BadRequest(f"after: no job {after!r:.70} on this trainer", field="after")
        return Page(data=[views.job_object(j) for j in jobs[:limit]], has_more=len(jobs) > limit)

    def get_job(self, job_id: str) -> FineTuningJob:
        return views.job_object(self._job(job_id))

    def cancel_job(self, job_id: str) -> FineTuningJob:
        """Queued: cancelled at once. Running: answers once the child is stopped."""
        self._job(job_id)
        return views.job_object(self.state.runner.cancel(job_id))

    def list_events(self, job_id: str, after: str | None, limit: int) -> Page[FineTuningJobEvent]:
        self._job(job_id)
        before = MAX_SEQ
        if after is not None:
            seq = views.event_seq(job_id, after)
            if seq is None:
                raise BadRequest(
                    f"after: {after!r:.70} is not an event id of job {job_id}", field="after"
                )
            before = seq
        events = self.state.store.events_before(job_id, before, limit + 1)
        data = [views.event_object(event) for event in events[:limit]]
        return Page(data=data, has_more=len(events) > limit)

    def list_checkpoints(
        self, job_id: str, after: str | None, limit: int
    ) -> Page[FineTuningJobCheckpoint]:
        """The final adapter of a succeeded job; nothing before (no intermediate ones are
        kept), so a page `after` it is empty."""
        job = self._job(job_id)
        name = views.fine_tuned_model(job)
        adapter = self.state.store.get_adapter(name) if name else None
        if adapter is None or after is not None:
            return Page(data=[], has_more=False)
        return Page(data=[views.checkpoint_object(job, adapter)][:limit], has_more=False)


def get_handler(state: State) -> FineTuningHandler:
    return FineTuningHandler(state)


Handler = Annotated[FineTuningHandler, Depends(get_handler)]
