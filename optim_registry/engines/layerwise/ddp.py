"""Layer-wise stepping under DDP: each parameter stepped as soon as its gradient bucket is averaged.

A parameter's post-accumulate-grad hook fires before DDP has all-reduced its gradient, so stepping
there would let the processes drift apart. DDP's communication hook is where the average becomes
known: this one averages the bucket exactly as DDP's default hook does (divide by the world size,
all-reduce) and, in the future's callback, steps every parameter of the bucket with its averaged
gradient, before backward returns. DDP skips the hook inside ``no_sync()``, so gradient accumulation
steps on the last micro-batch, with the accumulated average, as the whole-model run does.

With ``find_unused_parameters=True`` a bucket also holds parameters that no process used: DDP leaves
their gradient unset, so the whole-model optimizer never touches them, while their slot in the bucket
is zero and stepping it would still apply weight decay and momentum. Each process therefore marks the
parameters that receive a gradient (a tensor hook, which runs before DDP sees the gradient), the marks
of a bucket are summed across processes beside its average, and only parameters some process used are
stepped. With ``gradient_as_bucket_view=True`` the bucket's gradients are views into its buffer: the
step uses a copy, and DDP points the gradient back at its bucket view afterwards, as it expects.
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
    used: set[int] | None = None
    if getattr(ddp_model, "find_unused_parameters", False):
        used = set()
        for param in ddp_model.parameters():
            if param.requires_grad and id(param) in ids:
                param.register_hook(_marker(used, id(param)))

    # No annotations: DDP inspects them and this module's are strings (postponed evaluation).
    def hook(state, bucket):  # noqa: ANN001, ANN202
        buffer = bucket.buffer()
        buffer.div_(group.size())
        params, grads = bucket.parameters(), bucket.gradients()
        averaged_fut = dist.all_reduce(buffer, group=group, async_op=True).get_future()
        if used is None:
            return averaged_fut.then(lambda fut: _step_bucket(optimizer, params, grads, None, fut.value()[0]))
        # How many processes gave each parameter a gradient since the last step (accumulation included).
        marks = torch.tensor([float(id(p) in used) for p in params], device=buffer.device)
        used.difference_update(id(p) for p in params)
        marks_fut = dist.all_reduce(marks, group=group, async_op=True).get_future()

        def step_used(futs: torch.futures.Future[Any]) -> torch.Tensor:
            averaged, counts = (f.value()[0] for f in futs.value())
            return _step_bucket(optimizer, params, grads, counts, averaged)

        return torch.futures.collect_all([averaged_fut, marks_fut]).then(step_used)

    ddp_model.register_comm_hook(None, hook)


def _marker(used: set[int], key: int) -> Any:
    def mark(grad: torch.Tensor) -> None:
        used.add(key)

    return mark


def _step_bucket(optimizer: Any, params: list[torch.Tensor], grads: list[torch.Tensor],
                 counts: torch.Tensor | None, averaged: torch.Tensor) -> torch.Tensor:
    """Step every parameter of the bucket that some process used (all of them when unmarked)."""
    # gradients() are views into the bucket buffer, averaged in place by the all-reduce.
    with torch.no_grad():
        for k, (param, grad) in enumerate(zip(params, grads, strict=True)):
            if counts is None or counts[k] > 0:
                optimizer._step_averaged(param, grad.clone())
    return averaged
