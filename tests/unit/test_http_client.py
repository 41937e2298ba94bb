"""What GeneratorClient and TrainerClient share (cai.http.BearerHttpClient)."""

from __future__ import annotations

from typing import Any

import pytest

from cai.generator.client import GeneratorClient
from cai.http import BearerHttpClient
from cai.trainer.client import TrainerClient


@pytest.mark.parametrize("client_class", [GeneratorClient, TrainerClient])
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"max_retries": -1}, "max_retries must be >= 0"),
        ({"backoff": -0.5}, "backoff must be >= 0"),
    ],
)
def test_both_clients_refuse_negative_retry_settings(
    client_class: type[BearerHttpClient], setting: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        client_class("http://127.0.0.1:9", **setting)
