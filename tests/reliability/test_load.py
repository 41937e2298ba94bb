"""Load over real HTTP (`python -m services.trainer` under uvicorn on a free port): while a
real DPO job trains on the tiny model, 200 job submissions arrive at once (each with an
Idempotency-Key, some keys sent twice or more) and status polls run alongside. Every distinct
submission is accepted exactly once, the jobs then run one at a time in submission order, and
the 99th-percentile latency of the status polls is reported (the goal is < 50 ms on 2 cores;
reported, not asserted: timings on a shared CI machine are not a test).

    .venv/bin/pytest tests/reliability/test_load.py -s     # -s shows the latency report
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest

from tests.integration.conftest import TrainerService, wait_state, wait_until
from tests.integration.test_dpo_job import preference_rows
from tests.reliability.conftest import dpo_body, upload

logger = logging.getLogger(__name__)

SUBMISSIONS = 200
DISTINCT = 100  # the other 100 repeat one of these, with the same key and body
POLLERS = 4


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def submit_all(
    client: httpx.AsyncClient, dataset_id: str, plan: list[int]
) -> list[tuple[int, int, str]]:
    """Fire every submission at once; (distinct index, status, job id) per submission."""

    async def one(i: int) -> tuple[int, int, str]:
        body = dpo_body(dataset_id, f"ok-load-{i:03d}")
        response = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"k-{i}"})
        assert response.status_code in (200, 202), response.text
        return i, response.status_code, response.json()["id"]

    return list(await asyncio.gather(*(one(i) for i in plan)))


def poll(base_url: str, job_id: str, stop: threading.Event) -> list[tuple[float, float]]:
    """(time sent, latency in ms) of status polls until `stop`; its own thread and
    connection, so the burst's client-side queueing does not count as server latency."""
    samples = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while not stop.is_set():
            start = time.perf_counter()
            response = client.get(f"/v1/jobs/{job_id}")
            samples.append((start, (time.perf_counter() - start) * 1000))
            assert response.status_code == 200
            stop.wait(0.01)
    return samples


def load(
    base_url: str, dataset_id: str, training: str, plan: list[int]
) -> tuple[list[tuple[int, int, str]], list[float], list[float]]:
    """The burst, with pollers running before, through and after it; returns the answers
    and the poll latencies during the burst and in the 2 s after it."""
    stop = threading.Event()
    with ThreadPoolExecutor(POLLERS) as pool:
        pollers = [pool.submit(poll, base_url, training, stop) for _ in range(POLLERS)]

        async def burst() -> list[tuple[int, int, str]]:
            limits = httpx.Limits(max_connections=SUBMISSIONS)
            async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
                return await submit_all(client, dataset_id, plan)

        began = time.perf_counter()
        answers = asyncio.run(burst())
        ended = time.perf_counter()
        stop.wait(2.0)  # polls while the queue is long but nothing new arrives
        stop.set()
        samples = list(itertools.chain.from_iterable(p.result() for p in pollers))
    during = [ms for sent, ms in samples if began <= sent <= ended]
    after = [ms for sent, ms in samples if sent > ended]
    return answers, during, after


def describe(latencies: list[float]) -> str:
    if not latencies:
        return "no polls"
    return (
        f"{len(latencies)} polls, p50 {statistics.median(latencies):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms"
    )


@pytest.mark.slow
def test_200_concurrent_submissions_while_a_real_job_trains(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer()
    client = trainer.client()
    rows = preference_rows(96, seed=3)  # a few seconds of real training on 2 cores
    train = upload(client, "".join(json.dumps(r) + "\n" for r in rows).encode())
    fake = upload(client)
    real = client.post(
        "/v1/jobs",
        json=dpo_body(
            train,
            "real-under-load",
            lora={"r": 8},
            dpo={"learning_rate": 5e-3, "num_train_epochs": 2, "max_length": 128},
        ),
    )
    assert real.status_code == 202, real.text
    training = real.json()["id"]
    wait_until(
        lambda: client.get(f"/v1/jobs/{training}").json()["progress"]["step"] >= 1,
        120,
        "the real DPO job to take its first step",
    )

    rng = random.Random(7)
    plan = list(range(DISTINCT)) + [rng.randrange(DISTINCT) for _ in range(SUBMISSIONS - DISTINCT)]
    rng.shuffle(plan)
    burst_began = datetime.now(UTC)
    answers, during_burst, after_burst = load(trainer.base_url, fake, training, plan)
    during = client.get(f"/v1/jobs/{training}").json()
    # The load must arrive while the job trains: it was running before the burst (step >= 1
    # above) and had not finished when the burst began (a fast machine may finish it during
    # the burst; that is still load on a training job).
    if during["state"] != "running":
        assert during["state"] == "succeeded", during
        assert datetime.fromisoformat(during["finished_at"]) > burst_began, during

    # Every distinct submission accepted exactly once; every repeat got the same job back.
    ids: dict[int, set[str]] = defaultdict(set)
    created: Counter[int] = Counter()
    for i, status, job_id in answers:
        ids[i].add(job_id)
        created[i] += status == 202
    assert len(answers) == SUBMISSIONS
    assert all(len(v) == 1 for v in ids.values())
    assert set(created.values()) == {1} and len(created) == DISTINCT
    jobs = client.get("/v1/jobs").json()["jobs"]
    assert len(jobs) == DISTINCT + 1
    assert len({j["id"] for j in jobs}) == DISTINCT + 1

    report = (
        f"LOAD: {SUBMISSIONS} submissions ({DISTINCT} distinct) while a real DPO job trains; "
        f"status latency during the burst: {describe(during_burst)}; "
        f"after it: {describe(after_burst)} (goal p99 < 50 ms on 2 cores)"
    )
    logger.info("%s", report)
    print(report)
    assert during_burst and after_burst

    # Then the queue drains one job at a time, in the order the server accepted them.
    assert wait_state(client, training, "succeeded", "failed", timeout_s=300)["state"] == (
        "succeeded"
    )
    for job in jobs[1:]:
        wait_state(client, job["id"], "succeeded", "failed", timeout_s=300)
    finished = client.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in finished] == [j["id"] for j in jobs]  # listed by submission
    assert all(j["state"] == "succeeded" for j in finished), Counter(j["state"] for j in finished)
    for earlier, later in itertools.pairwise(finished):
        assert earlier["finished_at"] <= later["started_at"]
    assert trainer.integrity() == "ok"
