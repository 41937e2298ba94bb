"""The job runner: one worker thread per device slot takes queued jobs in submission order
and runs each in its own child process (`python -m services.trainer.child`).

    queued ──claim──▶ running ──child exits 0──▶ publish output, register, succeeded
                         │  └──child dies / raises──▶ failed (exit code, signal or exception)
                         └──cancel──▶ SIGTERM, then SIGKILL after the grace ──▶ cancelled

The child writes into `jobs/<id>/output/` (staging). On success the runner hashes the files,
renames the folder to `adapters/<name>` (or `models/<name>`) and, in one SQLite transaction,
registers it and marks the job succeeded. A crash at any point leaves either no folder under
the final name or one that the registry does not list (removed at the next start).

This module is the queue side: worker threads, cancel, start and shutdown. The job's files
are laid out by job_layout.py, its child.json written from job_plan.py, its process started
and followed by job_process.py, its output published by job_publish.py.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time

from protocol.jobs import JobRecord, JobState
from services.trainer.core.config import TrainerSettings
from services.trainer.core.errors import Conflict, NotFound
from services.trainer.core.files import atomic_write_text, discard
from services.trainer.datasets import DatasetLayout
from services.trainer.job_layout import JobLayout
from services.trainer.job_plan import plan_child
from services.trainer.job_process import (
    child_env,
    describe_exit,
    follow,
    signal_group,
    start_child,
)
from services.trainer.job_publish import publish
from services.trainer.store import Store

logger = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the trainer stopped while the job ran; submit it again"
# How long an idle worker waits before it looks at the queue again (a submit wakes it sooner).
IDLE_WAIT_S = 1.0


class Runner:
    def __init__(self, settings: TrainerSettings, store: Store, device: str) -> None:
        self.settings = settings
        self.store = store
        self.device = device
        self.layout = JobLayout(settings.data_dir)
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._cancel: set[str] = set()
        self._done: dict[str, threading.Event] = {}

    # -- lifecycle ----------------------------------------------------------------------

    def recover(self) -> None:
        """Before any worker starts: no job can still be running, and debris goes."""
        failed = self.store.fail_interrupted(INTERRUPTED)
        if failed:
            logger.warning("marked %d interrupted job(s) failed: %s", len(failed), failed)
        self.layout.remove_debris({a.name for a in self.store.list_adapters()})
        discard(DatasetLayout(self.settings.data_dir).tmp)

    def start(self) -> None:
        self.recover()
        for slot in range(self.settings.workers):
            thread = threading.Thread(
                target=self._work, args=(slot,), name=f"trainer-worker-{slot}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def drain(self) -> None:
        """Take no new job (the service is shutting down); running ones go on until `stop`."""
        self._stopping.set()
        self.notify()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stopping.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            signal_group(proc, signal.SIGTERM)
        self.notify()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for proc in self._procs.values():
                signal_group(proc, signal.SIGKILL)

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # -- cancel -------------------------------------------------------------------------

    def cancel(self, job_id: str, wait_s: float | None = None) -> JobRecord:
        """Cancel a queued job at once; kill a running one and wait until it is cancelled."""
        with self.store.db.transaction() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"unknown job {job_id[:64]!r}: see GET /v1/jobs")
            state = JobState(row["state"])
            if state == JobState.queued:
                self.store.finish_job(
                    job_id, JobState.cancelled, error="cancelled before it started", conn=conn
                )
        if state.terminal:
            raise Conflict(f"job {job_id} already ended ({state.value}); nothing to cancel")
        if state == JobState.running:
            with self._lock:
                self._cancel.add(job_id)
                proc = self._procs.get(job_id)
                done = self._done.setdefault(job_id, threading.Event())
            if proc is not None:
                self._kill_later(proc)
            current = self.store.get_job(job_id)
            if current is not None and not current.state.terminal:
                done.wait(wait_s if wait_s is not None else self.settings.cancel_grace_s + 15.0)
        job = self.store.get_job(job_id)
        assert job is not None
        return job

    def _kill_later(self, proc: subprocess.Popen[bytes]) -> None:
        signal_group(proc, signal.SIGTERM)

        def escalate() -> None:
            if proc.poll() is None:
                signal_group(proc, signal.SIGKILL)

        timer = threading.Timer(self.settings.cancel_grace_s, escalate)
        timer.daemon = True
        timer.start()

    # -- workers ------------------------------------------------------------------------

    def _work(self, slot: int) -> None:
        while not self._stopping.is_set():
            try:
                job = self.store.claim_next()
            except Exception:
                logger.exception("worker %d could not read the queue", slot)
                job = None
            if job is None:
                with self._wake:
                    self._wake.wait(IDLE_WAIT_S)
                continue
            logger.info("worker %d took job %s", slot, job.id)
            try:
                self._run(job, slot)
            except Exception as exc:  # the worker must outlive any one job
                logger.exception("job %s: runner error", job.id)
                self.store.finish_job(job.id, JobState.failed, error=f"runner error: {exc}")
                discard(self.layout.staging(job.id))
            finally:
                with self._lock:
                    self._procs.pop(job.id, None)
                    self._cancel.discard(job.id)
                    done = self._done.pop(job.id, None)
                if done is not None:
                    done.set()

    def _run(self, job: JobRecord, slot: int) -> None:
        job_dir = self.layout.job_dir(job.id)
        staging = self.layout.staging(job.id)
        (job_dir / "work").mkdir(parents=True, exist_ok=True)
        discard(staging)
        staging.mkdir()
        try:
            plan = plan_child(job, self.settings, self.store, self.device)
        except Exception as exc:
            self.store.finish_job(job.id, JobState.failed, error=f"cannot start: {exc}")
            discard(staging)
            return
        atomic_write_text(job_dir / "child.json", json.dumps(plan, indent=2))
        env = child_env(self.settings, self.device, slot)
        proc, read_fd = start_child(job_dir, self.layout.log(job.id), env)
        atomic_write_text(job_dir / "child.pid", str(proc.pid))
        self.store.set_pid(job.id, proc.pid)
        logger.info("job %s (%s) started: pid %d, slot %d", job.id, job.kind, proc.pid, slot)
        with self._lock:
            # `stop` and `cancel` set their flag before they look at `_procs`: reading the
            # flags after registering closes the window where neither sees the other.
            self._procs[job.id] = proc
            kill_now = job.id in self._cancel or self._stopping.is_set()
        if kill_now:
            self._kill_later(proc)
        result, error = follow(self.store, job.id, proc, read_fd)
        returncode = proc.wait()
        signal_group(proc, signal.SIGKILL)  # helpers the child left behind
        with self._lock:
            cancelled = job.id in self._cancel
        if cancelled:
            discard(staging)
            self.store.finish_job(job.id, JobState.cancelled, error="cancelled while running")
        elif self._stopping.is_set() and returncode != 0:
            discard(staging)
            self.store.finish_job(job.id, JobState.failed, error=INTERRUPTED)
        elif returncode == 0 and result is not None:
            publish(self.store, self.layout, job, result)
        else:
            discard(staging)
            reason = describe_exit(returncode, error, self.layout.log(job.id))
            self.store.finish_job(job.id, JobState.failed, error=reason)
        logger.info("job %s ended with exit code %d", job.id, returncode)
