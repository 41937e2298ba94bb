"""The training benchmark (bench/train_throughput.py) runs end to end on CPU with --smoke,
measures what it says it measures, and invents nothing without an accelerator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.train_data import (
    SHAPES,
    SMOKE_PROFILE,
    LengthProfile,
    make_pairs,
    word_tokens,
    write_model_dir,
)
from bench.train_throughput import NO_ACCELERATOR, FlopModel, main


def test_tokenizer_turns_pair_text_back_into_the_drawn_ids(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from services.trainer.jobs.training_data import tokenize_pair

    shape = SHAPES["tiny"]
    write_model_dir(shape, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    words = word_tokens(shape.vocab_size)
    for pair in make_pairs(5, shape.vocab_size, SMOKE_PROFILE, seed=1):
        row = pair.row(words)
        tokens = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"])
        eos = tokenizer.eos_token_id
        assert tokens.prompt_ids == pair.prompt
        assert tokens.chosen_ids == [*pair.chosen, eos]
        assert tokens.rejected_ids == [*pair.rejected, eos]
        assert tokens.tokens == pair.tokens


def test_pair_lengths_stay_in_the_issue_ranges() -> None:
    profile = LengthProfile()
    pairs = make_pairs(900, SHAPES["7b"].vocab_size, profile, seed=0)
    assert all(50 <= len(p.prompt) <= 400 for p in pairs)
    assert all(20 <= len(p.chosen) <= 500 and 20 <= len(p.rejected) <= 500 for p in pairs)
    assert len({len(p.prompt) for p in pairs}) > 100  # lengths vary
    assert make_pairs(3, 1000, profile, seed=0) == make_pairs(3, 1000, profile, seed=0)


def test_flop_model_counts_the_decoder_weights_of_the_real_model() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    shape = SHAPES["7b"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape.config())
    decoder = sum(
        p.numel()
        for name, p in model.named_parameters()
        if "embed_tokens" not in name and "lm_head" not in name
    )
    flops = FlopModel.of(shape, r=64)
    assert flops.decoder == decoder
    assert flops.head == model.lm_head.weight.numel()


def test_without_an_accelerator_it_says_so_and_prints_no_figure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == NO_ACCELERATOR
    assert not (tmp_path / "train_throughput.json").exists()


@pytest.mark.slow
def test_smoke_run_measures_both_trainers_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    work = tmp_path / "work"
    # Caches an earlier invocation left in the same --work are not handed to this one.
    (work / "tiny" / "compile-cache" / "stale").mkdir(parents=True)
    runs = "plain,project,project-warm"
    assert main(["--smoke", "--runs", runs, "--out", str(out), "--work", str(work)]) == 0
    report = json.loads((out / "train_throughput.json").read_text())
    shape = report["shapes"]["tiny"]
    for name in ("plain", "project", "project-warm"):
        run = shape["runs"][name]
        assert "error" not in run, run.get("error")
        assert run["tokens_per_second"] > 0
        assert run["curve"], f"{name} logged no loss"
        assert run["padding"]["train"]["tokens"] == shape["tokens"]
        # Both trainers' adapters scored on the same 8 held-out pairs by the job's scorer.
        assert run["heldout"]["eval/pairs"] == 8
        assert 0.0 <= run["heldout"]["eval/pair_accuracy"] <= 1.0
        assert run["heldout"]["eval/reference_pair_accuracy"] == 0.5
    assert shape["runs"]["plain"]["config"]["gradient_checkpointing"] is True
    assert shape["speedup"] > 0
    assert shape["speedup_warm"] > 0
    markdown = (out / "train_throughput.md").read_text()
    assert "Speed-up project / plain" in markdown
    assert "Held-out pair accuracy (8 pairs" in markdown
    # Every run compiled into caches of its own; the warm one into the project run's.
    caches = sorted(p.name for p in (work / "tiny" / "compile-cache").iterdir())
    assert caches == ["plain", "project"]


def test_a_stopped_plain_run_is_extrapolated_by_its_later_steps_tokens() -> None:
    from bench.train_report import extrapolated_epoch

    # 10 s to the end of step 1 (100 tokens); 20 s more for the next 400 tokens: 0.05 s a
    # token, so the epoch's other 1,900 tokens take 95 s.
    result = {
        "wall_seconds": 30.0,
        "prefix": {"steps": 5, "tokens": 500, "step1_tokens": 100, "to_step1_seconds": 10.0},
    }
    assert extrapolated_epoch(result, epoch_tokens=2000) == pytest.approx(105.0)
    # Stopped at the epoch's end it is the measured time.
    assert extrapolated_epoch(result, epoch_tokens=500) == pytest.approx(30.0)


@pytest.mark.slow
def test_plain_steps_stops_plain_trl_and_reports_its_extrapolated_epoch(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--smoke", "--runs", "plain", "--plain-steps", "2", "--out", str(out)]
    assert main([*argv, "--work", str(tmp_path / "work")]) == 0
    shape = json.loads((out / "train_throughput.json").read_text())["shapes"]["tiny"]
    run = shape["runs"]["plain"]
    assert "error" not in run, run.get("error")
    assert run["prefix"]["steps"] == 2
    assert len(run["curve"]) == 2
    # Two batches of 4 of the 24 pairs: fewer tokens than the epoch's, more than one step's.
    assert run["prefix"]["step1_tokens"] < run["prefix"]["tokens"] < shape["tokens"]
    assert run["extrapolated"] is True
    assert run["wall_seconds"] > run["measured_wall_seconds"]
    assert run["tokens_per_second"] == pytest.approx(shape["tokens"] / run["wall_seconds"])
    assert "extrapolated from 2 steps" in (out / "train_throughput.md").read_text()


@pytest.mark.parametrize("steps", ["0", "1"])
def test_plain_steps_leave_a_step_after_the_first(
    steps: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--smoke", "--plain-steps", steps])
    assert stopped.value.code == 2
    assert f"must be 2 or more (step 1 and a later one), got {steps}" in capsys.readouterr().err


def test_a_run_that_finished_is_on_disk_when_a_later_one_is_cut_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import bench.train_throughput as throughput

    def spawn(kind: str, *args: object) -> dict[str, object]:
        if kind == "project":  # the device call's time limit strikes here
            raise KeyboardInterrupt
        return {"run": kind, "wall_seconds": 2.0, "curve": [{"step": 1, "loss": 0.69}]}

    monkeypatch.setattr(throughput, "_spawn", spawn)
    out = tmp_path / "out"
    argv = ["--smoke", "--runs", "plain,project", "--out", str(out), "--work", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    shape = json.loads((out / "train_throughput.json").read_text())["shapes"]["tiny"]
    assert list(shape["runs"]) == ["plain"]
    assert shape["runs"]["plain"]["tokens_per_second"] == pytest.approx(shape["tokens"] / 2.0)
    assert "| plain | 2.0 " in (out / "train_throughput.md").read_text()
