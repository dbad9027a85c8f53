"""Schedule-free optimizers: their own warm-up, given in steps even when TrainingArguments says a ratio.

transformers passes ``args.warmup_steps`` raw, so ``warmup_steps=0.1`` (a ratio of the run) became a
0.1-step warm-up whose first step ran at 10x the learning rate, and the Trainer's schedule warmed up
as well. Here a ratio is turned into steps with the run's length and the record's ``owns_warmup``
gives the Trainer's schedule no warm-up, so the rate warms up once, as asked.
"""

from __future__ import annotations

from typing import Any

from ...context import BuildContext


def warmup_steps(ctx: BuildContext) -> int:
    """``args.warmup_steps`` in optimizer steps (a value below 1 is a ratio of the whole run)."""
    raw = float(getattr(ctx.args, "warmup_steps", 0) or 0)
    if raw < 0:
        raise ValueError(f"warmup_steps={raw} for optim={ctx.spec.name!r} must be >= 0")
    if raw == 0 or raw >= 1:
        return int(raw)
    total = ctx.num_training_steps
    if total is None:
        raise ValueError(
            f"warmup_steps={raw} for optim={ctx.spec.name!r} is a ratio of the run, whose length is unknown "
            "here: set max_steps, build through OptimTrainer, or give warmup_steps as a number of steps (>= 1)"
        )
    return int(ctx.args.get_warmup_steps(total))


def schedule_free(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """AdamW / SGD schedule-free with the warm-up converted to steps (RAdam takes none: no builder)."""
    kwargs = dict(ctx.kwargs)  # momentum in (0, 1): the option's range, checked by the parser
    kwargs["warmup_steps"] = warmup_steps(ctx)
    return ctx.target(), ctx.with_groups(kwargs)
