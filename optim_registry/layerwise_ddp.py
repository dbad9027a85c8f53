"""Layer-wise stepping under DDP: each parameter stepped as soon as its gradient bucket is averaged.

A parameter's post-accumulate-grad hook fires before DDP has all-reduced its gradient, so stepping
there would let the processes drift apart. DDP's communication hook is where the average becomes
known: this one averages the bucket exactly as DDP's default hook does (divide by the world size,
all-reduce) and, in the future's callback, steps every parameter of the bucket with its averaged
gradient, before backward returns. DDP skips the hook inside ``no_sync()``, so gradient accumulation
steps on the last micro-batch, with the accumulated average, as the whole-model run does.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["register_layerwise_comm_hook"]


def register_layerwise_comm_hook(ddp_model: Any, optimizer: Any) -> None:
    """Install the hook on ``ddp_model`` (a ``DistributedDataParallel``) for ``optimizer`` (layer-wise)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(ddp_model, DistributedDataParallel):
        raise ValueError(
            f"attach_ddp needs the DistributedDataParallel wrapper of the model, got {type(ddp_model).__name__}"
        )
    group = ddp_model.process_group if ddp_model.process_group is not None else dist.group.WORLD
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    if not any(id(p) in ids for p in ddp_model.parameters()):
        raise ValueError("attach_ddp: the optimizer steps none of this DDP model's parameters")

    # No annotations: DDP inspects them and this module's are strings (postponed evaluation).
    def hook(state, bucket):  # noqa: ANN001, ANN202
        buffer = bucket.buffer()
        buffer.div_(group.size())
        params, grads = bucket.parameters(), bucket.gradients()

        def step_bucket(fut: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
            averaged = fut.value()[0]
            # gradients() are views into the bucket buffer, averaged in place by the all-reduce.
            with torch.no_grad():
                for param, grad in zip(params, grads, strict=True):
                    optimizer._step_averaged(param, grad.clone())
            return averaged

        return dist.all_reduce(buffer, group=group, async_op=True).get_future().then(step_bucket)

    ddp_model.register_comm_hook(None, hook)
