"""Turn the Trainer's log calls into `JobProgress` events for the runner.

`ProgressCallback(emit)` is a transformers `TrainerCallback`: on every training log (TRL logs
loss, rewards/margins, rewards/accuracies, ... every `logging_steps`) it emits step/total,
epoch, tokens/s (from TRL's running `num_tokens` count: real tokens, no padding) and the ETA.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from protocol.jobs import JobProgress

logger = logging.getLogger(__name__)


def numeric_metrics(logs: dict[str, Any]) -> dict[str, float]:
    """Finite numbers only: JobProgress.metrics and the registry store floats."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


def eta_seconds(elapsed: float, step: int, total: int | None) -> float | None:
    """Remaining time at the mean pace so far."""
    if not total or step <= 0:
        return None
    return max(0.0, elapsed / step * (total - step))


class ProgressCallback(TrainerCallback):
    def __init__(
        self, emit: Callable[[JobProgress], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.emit = emit
        self.clock = clock
        self.started: float | None = None
        self.last: JobProgress | None = None
        self.tokens = 0

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self.started = self.clock()
        # Step 0 with the total: the reference pre-pass is over and training starts.
        total = int(state.max_steps) if state.max_steps else None
        self._send(JobProgress(step=0, total_steps=total, epoch=0.0))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # The end-of-training summary (train_loss, train_runtime, ...) has no `loss`.
        if not logs or "loss" not in logs:
            return
        now = self.clock()
        elapsed = now - (self.started if self.started is not None else now)
        step = int(state.global_step)
        total = int(state.max_steps) if state.max_steps else None
        self.tokens = int(logs.get("num_tokens", self.tokens))
        progress = JobProgress(
            step=step,
            total_steps=total,
            epoch=float(state.epoch) if state.epoch is not None else None,
            eta_seconds=eta_seconds(elapsed, step, total),
            tokens_per_second=self.tokens / elapsed if elapsed > 0 and self.tokens else None,
            metrics=numeric_metrics(logs),
        )
        self.last = progress
        logger.info(
            "step %d/%s loss %.4f margin %.4f accuracy %.3f",
            step,
            total,
            progress.metrics.get("loss", float("nan")),
            progress.metrics.get("rewards/margins", float("nan")),
            progress.metrics.get("rewards/accuracies", float("nan")),
        )
        self._send(progress)

    def _send(self, progress: JobProgress) -> None:
        try:
            self.emit(progress)
        except Exception:  # a broken reporter must not kill the training it reports on
            logger.exception("progress emit failed at step %d", progress.step)
