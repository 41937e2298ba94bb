"""TRL's DPOTrainer with packed micro-batches (packing.py): its tokenization, optimiser,
schedule, logging and PEFT handling, with this module's batches, log-prob step and reference.

- Batches: `packed_batches` fills each micro-batch with pairs in a seeded random order up
  to a token budget and a pair count (packing_plan.packed_batch_limits). Membership is fixed
  for the job; each epoch reorders the batches, the largest first (a memory problem shows on
  step one). Fixed, because the Trainer reads the epoch's length once, before the first.
- Reference: with `precompute_ref_log_probs` a pre-pass over the very batches training will
  run (`precompute_reference`), adapter disabled; otherwise a no-grad forward in every step.
  Same rows, same shapes and kernels as the policy's forward, so at step 1, where policy
  and reference are one model, the loss is ln 2: exactly in fp32 on CPU, within 6e-5 in bf16
  on an H200 (0.693095 to 0.693169 in eight runs with flex attention, which compiles its
  no-grad and its training forward separately; 0.693102 to 0.693156 in nine with the
  varlen kernel, 2026-12-03/04, bf16 sums in another order), not the nat-sized offsets of
  mismatched kernels (dpo_trainer.apply_liger_before_prepass).
- Loss: TRL 1.16's `sigmoid` (and `sft`, for RPO) exactly: -logsigmoid(beta * margin)
  averaged over the micro-batch's pairs; the same metric names TRL logs.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from services.trainer.jobs.packing import (
    CHOSEN,
    FLEX_BLOCK,
    PackedLogps,
    PairIds,
    attention_mask,
    pack,
    packed_logps,
    takes_block_mask,
)
from services.trainer.jobs.packing_plan import PACKED_VARLEN_ATTENTION, PackingChoice


class PrepassTiming:
    """Seconds of the reference pre-pass, its first micro-batch apart: that one compiles the
    kernels (flex attention, Liger's), the others show the steady rate."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last = self.started
        self.first_seconds = 0.0
        self.batches = 0
        self.positions = 0

    def add(self, positions: int) -> None:
        now = time.monotonic()
        if self.batches == 0:
            self.first_seconds = now - self.started
        self.batches += 1
        self.positions += positions
        self.last = now

    @property
    def seconds(self) -> float:
        return self.last - self.started

    def describe(self) -> str:
        rest = self.seconds - self.first_seconds
        return (
            f"reference pre-pass: {self.batches} micro-batches, {self.positions:,} positions "
            f"in {self.seconds:.1f} s (the first {self.first_seconds:.1f} s, the other "
            f"{self.batches - 1} {rest:.1f} s)"
        )


def packed_batches(
    lengths: Sequence[int], token_budget: int | None, max_pairs: int, seed: int
) -> list[list[int]]:
    """Row indices in micro-batches: a seeded shuffle cut greedily where the next pair would
    pass `token_budget` packed positions or `max_pairs` pairs. A pair over the budget alone
    gets a micro-batch of its own (the plan sizes the budget for the longest pair)."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index in order:
        over_budget = token_budget is not None and used + lengths[index] > token_budget
        if current and (len(current) == max_pairs or over_budget):
            batches.append(current)
            current, used = [], 0
        current.append(index)
        used += lengths[index]
    if current:
        batches.append(current)
    return batches


class PackedBatchSampler(Sampler[list[int]]):
    """The fixed micro-batches, in a new seeded order each epoch, the largest first."""

    def __init__(self, batches: list[list[int]], lengths: Sequence[int], seed: int) -> None:
        self.batches = batches
        self.sizes = [sum(lengths[i] for i in batch) for batch in batches]
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        self.epoch += 1
        if order:
            largest = max(range(len(order)), key=lambda i: self.sizes[order[i]])
            order[0], order[largest] = order[largest], order[0]
        return iter(self.batches[i] for i in order)


class PackedCollator:
    """Dataset rows (TRL's `prompt_ids`, `chosen_ids`, `rejected_ids`) -> one packed row.
    `multiple_of`: FLEX_BLOCK for flex attention's tiles, 1 otherwise; `varlen`: with the
    row's variable-length layout (built here, on the host, so no step waits to read it)."""

    def __init__(self, pad_token_id: int, multiple_of: int = 1, varlen: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.multiple_of = multiple_of
        self.varlen = varlen

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = [PairIds(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in rows]
        batch = pack(pairs, self.pad_token_id, self.multiple_of, self.varlen)
        batch["pair_index"] = torch.tensor([int(r["row_index"]) for r in rows])
        return batch


def row_lengths(dataset: Any) -> list[int]:
    """Packed positions of every row of a TRL-tokenized dataset."""
    return [
        PairIds(p, c, r).packed_length
        for p, c, r in zip(
            dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True
        )
    ]


def sigmoid_dpo_losses(
    policy: PackedLogps,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    segment: torch.Tensor,
    *,
    beta: float,
    loss_types: Sequence[str],
    loss_weights: Sequence[float],
) -> torch.Tensor:
    """TRL 1.16's loss for `sigmoid` and `sft` with its defaults (reverse KL, no length
    weighting): each type's per-pair loss averaged over the batch, weighted, summed."""
    margin = (policy.chosen - ref_chosen) - (policy.rejected - ref_rejected)
    loss = policy.chosen.new_zeros(())
    for kind, weight in zip(loss_types, loss_weights, strict=True):
        if kind == "sigmoid":
            loss = loss + (-F.logsigmoid(beta * margin)).mean() * weight
        elif kind == "sft":
            chosen_tokens = policy.labelled & (segment == CHOSEN)
            loss = loss + (-policy.per_token[chosen_tokens].float().mean()) * weight
        else:  # packing_plan.choose_packing keeps other losses on TRL's own path
            raise ValueError(f"the packed step has no {kind!r} loss")
    return loss


def make_packed_trainer_class() -> Any:
    from trl import DPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    class PackedDPOTrainer(DPOTrainer):
        """DPOTrainer over packed micro-batches (see the module's docstring)."""

        def __init__(self, *args: Any, packing: PackingChoice, **kwargs: Any) -> None:
            self.packing = packing
            self.reference: tuple[torch.Tensor, torch.Tensor] | None = None
            self.prepass_timing: PrepassTiming | None = None
            self._batches: list[list[int]] | None = None
            super().__init__(*args, **kwargs)
            data: Any = self.train_dataset
            self.train_dataset = data.add_column("row_index", list(range(len(data))))

        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            # TRL's padded pre-pass; the packed one is `precompute_reference`.
            return dataset

        def batches(self) -> list[list[int]]:
            if self._batches is None:
                max_pairs = self.packing.max_pairs or self.args.per_device_train_batch_size
                self._batches = packed_batches(
                    row_lengths(self.train_dataset),
                    self.packing.token_budget,
                    max_pairs,
                    self.args.seed,
                )
            return self._batches

        def _collator(self) -> PackedCollator:
            attention = self.packing.attn_implementation
            multiple = FLEX_BLOCK if takes_block_mask(attention) else 1
            tokenizer: Any = self.processing_class
            varlen = attention == PACKED_VARLEN_ATTENTION
            return PackedCollator(tokenizer.pad_token_id, multiple, varlen)

        def get_train_dataloader(self) -> Any:
            lengths = row_lengths(self.train_dataset)
            data: Any = self.train_dataset
            loader = DataLoader(
                data,
                batch_sampler=PackedBatchSampler(self.batches(), lengths, self.args.seed),
                collate_fn=self._collator(),
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
            )
            return self.accelerator.prepare(loader)

        def _reference_context(self) -> Any:
            model: Any = self.model
            unwrapped = self.accelerator.unwrap_model(model)
            name = "ref" if "ref" in unwrapped.peft_config else None
            checkpointing: Any = self.args.gradient_checkpointing_kwargs
            stack = contextlib.ExitStack()
            stack.enter_context(torch.no_grad())
            stack.enter_context(disable_gradient_checkpointing(model, checkpointing))
            stack.enter_context(use_adapter(unwrapped, adapter_name=name))
            return stack

        def _mask(self, batch: dict[str, Any]) -> Any:
            dtype = torch.bfloat16 if self.args.bf16 else torch.float32
            return attention_mask(batch, self.packing.attn_implementation or "sdpa", dtype)

        @torch.no_grad()
        def precompute_reference(self) -> None:
            """Reference log-probs of every row, over the training batches themselves. In
            train mode like the steps (no dropout is active with the adapter off), so the
            kernels, compiled or not, are the ones training runs."""
            data: Any = self.train_dataset
            model: Any = self.model
            chosen = torch.zeros(len(data), dtype=torch.float32)
            rejected = torch.zeros(len(data), dtype=torch.float32)
            collate = self._collator()
            was_training = model.training
            model.train()
            timing = PrepassTiming()
            try:
                with self._reference_context(), self.accelerator.autocast():
                    for members in self.batches():
                        batch = self._prepare_inputs(collate([data[i] for i in members]))
                        logps = packed_logps(model, batch, self._mask(batch))
                        index = batch["pair_index"].cpu()
                        chosen[index] = logps.chosen.cpu()
                        # .cpu() waits for the device: the batch's time is its own.
                        rejected[index] = logps.rejected.cpu()
                        timing.add(batch["input_ids"].numel())
            finally:
                model.train(was_training)
            self.reference = (chosen, rejected)
            self.prepass_timing = timing

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            trained: Any = self.model
            mode = "train" if trained.training else "eval"
            mask = self._mask(inputs)
            policy = packed_logps(model, inputs, mask)
            if self.reference is not None:
                index = inputs["pair_index"].cpu()
                device = policy.chosen.device
                ref_chosen = self.reference[0][index].to(device)
                ref_rejected = self.reference[1][index].to(device)
            else:
                with self._reference_context():
                    ref = packed_logps(model, inputs, mask)
                ref_chosen, ref_rejected = ref.chosen, ref.rejected
            loss = sigmoid_dpo_losses(
                policy,
                ref_chosen,
                ref_rejected,
                inputs["segment"],
                beta=self.beta,
                loss_types=self.loss_types,
                loss_weights=self.loss_weights,
            )
            self._record(mode, policy, ref_chosen, ref_rejected, int(inputs["num_tokens"]))
            return (loss, None) if return_outputs else loss

        def _record(
            self,
            mode: str,
            policy: PackedLogps,
            ref_chosen: torch.Tensor,
            ref_rejected: torch.Tensor,
            tokens: int,
        ) -> None:
            """TRL's metric names and definitions (rewards are beta x the log-ratio)."""
            chosen = self.beta * (policy.chosen.detach() - ref_chosen)
            rejected = self.beta * (policy.rejected.detach() - ref_rejected)
            metrics = self._metrics[mode]
            if mode == "train":
                # TRL counts the tokens of its two padded rows' real positions: the same
                # count here, so tokens/s compares with TRL's (the packed row is shorter).
                self._total_train_tokens += tokens
            metrics["num_tokens"] = [self._total_train_tokens]
            metrics["rewards/chosen"].append(chosen.mean().item())
            metrics["rewards/rejected"].append(rejected.mean().item())
            metrics["rewards/accuracies"].append((chosen > rejected).float().mean().item())
            metrics["rewards/margins"].append((chosen - rejected).mean().item())
            metrics["logps/chosen"].append(policy.chosen.detach().mean().item())
            metrics["logps/rejected"].append(policy.rejected.detach().mean().item())

    return PackedDPOTrainer
