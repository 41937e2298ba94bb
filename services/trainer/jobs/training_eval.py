"""Held-out pair accuracy from the DPO implicit reward, computed after training.

For a pair (x, y_w, y_l) the implicit reward margin of a policy against a reference is

    beta * ((log p(y_w|x) - log p_ref(y_w|x)) - (log p(y_l|x) - log p_ref(y_l|x)))

and the pair counts as right when it is > 0 (a tie, margin exactly 0, counts half: so the
reference scored against itself is 0.5 by construction). Log-probabilities are summed over
the completion tokens, tokenized exactly as TRL tokenizes training rows, and computed with
TRL's fused LM head (no full-vocabulary logits), with the adapter switched the way TRL
switches it for its reference: disabled (base) or the frozen `ref` copy (iterative DPO).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference

from services.trainer.jobs.training_data import PairTokens


@dataclass(frozen=True)
class PairLogps:
    chosen: torch.Tensor
    rejected: torch.Tensor


def margins(policy: PairLogps, reference: PairLogps, beta: float) -> torch.Tensor:
    return beta * ((policy.chosen - reference.chosen) - (policy.rejected - reference.rejected))


def accuracy_and_margin(
    policy: PairLogps, reference: PairLogps, beta: float
) -> tuple[float, float]:
    m = margins(policy, reference, beta)
    right = (m > 0).float() + 0.5 * (m == 0).float()
    return float(right.mean()), float(m.mean())


@contextlib.contextmanager
def adapter(model: Any, name: str | None) -> Iterator[None]:
    """`None`: adapters off (the base model); otherwise that adapter active."""
    if name is None:
        with model.disable_adapter():
            yield
        return
    previous = model.active_adapter
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter(previous)


@torch.no_grad()
def pair_logps(
    model: Any,
    pairs: Sequence[PairTokens],
    pad_token_id: int,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> PairLogps:
    """Summed completion log-probs of chosen and rejected for every pair, under `model` as
    currently switched (see `adapter`). `autocast` makes the context training ran under."""
    collate = DataCollatorForPreference(pad_token_id=pad_token_id)
    chosen: list[torch.Tensor] = []
    rejected: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(pairs), batch_size):
            examples = [
                {
                    "prompt_ids": p.prompt_ids,
                    "chosen_ids": p.chosen_ids,
                    "rejected_ids": p.rejected_ids,
                }
                for p in pairs[start : start + batch_size]
            ]
            batch = collate(examples)
            input_ids = batch["input_ids"].to(device)
            mask = batch["completion_mask"].to(device)
            labels = input_ids.masked_fill(mask == 0, -100)
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = model(
                    input_ids=input_ids,
                    attention_mask=batch["attention_mask"].to(device),
                    labels=labels,
                    fused_lm_head=True,
                    use_cache=False,
                )
            shift_mask = mask[:, 1:]
            logps = (out.log_probs[:, -shift_mask.size(1) :].float() * shift_mask).sum(dim=1)
            c, r = logps.cpu().chunk(2, dim=0)
            chosen.append(c)
            rejected.append(r)
    finally:
        model.train(was_training)
    return PairLogps(torch.cat(chosen), torch.cat(rejected))


def heldout_metrics(
    model: Any,
    pairs: Sequence[PairTokens],
    *,
    beta: float,
    pad_token_id: int,
    batch_size: int,
    device: torch.device,
    reference_adapter: str | None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> dict[str, float]:
    """`eval/pair_accuracy` and `eval/margin` of the trained adapter against its reference;
    `eval/reference_pair_accuracy` (0.5 by construction) beside them for comparison; with a
    parent adapter as reference, also both adapters against the base."""

    def run(name: str | None) -> PairLogps:
        with adapter(model, name):
            return pair_logps(model, pairs, pad_token_id, batch_size, device, autocast)

    policy = run("default")
    reference = run(reference_adapter)
    accuracy, margin = accuracy_and_margin(policy, reference, beta)
    ref_accuracy, _ = accuracy_and_margin(reference, reference, beta)
    metrics = {
        "eval/pair_accuracy": accuracy,
        "eval/margin": margin,
        "eval/reference_pair_accuracy": ref_accuracy,
        "eval/pairs": float(len(pairs)),
    }
    if reference_adapter is not None:
        base = run(None)
        metrics["eval/pair_accuracy_vs_base"], metrics["eval/margin_vs_base"] = accuracy_and_margin(
            policy, base, beta
        )
        metrics["eval/reference_pair_accuracy_vs_base"], _ = accuracy_and_margin(
            reference, base, beta
        )
    return metrics
