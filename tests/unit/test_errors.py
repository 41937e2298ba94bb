"""Both service clients' exception trees share cai.errors' shape; one backoff serves every retry.

.venv/bin/pytest tests/unit/test_errors.py -q
"""

from __future__ import annotations

import random

import pytest

from cai.errors import (
    ServiceConnectionError,
    ServiceResponseError,
    ServiceStatusError,
    ServiceTimeout,
)
from cai.generator import errors as gen
from cai.retry import MAX_BACKOFF_S, backoff_delay
from cai.trainer import errors as trainer


@pytest.mark.parametrize(
    ("generator_class", "trainer_class", "shape"),
    [
        (gen.GeneratorConnectionError, trainer.TrainerConnectionError, ServiceConnectionError),
        (gen.GeneratorTimeout, trainer.TrainerTimeout, ServiceTimeout),
        (gen.GeneratorStatusError, trainer.TrainerStatusError, ServiceStatusError),
        (gen.GeneratorResponseError, trainer.TrainerResponseError, ServiceResponseError),
    ],
)
def test_each_client_error_is_its_shared_shape(generator_class, trainer_class, shape):
    assert issubclass(generator_class, shape) and issubclass(generator_class, gen.GeneratorError)
    assert issubclass(trainer_class, shape) and issubclass(trainer_class, trainer.TrainerError)


def test_a_timeout_stays_a_connection_error_of_its_client():
    error = gen.GeneratorTimeout("slow", url="http://g")
    assert isinstance(error, gen.GeneratorConnectionError) and error.url == "http://g"


def test_status_errors_carry_the_servers_message_under_one_name():
    g = gen.GeneratorNotFound(
        "m", url="u", status_code=404, server_message="no model", error_type="NotFound"
    )
    t = trainer.TrainerConflict("m", url="u", status_code=409, detail="taken", problem=None)
    assert (g.server_message, g.error_type) == ("no model", "NotFound")
    assert (t.server_message, t.detail) == ("taken", "taken")


@pytest.mark.parametrize(
    ("status", "generator_class", "trainer_class"),
    [
        (400, gen.GeneratorBadRequest, trainer.TrainerBadRequest),
        (403, gen.GeneratorAuthError, trainer.TrainerAuthError),
        (409, gen.GeneratorBadRequest, trainer.TrainerConflict),
        (418, gen.GeneratorBadRequest, trainer.TrainerStatusError),
        (429, gen.GeneratorRateLimited, trainer.TrainerStatusError),
        (503, gen.GeneratorServerError, trainer.TrainerServerError),
        (302, gen.GeneratorStatusError, trainer.TrainerStatusError),
    ],
)
def test_status_classes(status, generator_class, trainer_class):
    assert gen.status_error_class(status) is generator_class
    assert trainer.status_error_class(status) is trainer_class


def test_backoff_doubles_with_equal_jitter_under_its_cap():
    for attempt, base in enumerate([0.5, 1.0, 2.0, 2.0]):
        delay = backoff_delay(0.5, attempt, cap=2.0)
        assert base / 2 <= delay <= base
    assert backoff_delay(1.0, 10, retry_after=120.0) == MAX_BACKOFF_S


def test_a_seeded_rng_makes_the_jitter_reproducible():
    first = [backoff_delay(0.5, a, rng=random.Random(7)) for a in range(4)]
    assert first == [backoff_delay(0.5, a, rng=random.Random(7)) for a in range(4)]
