"""Run under torchrun: ``<name>_layerwise`` under DDP against the whole-model DDP run of ``<name>``.

Usage: torchrun --nproc_per_node 2 tests/ddp_layerwise_worker.py OUT_JSON name[:optim_args] ...

Each rank trains on its own batches (so the average matters), with gradient accumulation 1 and 2
(``no_sync`` on all but the last micro-batch) and tiny DDP buckets (so parameters are stepped bucket
by bucket while backward still runs). Rank 0 writes, per name and accumulation, the largest
difference to the whole-model run and between the ranks. Then the same through ``OptimTrainer``
(accelerate wraps DDP), and the error a layer-wise optimizer raises on DDP without ``attach_ddp``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import torch
import torch.distributed as dist

# Run as a script by torchrun: this folder is on sys.path.
from fsdp2_worker import one_process_env
from torch.nn.parallel import DistributedDataParallel

STEPS = 3


def batches(rank: int, ga: int) -> list[dict[str, torch.Tensor]]:
    from optim_registry.testing import TokenDataset

    data = TokenDataset().data
    out = []
    for step in range(STEPS * ga):
        rows = data[(step * 2 + rank) * 2 : (step * 2 + rank) * 2 + 2]
        out.append({"input_ids": rows, "labels": rows})
    return out


def train(name: str, optim_args: str | None, ga: int, rank: int, attach: bool = True) -> dict[str, torch.Tensor]:
    from optim_registry import create_optimizer
    from optim_registry.testing import tiny_model, training_args

    with one_process_env():
        args = training_args(name, "/tmp/unused", optim_args, gradient_accumulation_steps=ga)
    model = tiny_model()
    optimizer = create_optimizer(args, model)
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.002)  # a few kB: many buckets
    if attach and hasattr(optimizer, "attach_ddp"):
        optimizer.attach_ddp(ddp)
    micro = batches(rank, ga)
    for step in range(STEPS):
        for k in range(ga):
            window = ddp.no_sync() if k < ga - 1 else contextlib.nullcontext()
            with window:
                (ddp(**micro[step * ga + k]).loss / ga).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def rank_gap(params: dict[str, torch.Tensor]) -> float:
    flat = torch.cat([p.reshape(-1) for p in params.values()])
    other = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(other, flat)
    return max((o - flat).abs().max().item() for o in other)


def trainer_run(name: str, rank: int) -> dict[str, torch.Tensor]:
    from optim_registry import OptimTrainer
    from optim_registry.testing import TokenDataset, tiny_model, training_args

    args = training_args(name, f"/tmp/ddp_layerwise_{name}_{rank}", max_steps=STEPS, ddp_backend="gloo",
                         per_device_train_batch_size=2, gradient_accumulation_steps=2, max_grad_norm=0.0,
                         ddp_bucket_cap_mb=1)
    trainer = OptimTrainer(model=tiny_model(), args=args, train_dataset=TokenDataset())
    trainer.train()
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def main() -> None:
    torch.set_num_threads(1)
    out, specs = sys.argv[1], sys.argv[2:]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results: dict[str, Any] = {}
    for item in specs:
        name, _, optim_args = item.partition(":")
        for ga in (1, 2):
            whole = train(name, optim_args or None, ga, rank)
            layerwise = train(name + "_layerwise", optim_args or None, ga, rank)
            results[f"{name}_layerwise/ga{ga}"] = {
                "vs_whole": max((layerwise[n] - whole[n]).abs().max().item() for n in whole),
                "moved": sum(not torch.equal(layerwise[n], w) for n, w in _start().items()),
                "params": len(whole),
                "ranks": rank_gap(layerwise),
            }
    whole, layerwise = trainer_run("adamw_torch", rank), trainer_run("adamw_torch_layerwise", rank)
    results["trainer/adamw_torch_layerwise/ga2"] = {
        "vs_whole": max((layerwise[n] - whole[n]).abs().max().item() for n in whole),
        "ranks": rank_gap(layerwise),
        "moved": sum(not torch.equal(layerwise[n], w) for n, w in _start().items()),
        "params": len(whole),
    }
    try:
        train("adamw_torch_layerwise", None, 1, rank, attach=False)
        results["unattached"] = {"error": None}
    except RuntimeError as exc:
        results["unattached"] = {"error": str(exc)}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


def _start() -> dict[str, torch.Tensor]:
    from optim_registry.testing import tiny_model

    return dict(tiny_model().named_parameters())


if __name__ == "__main__":
    main()
