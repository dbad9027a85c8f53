"""A scheduler plugin: a plain function (optimizer, num_warmup_steps, num_training_steps, **kwargs)."""

from __future__ import annotations

from torch.optim.lr_scheduler import LambdaLR


def halving_schedule(optimizer, num_warmup_steps: int, num_training_steps: int, every: int = 2):
    """Linear warm-up, then the learning rate halves every `every` steps."""

    def factor(step: int) -> float:
        if step < num_warmup_steps:
            return (step + 1) / max(1, num_warmup_steps)
        return 0.5 ** ((step - num_warmup_steps) // every)

    return LambdaLR(optimizer, factor)
