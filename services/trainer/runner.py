"""The job runner: one worker thread per device slot takes queued jobs in submission order
and runs each in its own child process (`python -m services.trainer.child`).

    queued ──claim──▶ running ──child exits 0──▶ publish output, register, succeeded
                         │  └──child dies / raises──▶ failed (exit code, signal or exception)
                         └──cancel──▶ SIGTERM, then SIGKILL after the grace ──▶ cancelled

The child writes into `jobs/<id>/output/` (staging). On success the runner hashes the files,
renames the folder to `adapters/<name>` (or `models/<name>`) and, in one SQLite transaction,
registers it and marks the job succeeded. A crash at any point leaves either no folder under
the final name or one that the registry does not list (removed at the next start).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.adapters import AdapterRecord
from protocol.jobs import DpoJobSpec, JobProgress, JobRecord, JobState, MergeJobSpec
from services.trainer.core.config import TrainerSettings
from services.trainer.core.errors import Conflict, NotFound
from services.trainer.core.files import atomic_write_text, discard, publish_folder, sha256_tree
from services.trainer.datasets import DatasetLayout
from services.trainer.models import resolve_base_model
from services.trainer.store import Store, utcnow
from services.trainer.stored import finite, finite_metrics

logger = logging.getLogger(__name__)

SOURCE_ROOT = Path(__file__).resolve().parents[2]
INTERRUPTED = "interrupted: the trainer stopped while the job ran; submit it again"
POLL_S = 0.5


@dataclass(frozen=True)
class Layout:
    data_dir: Path

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id

    def staging(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "output"

    def output(self, kind: str, name: str) -> Path:
        return self.data_dir / ("models" if kind == "merge" else "adapters") / name

    def log(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "job.log"


def describe_exit(returncode: int, error: str | None, log_path: Path) -> str:
    """A reason a person can act on, from what the child said and how it ended."""
    if error:
        return error
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory, or killed by hand)" if name == "SIGKILL" else ""
        return f"the job's process was killed by {name}{hint}; see {log_path}"
    if returncode == 0:
        return f"the job's process exited without a result; see {log_path}"
    return f"the job's process exited with code {returncode}; see {log_path}"


class Runner:
    def __init__(self, settings: TrainerSettings, store: Store, device: str) -> None:
        self.settings = settings
        self.store = store
        self.device = device
        self.layout = Layout(settings.data_dir)
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
        jobs_root = self.settings.data_dir / "jobs"
        if jobs_root.is_dir():
            for job_dir in jobs_root.iterdir():
                discard(job_dir / "output")
        registered = {a.name for a in self.store.list_adapters()}
        for folder in ("adapters", "models"):
            root = self.settings.data_dir / folder
            if not root.is_dir():
                continue
            for path in root.iterdir():
                if path.name.startswith(".trash-"):
                    discard(path)
                elif path.is_dir() and path.name not in registered:
                    logger.warning("removing %s: not in the registry (a crash mid-publish)", path)
                    discard(path)
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
            self._signal(proc, signal.SIGTERM)
        self.notify()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            for proc in self._procs.values():
                self._signal(proc, signal.SIGKILL)

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
        self._signal(proc, signal.SIGTERM)

        def escalate() -> None:
            if proc.poll() is None:
                self._signal(proc, signal.SIGKILL)

        timer = threading.Timer(self.settings.cancel_grace_s, escalate)
        timer.daemon = True
        timer.start()

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # The child leads its own process group: the signal reaches its helpers too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

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
                    self._wake.wait(POLL_S * 2)
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

    def _plan(self, job: JobRecord) -> dict[str, Any]:
        spec = job.spec
        datasets = DatasetLayout(self.settings.data_dir)
        job_dir = self.layout.job_dir(job.id)
        context: dict[str, Any] = {
            "work_dir": str(job_dir / "work"),
            "output_dir": str(self.layout.staging(job.id)),
            "device": self.device,
            "converted_models_dir": str(self.settings.data_dir / "models"),
            "extra": {},
        }
        if isinstance(spec, DpoJobSpec):
            base = resolve_base_model(spec.base_model, self.settings, self.store)
            context["base_model_path"] = base.path
            context["train_path"] = str(datasets.path(spec.dataset_id))
            if spec.eval_dataset_id:
                context["eval_path"] = str(datasets.path(spec.eval_dataset_id))
            if spec.parent_adapter:
                parent = self.store.get_adapter(spec.parent_adapter)
                if parent is None:
                    raise RuntimeError(f"parent adapter {spec.parent_adapter!r} is gone")
                context["parent_adapter_path"] = parent.path
        else:
            adapter = self.store.get_adapter(spec.adapter)
            if adapter is None:
                raise RuntimeError(f"adapter {spec.adapter!r} is gone")
            base = resolve_base_model(
                spec.base_model or adapter.base_model, self.settings, self.store
            )
            context["base_model_path"] = base.path
            context["parent_adapter_path"] = adapter.path
        return {
            "job_id": job.id,
            "kind": spec.kind,
            "body": self.settings.job_bodies[spec.kind],
            "spec": spec.model_dump(mode="json"),
            "context": context,
            "parent_pid": os.getpid(),
        }

    def _child_env(self, slot: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAI_TRAINER_API_KEY")}
        # Bodies named in `job_bodies` may live outside the installed packages (tests/).
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        if not self.settings.allow_hub_models:
            env["HF_HUB_OFFLINE"] = "1"  # base models come from the model roots only
        env["PYTHONUNBUFFERED"] = "1"
        if self.device == "cuda" and self.settings.workers > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        return env

    def _run(self, job: JobRecord, slot: int) -> None:
        job_dir = self.layout.job_dir(job.id)
        staging = self.layout.staging(job.id)
        (job_dir / "work").mkdir(parents=True, exist_ok=True)
        discard(staging)
        staging.mkdir()
        try:
            plan = self._plan(job)
        except Exception as exc:
            self.store.finish_job(job.id, JobState.failed, error=f"cannot start: {exc}")
            discard(staging)
            return
        atomic_write_text(job_dir / "child.json", json.dumps(plan, indent=2))
        read_fd, write_fd = os.pipe()
        with self.layout.log(job.id).open("ab") as log:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "services.trainer.child", str(job_dir)),
                    *("--events-fd", str(write_fd)),
                ],
                cwd=job_dir / "work",
                env=self._child_env(slot),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        os.close(write_fd)
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
        result, error = self._follow(job.id, proc, read_fd)
        returncode = proc.wait()
        self._signal(proc, signal.SIGKILL)  # helpers the child left behind
        with self._lock:
            cancelled = job.id in self._cancel
        if cancelled:
            discard(staging)
            self.store.finish_job(job.id, JobState.cancelled, error="cancelled while running")
        elif self._stopping.is_set() and returncode != 0:
            discard(staging)
            self.store.finish_job(job.id, JobState.failed, error=INTERRUPTED)
        elif returncode == 0 and result is not None:
            self._publish(job, result)
        else:
            discard(staging)
            reason = describe_exit(returncode, error, self.layout.log(job.id))
            self.store.finish_job(job.id, JobState.failed, error=reason)
        logger.info("job %s ended with exit code %d", job.id, returncode)

    def _follow(
        self, job_id: str, proc: subprocess.Popen[bytes], read_fd: int
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Store the child's events until it exits. A grandchild may hold the pipe open
        after the child died, so the loop ends on the child's exit, not on EOF."""
        result: dict[str, Any] | None = None
        error: str | None = None
        buffer = b""
        os.set_blocking(read_fd, False)
        with selectors.DefaultSelector() as selector:
            selector.register(read_fd, selectors.EVENT_READ)
            eof = False
            while True:
                exited = proc.poll() is not None
                if not eof and (exited or selector.select(POLL_S)):
                    while True:
                        try:
                            chunk = os.read(read_fd, 1 << 16)
                        except BlockingIOError:
                            break
                        if not chunk:
                            eof = True
                            break
                        buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        kind, value = self._handle(job_id, line)
                        if kind == "result":
                            result = value
                        elif kind == "error":
                            error = value
                if exited or eof:
                    if eof and not exited:
                        proc.wait()
                    break
        os.close(read_fd)
        return result, error

    def _handle(self, job_id: str, line: bytes) -> tuple[str, Any]:
        try:
            message = json.loads(line)
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            logger.warning("job %s: unreadable event line %r", job_id, line[:200])
            return "", None
        if kind == "progress":
            try:
                progress = JobProgress.model_validate(message["progress"])
            except Exception:
                logger.warning("job %s: bad progress %r", job_id, line[:200])
                return "", None
            self.store.record_progress(job_id, progress)
        elif kind == "log":
            self.store.record_log(job_id, str(message.get("message", ""))[:2000])
        elif kind == "result":
            return kind, message.get("result") or {}
        elif kind == "error":
            return kind, str(message.get("message") or "the job failed")
        return kind, None

    def _publish(self, job: JobRecord, result: dict[str, Any]) -> None:
        spec = job.spec
        staging = self.layout.staging(job.id)
        files = sha256_tree(staging)
        if not files:
            discard(staging)
            self.store.finish_job(
                job.id, JobState.failed, error="the job body wrote nothing into output_dir"
            )
            return
        final = self.layout.output(spec.kind, spec.output_name)
        record = self._record(spec, job.id, final, files, result)
        publish_folder(staging, final)
        stored = dict(result) | {"output_name": spec.output_name, "path": str(final)}
        try:
            ok = self.store.finish_job(job.id, JobState.succeeded, result=stored, adapter=record)
        except Exception:
            discard(final)
            raise
        if not ok:  # ended meanwhile (cancelled at the last moment): nothing may stay listed
            discard(final)

    def _record(
        self,
        spec: DpoJobSpec | MergeJobSpec,
        job_id: str,
        final: Path,
        files: dict[str, str],
        result: dict[str, Any],
    ) -> AdapterRecord:
        # Finite numbers only: a NaN loss must not make the registry row unreadable.
        metrics = finite_metrics(result.get("metrics") or {})
        config = finite(result.get("config") or {})
        if isinstance(spec, DpoJobSpec):
            return AdapterRecord(
                name=spec.output_name,
                kind="lora",
                path=str(final),
                base_model=spec.base_model,
                parent_adapter=spec.parent_adapter,
                dataset_id=spec.dataset_id,
                job_id=job_id,
                rank=result.get("rank", spec.lora.r),
                metrics=metrics,
                files=files,
                config=config,
                created_at=utcnow(),
            )
        adapter = self.store.get_adapter(spec.adapter)
        return AdapterRecord(
            name=spec.output_name,
            kind="merged",
            path=str(final),
            base_model=spec.base_model or (adapter.base_model if adapter else ""),
            parent_adapter=spec.adapter,
            dataset_id=adapter.dataset_id if adapter else None,
            job_id=job_id,
            rank=None,
            metrics=metrics,
            files=files,
            config=config,
            created_at=utcnow(),
        )
