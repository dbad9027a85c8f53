"""What a Trainer does with a layer-wise optimizer: when it may step, its backward, its gradient norm, DDP.

``OptimRegistryMixin`` calls these with the optimizer it unwrapped from accelerate's wrapper; each is a no-op for
any other optimizer. A layer-wise optimizer steps inside backward, so the stock training loop's seams are met
here: the hooks step only inside that Trainer's own training steps and on the last micro-batch
(`gate_to_trainer`), exact global clipping runs two backward passes through ``accelerator.backward``
(`backward_through`), the gradient norm is the one the optimizer measured (`grad_norm`: no ``.grad`` is left to
measure), and under DDP the stepping moves into DDP's communication hook once accelerate has wrapped the model
(`attach_ddp`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

from .engine import LayerwiseOptimizer


def gate_to_trainer(optimizer: Any, trainer: Any) -> None:
    """Let ``optimizer`` step only inside ``trainer``'s own training steps, on the last micro-batch of each.

    A bare ``backward()`` afterwards, or another Trainer on the same model, must not move the weights; under
    gradient accumulation the gradients accumulate until the accelerator syncs them.
    """
    if not isinstance(optimizer, LayerwiseOptimizer):
        return
    owner = weakref.ref(trainer)  # the optimizer must not keep its Trainer alive

    def should_step() -> bool:
        current = owner()
        return current is not None and current._registry_in_step and current.accelerator.sync_gradients

    optimizer.should_step = should_step


@contextlib.contextmanager
def backward_through(optimizer: Any, accelerator: Any) -> Iterator[None]:
    """For one training step, send ``accelerator.backward`` through a globally clipping layer-wise optimizer.

    Exact global clipping needs two backward passes (measure, then step), and the only seam between the stock
    training step's loss and its backward is ``accelerator.backward``; it is wrapped for the duration and the
    accelerator's own method shows through again afterwards.
    """
    if not (isinstance(optimizer, LayerwiseOptimizer) and optimizer.clips_globally):
        yield
        return
    accelerator_backward = accelerator.backward

    def backward(loss: Any, **kwargs: Any) -> None:
        optimizer.backward(loss, accelerator_backward, **kwargs)

    accelerator.backward = backward
    try:
        yield
    finally:
        vars(accelerator).pop("backward", None)


def grad_norm(optimizer: Any) -> Any | None:
    """The gradient norm a layer-wise optimizer measured in backward (its gradients are gone by the time the Trainer
    would clip or measure them); ``None`` for any other optimizer."""
    return optimizer.grad_norm() if isinstance(optimizer, LayerwiseOptimizer) else None


def attach_ddp(optimizer: Any, model: Any) -> bool:
    """If ``model`` is DDP-wrapped and the optimizer layer-wise, step it from DDP's communication hook.

    accelerate wraps the model in DDP after the optimizer exists: this runs before the first backward. Returns
    whether the optimizer is now attached; a no-op for every other combination.
    """
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(optimizer, LayerwiseOptimizer) or not isinstance(model, DistributedDataParallel):
        return False
    optimizer.attach_ddp(model)
    return True
