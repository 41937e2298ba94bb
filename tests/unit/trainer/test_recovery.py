"""What the runner does at start, before any worker runs: no job stays `running`, and no
half-published output survives under a name the registry does not list."""

from __future__ import annotations

from protocol.jobs import DpoJobSpec, JobState
from services.trainer.core.config import TrainerSettings
from services.trainer.state import TrainerState


def test_recover_fails_running_jobs_and_removes_debris(settings: TrainerSettings) -> None:
    state = TrainerState.build(settings)
    spec = DpoJobSpec(base_model="tiny", dataset_id="ds-0000000000000000", output_name="x")
    with state.db.transaction() as conn:
        state.store.insert_job(conn, "job-running", spec)
        state.store.insert_job(conn, "job-queued", spec.model_copy(update={"output_name": "y"}))
    assert state.store.claim_next() is not None  # job-running is now `running`
    data = settings.data_dir
    for debris in (
        data / "adapters" / "x",  # renamed into place, crash before the registry commit
        data / "adapters" / ".trash-old-1234",
        data / "jobs" / "job-running" / "output",
        data / "tmp",
    ):
        debris.mkdir(parents=True)
        (debris / "file").write_text("partial")

    state.runner.recover()

    running = state.store.get_job("job-running")
    assert running is not None and running.state == JobState.failed
    assert running.error is not None and running.error.startswith("interrupted")
    queued = state.store.get_job("job-queued")
    assert queued is not None and queued.state == JobState.queued and queued.position == 0
    assert not (data / "adapters" / "x").exists()
    assert list((data / "adapters").iterdir()) == []
    assert not (data / "jobs" / "job-running" / "output").exists()
    assert not (data / "tmp").exists()
    assert state.db.integrity_check() == "ok"
    events = state.store.events_after("job-running", 0)
    assert [e.state for e in events] == [JobState.queued, JobState.running, JobState.failed]
    state.db.close()


def test_recover_keeps_registered_outputs(settings: TrainerSettings) -> None:
    from protocol.adapters import AdapterRecord
    from services.trainer.store import utcnow

    state = TrainerState.build(settings)
    folder = settings.data_dir / "adapters" / "kept"
    folder.mkdir(parents=True)
    record = AdapterRecord(name="kept", path=str(folder), base_model="tiny", created_at=utcnow())
    with state.db.transaction() as conn:
        state.store.insert_adapter(conn, record)
    state.runner.recover()
    assert folder.exists()
    state.db.close()
