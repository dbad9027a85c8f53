"""Run under torchrun: ``<name>_layerwise`` under DDP against the whole-model DDP run of ``<name>``.

Usage: torchrun --nproc_per_node 2 tests/ddp_layerwise_worker.py OUT_JSON name[:optim_args] ...

Each rank trains on its own batches (so the average matters), with gradient accumulation 1 and 2
(``no_sync`` on all but the last micro-batch) and tiny DDP buckets (so parameters are stepped bucket
by bucket while backward still runs). Rank 0 writes, per name and accumulation, the largest
difference to the whole-model run and between the ranks. Then the same through ``OptimTrainer``
(accelerate wraps DDP), and the error a layer-wise optimizer raises on DDP without ``attach_ddp``.

Two DDP settings on top (``name/unused``, ``name/view``): ``find_unused_parameters=True`` with one extra
module only rank 0 uses and one no rank uses (whole-model DDP leaves the latter without a gradient, so its
optimizer never touches it: weight decay and momentum must not move it layer-wise either), and
``gradient_as_bucket_view=True`` (the gradients are views into DDP's buckets).
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


class WithExtras(torch.nn.Module):
    """The tiny Llama plus ``extra`` (in the loss on rank 0 only) and ``unused`` (in no rank's loss)."""

    def __init__(self) -> None:
        from optim_registry.testing import tiny_model

        super().__init__()
        self.lm = tiny_model()
        torch.manual_seed(1)
        self.extra = torch.nn.Linear(16, 16)
        self.unused = torch.nn.Linear(16, 16)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> Any:
        out = self.lm(input_ids=input_ids, labels=labels)
        if dist.get_rank() == 0:
            out.loss = out.loss + self.extra(self.lm.model.embed_tokens.weight[:4]).pow(2).mean()
        return out


def train(name: str, optim_args: str | None, ga: int, rank: int, attach: bool = True,
          setting: str = "") -> dict[str, torch.Tensor]:
    from optim_registry import create_optimizer
    from optim_registry.testing import tiny_model, training_args

    with one_process_env():
        args = training_args(name, "/tmp/unused", optim_args, gradient_accumulation_steps=ga)
    model = WithExtras() if setting == "unused" else tiny_model()
    optimizer = create_optimizer(args, model)
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.002,  # a few kB: many buckets
                                  find_unused_parameters=setting == "unused",
                                  gradient_as_bucket_view=setting == "view")
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
        for setting in ("unused", "view"):
            whole = train(name, optim_args or None, 2, rank, setting=setting)
            layerwise = train(name + "_layerwise", optim_args or None, 2, rank, setting=setting)
            start = {n: p.detach().clone() for n, p in (WithExtras() if setting == "unused" else _tiny()).named_parameters()}
            results[f"{name}_layerwise/{setting}"] = {
                "vs_whole": max((layerwise[n] - whole[n]).abs().max().item() for n in whole),
                "moved": sorted(n for n in start if not torch.equal(layerwise[n], start[n])),
                "whole_moved": sorted(n for n in start if not torch.equal(whole[n], start[n])),
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


def _tiny() -> Any:
    from optim_registry.testing import tiny_model

    return tiny_model()


def _start() -> dict[str, torch.Tensor]:
    return dict(_tiny().named_parameters())


if __name__ == "__main__":
    main()
