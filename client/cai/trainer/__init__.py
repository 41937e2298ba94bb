"""Client side of the trainer service: a typed async client and its errors.

from cai.trainer import TrainerClient

async with TrainerClient("http://127.0.0.1:8100", api_key=None) as trainer:
    dataset = await trainer.upload_dataset(Path("pairs.jsonl"))
    job = await trainer.submit_job(spec, idempotency_key="stage1-train")
    job = await trainer.wait_for_job(job.id, on_event=print)
"""

from cai.trainer.client import DEFAULT_URL, TrainerClient
from cai.trainer.errors import (
    JobNotSucceeded,
    TrainerAuthError,
    TrainerBadRequest,
    TrainerConflict,
    TrainerConnectionError,
    TrainerError,
    TrainerNotFound,
    TrainerPayloadTooLarge,
    TrainerResponseError,
    TrainerServerError,
    TrainerStatusError,
    TrainerTimeout,
)
from cai.trainer.sse import SseMessage, iter_sse

__all__ = [
    "DEFAULT_URL",
    "JobNotSucceeded",
    "SseMessage",
    "TrainerAuthError",
    "TrainerBadRequest",
    "TrainerClient",
    "TrainerConflict",
    "TrainerConnectionError",
    "TrainerError",
    "TrainerNotFound",
    "TrainerPayloadTooLarge",
    "TrainerResponseError",
    "TrainerServerError",
    "TrainerStatusError",
    "TrainerTimeout",
    "iter_sse",
]
