"""The `openai` SDK (the real package) against the real trainer (`python -m services.trainer`
on a free port): upload a preference file, run a DPO job on the tiny model to success and
find its `fine_tuned_model` in the adapter registry, cancel another, list both; bad files,
bad hyper-parameters and a missing key raise the SDK's typed errors with the trainer's message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.conftest import TrainerService, trainer_factory
from tests.integration.test_dpo_job import preference_rows
from tests.unit.trainer.conftest import FAKE

KEY = "k-openai"


def openai_rows(n: int, seed: int) -> bytes:
    """The tiny model's learnable pairs in OpenAI's preference format."""
    rows = [
        {
            "input": {"messages": [{"role": "user", "content": row["prompt"]}]},
            "preferred_output": [{"role": "assistant", "content": row["chosen"]}],
            "non_preferred_output": [{"role": "assistant", "content": row["rejected"]}],
        }
        for row in preference_rows(n, seed)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def sdk(trainer: TrainerService, key: str | None = KEY) -> openai.OpenAI:
    # max_retries=0: a refused request must surface at once, not after the SDK's backoff.
    return openai.OpenAI(
        base_url=f"{trainer.base_url}/v1", api_key=key or "none", max_retries=0, timeout=120
    )


def wait_done(client: openai.OpenAI, job_id: str, timeout_s: float = 240) -> Any:
    """Follow the job through its events (newest first) until one says it ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = client.fine_tuning.jobs.list_events(job_id, limit=5).data
        if any(e.type == "message" and e.message.startswith(_ENDED) for e in events):
            return client.fine_tuning.jobs.retrieve(job_id)
        time.sleep(0.2)  # polling the job's events, not waiting in place of a check
    raise AssertionError(f"{job_id} did not end in {timeout_s}s")


_ENDED = ("Job succeeded", "Job failed", "Job cancelled")


@pytest.fixture(scope="module")
def fake_trainer(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[TrainerService]:
    """One trainer with a key and the stand-in job bodies, for the tests that train nothing."""
    with trainer_factory(tmp_path_factory.mktemp("openai"), tiny_model) as start:
        yield start(FAKE, KEY)


@pytest.mark.slow
def test_the_sdk_runs_a_dpo_job_to_a_registered_adapter_and_cancels_another(
    start_trainer: Callable[..., TrainerService],
) -> None:
    trainer = start_trainer(fake_bodies=False, api_key=KEY)
    client = sdk(trainer)
    uploaded = client.files.create(
        file=("prefs.jsonl", openai_rows(32, seed=1)), purpose="fine-tune"
    )
    assert uploaded.filename == "prefs.jsonl" and uploaded.purpose == "fine-tune"
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert uploaded.id in [f.id for f in client.files.list()]

    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=uploaded.id,
        suffix="sdk",
        method={
            "type": "dpo",
            # Random tiny weights need a large step (x 5e-6 = 5e-3) to move within seconds.
            "dpo": {
                "hyperparameters": {"n_epochs": 1, "beta": 0.1, "learning_rate_multiplier": 1000}
            },
        },
        extra_body={"cai_spec": {"lora": {"r": 8}, "dpo": {"max_length": 128, "warmup_ratio": 0}}},
    )
    assert job.status == "queued" and job.fine_tuned_model is None
    assert job.method is not None and job.method.dpo is not None
    assert job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.learning_rate_multiplier == pytest.approx(1000)
    other = client.fine_tuning.jobs.create(
        model="tiny", training_file=uploaded.id, method={"type": "dpo"}
    )
    cancelled = client.fine_tuning.jobs.cancel(other.id)
    assert cancelled.status == "cancelled"

    done = wait_done(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model and done.fine_tuned_model.startswith("ft-sdk-")
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    assert [e.message for e in events if e.message.startswith("Job ")] == [
        "Job succeeded",
        "Job running",
        "Job queued",
    ]
    metrics = [e.data for e in events if e.type == "metrics"]
    assert metrics and all(isinstance(d, dict) and "train_loss" in d for d in metrics)
    # The adapter is in the registry under that name: the name vLLM loads it as.
    adapter = trainer.client().get(f"/v1/adapters/{done.fine_tuned_model}").json()
    assert adapter["job_id"] == job.id and adapter["rank"] == 8
    assert adapter["dataset_id"] == uploaded.id
    (checkpoint,) = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoint.fine_tuned_model_checkpoint == done.fine_tuned_model
    assert {j.id: j.status for j in client.fine_tuning.jobs.list()} == {
        other.id: "cancelled",
        job.id: "succeeded",
    }


def test_a_bad_line_is_a_bad_request_naming_the_line(fake_trainer: TrainerService) -> None:
    good = openai_rows(2, seed=3).decode()
    bad = good + '{"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}\n'
    with pytest.raises(openai.BadRequestError, match=r"line 3: `input\.messages` must be"):
        sdk(fake_trainer).files.create(file=("bad.jsonl", bad.encode()), purpose="fine-tune")


def test_a_line_that_is_not_json_is_a_bad_request_naming_the_line(
    fake_trainer: TrainerService,
) -> None:
    body = openai_rows(1, seed=4) + b"\n{not json\n"
    with pytest.raises(openai.BadRequestError, match="line 3 is not valid JSON") as caught:
        sdk(fake_trainer).files.create(file=("bad.jsonl", body), purpose="fine-tune")
    assert caught.value.type == "invalid_request_error"


def test_another_purpose_is_refused(fake_trainer: TrainerService) -> None:
    with pytest.raises(openai.BadRequestError, match="purpose must be 'fine-tune'") as caught:
        sdk(fake_trainer).files.create(file=("a.jsonl", openai_rows(1, 5)), purpose="batch")
    assert caught.value.param == "purpose"


@pytest.mark.parametrize(
    ("hyperparameters", "extra", "param", "words"),
    [
        ({"beta": -1}, {}, "method.dpo.hyperparameters.beta", "more than 0"),
        ({"n_epochs": 2.5}, {}, "method.dpo.hyperparameters.n_epochs", "an integer"),
        ({"batch_size": "big"}, {}, "method.dpo.hyperparameters.batch_size", "'auto' or"),
        ({}, {"cai_spec": {"lora": {"rank": 8}}}, "cai_spec.lora.rank", "not a field"),
        (
            {"beta": 0.2},
            {"cai_spec": {"dpo": {"beta": 0.3}}},
            "method.dpo.hyperparameters.beta",
            "both",
        ),
    ],
)
def test_bad_hyperparameters_are_a_bad_request_naming_the_parameter(
    fake_trainer: TrainerService,
    hyperparameters: dict[str, Any],
    extra: dict[str, Any],
    param: str,
    words: str,
) -> None:
    client = sdk(fake_trainer)
    file = client.files.create(file=("h.jsonl", openai_rows(4, seed=6)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match=words) as caught:
        client.fine_tuning.jobs.create(
            model="tiny",
            training_file=file.id,
            method={"type": "dpo", "dpo": {"hyperparameters": hyperparameters}},
            extra_body=extra,
        )
    assert caught.value.param == param


def test_a_supervised_job_is_refused(fake_trainer: TrainerService) -> None:
    client = sdk(fake_trainer)
    file = client.files.create(file=("s.jsonl", openai_rows(4, seed=7)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="DPO jobs only"):
        client.fine_tuning.jobs.create(model="tiny", training_file=file.id)


def test_an_unknown_training_file_is_a_bad_request(fake_trainer: TrainerService) -> None:
    with pytest.raises(openai.BadRequestError, match="not a file on this trainer") as caught:
        sdk(fake_trainer).fine_tuning.jobs.create(
            model="tiny", training_file="ds-0000000000000000", method={"type": "dpo"}
        )
    assert caught.value.param == "training_file"


def test_an_unknown_job_is_not_found(fake_trainer: TrainerService) -> None:
    with pytest.raises(openai.NotFoundError, match="no fine-tuning job"):
        sdk(fake_trainer).fine_tuning.jobs.retrieve("job-0000000000000000")


def test_cancelling_a_finished_job_is_a_conflict(fake_trainer: TrainerService) -> None:
    client = sdk(fake_trainer)
    file = client.files.create(file=("c.jsonl", openai_rows(4, seed=8)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=file.id,
        method={"type": "dpo"},
        extra_body={"cai_spec": {"output_name": "ok-sdk"}},
    )
    assert wait_done(client, job.id).status == "succeeded"
    with pytest.raises(openai.ConflictError, match="already ended"):
        client.fine_tuning.jobs.cancel(job.id)


def test_a_retry_with_the_same_idempotency_key_gets_the_same_job(
    fake_trainer: TrainerService,
) -> None:
    client = sdk(fake_trainer)
    file = client.files.create(file=("i.jsonl", openai_rows(4, seed=9)), purpose="fine-tune")
    ids = {
        client.fine_tuning.jobs.create(
            model="tiny",
            training_file=file.id,
            method={"type": "dpo"},
            extra_headers={"Idempotency-Key": "sdk-retry-1"},
        ).id
        for _ in range(3)
    }
    assert len(ids) == 1


def test_without_the_key_the_sdk_raises_an_authentication_error(
    fake_trainer: TrainerService,
) -> None:
    with pytest.raises(openai.AuthenticationError, match="API key is wrong"):
        sdk(fake_trainer, key="wrong").fine_tuning.jobs.list()
    with pytest.raises(openai.AuthenticationError):
        sdk(fake_trainer, key="wrong").files.create(file=("a.jsonl", b"{}"), purpose="fine-tune")
