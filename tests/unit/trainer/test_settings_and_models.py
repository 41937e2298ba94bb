"""Settings parsing and base-model resolution: names never escape the model roots."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from protocol.adapters import AdapterRecord
from services.trainer.core.config import DEFAULT_JOB_BODIES, TrainerSettings
from services.trainer.core.db import Database
from services.trainer.core.errors import Unprocessable
from services.trainer.models import resolve_base_model
from services.trainer.store import Store, utcnow


def test_defaults_bind_localhost_on_8100(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HOST", "PORT", "API_KEY"):
        monkeypatch.delenv(f"CAI_TRAINER_{name}", raising=False)
    settings = TrainerSettings()
    assert (settings.host, settings.port, settings.api_key) == ("127.0.0.1", 8100, None)
    assert settings.job_bodies == DEFAULT_JOB_BODIES


def test_model_roots_from_a_path_list_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAI_TRAINER_MODEL_ROOTS", "/models/a:/models/b")
    assert TrainerSettings().model_roots == [Path("/models/a"), Path("/models/b")]
    monkeypatch.setenv("CAI_TRAINER_MODEL_ROOTS", '["/models/c"]')
    assert TrainerSettings().model_roots == [Path("/models/c")]


def test_empty_api_key_means_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAI_TRAINER_API_KEY", "")
    assert TrainerSettings().api_key is None


def test_a_job_body_must_be_module_colon_function() -> None:
    with pytest.raises(ValidationError, match=r"package\.module:function"):
        TrainerSettings(job_bodies={"dpo": "just_a_module"})


def test_overriding_one_body_keeps_the_other_default() -> None:
    settings = TrainerSettings(job_bodies={"dpo": "x.y:z"})
    assert settings.job_bodies == {"dpo": "x.y:z", "merge": DEFAULT_JOB_BODIES["merge"]}


@pytest.fixture
def roots(tmp_path: Path) -> tuple[TrainerSettings, Store]:
    root = tmp_path / "models"
    (root / "base").mkdir(parents=True)
    (root / "base" / "config.json").write_text("{}")
    (root / "org" / "nested").mkdir(parents=True)
    (root / "org" / "nested" / "config.json").write_text("{}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "config.json").write_text("{}")
    (root / "link").symlink_to(tmp_path / "outside")
    settings = TrainerSettings(data_dir=tmp_path / "data", model_roots=[root])
    return settings, Store(Database(settings.db_path))


def test_a_folder_under_a_root_resolves(roots: tuple[TrainerSettings, Store]) -> None:
    settings, store = roots
    assert resolve_base_model("base", settings, store).path == str(settings.model_roots[0] / "base")
    assert resolve_base_model("org/nested", settings, store).kind == "local"
    absolute = str(settings.model_roots[0] / "base")
    assert resolve_base_model(absolute, settings, store).path == absolute


def test_a_gguf_file_under_a_root_resolves_and_one_outside_does_not(
    roots: tuple[TrainerSettings, Store], tmp_path: Path
) -> None:
    settings, store = roots
    (settings.model_roots[0] / "mine.gguf").write_bytes(b"GGUF")
    (tmp_path / "outside.gguf").write_bytes(b"GGUF")
    resolved = resolve_base_model("mine.gguf", settings, store)
    assert resolved.path == str(settings.model_roots[0] / "mine.gguf")  # the job converts it
    with pytest.raises(Unprocessable):
        resolve_base_model(str(tmp_path / "outside.gguf"), settings, store)
    with pytest.raises(Unprocessable):
        resolve_base_model("absent.gguf", settings, store)


@pytest.mark.parametrize(
    "name", ["../outside", "base/../../outside", "link", "/etc", "missing", "", "a\x00b", "org"]
)
def test_names_outside_the_roots_are_refused(
    roots: tuple[TrainerSettings, Store], name: str
) -> None:
    settings, store = roots
    with pytest.raises(Unprocessable):
        resolve_base_model(name, settings, store)


def test_hub_ids_only_when_allowed(roots: tuple[TrainerSettings, Store]) -> None:
    settings, store = roots
    with pytest.raises(Unprocessable, match="hub ids are off"):
        resolve_base_model("Qwen/Qwen2.5-32B", settings, store)
    allowed = settings.model_copy(update={"allow_hub_models": True})
    assert resolve_base_model("Qwen/Qwen2.5-32B", allowed, store).kind == "hub"
    with pytest.raises(Unprocessable):
        resolve_base_model("../etc/passwd", allowed, store)


def test_a_registered_merged_model_resolves_by_name(roots: tuple[TrainerSettings, Store]) -> None:
    settings, store = roots
    record = AdapterRecord(
        name="merged-1",
        kind="merged",
        path="/data/models/merged-1",
        base_model="base",
        created_at=utcnow(),
    )
    with store.db.transaction() as conn:
        store.insert_adapter(conn, record)
    resolved = resolve_base_model("merged-1", settings, store)
    assert (resolved.kind, resolved.path) == ("merged", "/data/models/merged-1")
