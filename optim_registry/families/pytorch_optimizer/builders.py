"""Builders for the ``po_*`` names the generic path cannot build: Adam-mini, Ranger21, A2Grad."""

from __future__ import annotations

from typing import Any

from ...context import BuildContext


def adam_mini(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """Adam-mini is built with the model; its block layout (width, heads, kv groups) comes from ``model.config``."""
    model = ctx.require_model()
    config = getattr(model, "config", None)
    kwargs = dict(ctx.kwargs)
    for key, attr in (("num_embeds", "hidden_size"), ("num_heads", "num_attention_heads"),
                      ("num_query_groups", "num_key_value_heads")):
        value = getattr(config, attr, None)
        if key not in ctx.given and value is not None:
            kwargs[key] = int(value)
    return ctx.target(), {**kwargs, "model": model}


def ranger21(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """Ranger21 schedules warm-up and warm-down itself over ``num_iterations``: the run's optimizer steps."""
    kwargs = dict(ctx.kwargs)
    if kwargs.get("num_iterations") is None:
        steps = ctx.num_training_steps
        if steps is None:
            raise ValueError(
                f"optim={ctx.spec.name!r} needs the run's length: set max_steps in TrainingArguments, train through "
                "the Trainer (it knows the steps), or pass optim_args='num_iterations=N'"
            )
        kwargs["num_iterations"] = int(steps)
    return ctx.target(), ctx.with_groups(kwargs)


def lr_in_groups(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """A2Grad sets its own step sizes and keeps no ``lr``; the Trainer's scheduler and logs read one per group."""
    kwargs = dict(ctx.kwargs)
    if ctx.groups is not None:
        # A group's own rate (set by optim_groups rules) wins over the shared one.
        kwargs["params"] = [{"lr": kwargs["lr"], **group} for group in ctx.groups]
    return ctx.target(), kwargs
