"""One rank of the FSDP2 adapter-gathering check (tests/integration/test_distributed_dpo.py).

accelerate 1.15 runs CPU ranks as DDP, so the job path cannot shard on CPU; torch's own
`fully_shard` can (gloo). This shards the tiny model with LoRA the way accelerate does on
GPUs (one unit per decoder layer, then the root), takes one optimiser step, and runs the
job's gathering and saving code:

    torchrun --nproc_per_node 2 -m tests.integration.fsdp_worker <tiny-model> <out-dir>

Writes `<out>/adapter/` (rank 0, through dpo.py's `_save_adapter`) and `<out>/shard-<rank>.pt`
(each rank's local piece of every LoRA tensor, to compare with what was saved).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(model_path: str, out: Path) -> None:
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.trainer.distributed import gather_adapter_state
    from services.trainer.jobs.dpo import _save_adapter

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same LoRA initialisation on every rank
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(model, lora)
    for layer in peft_model.get_submodule("base_model.model.model.layers").children():
        fully_shard(layer)
    fully_shard(peft_model)

    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(1 + rank)  # each rank its own batch, as under data parallelism
    ids = torch.randint(0, peft_model.config.vocab_size, (2, 16))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()

    out.mkdir(parents=True, exist_ok=True)
    shards = {
        name: param.to_local().detach().clone()
        for name, param in peft_model.named_parameters()
        if "lora_" in name and isinstance(param, DTensor)
    }
    torch.save(shards, out / f"shard-{rank}.pt")
    state = gather_adapter_state(peft_model, "default", keep=rank == 0)
    if rank == 0:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        _save_adapter(peft_model, tokenizer, out / "work", out / "adapter", state)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
