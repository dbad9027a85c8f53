"""Builders for records the generic path cannot build: each takes a BuildContext, returns (cls, kwargs)."""

from __future__ import annotations

from typing import Any

from .build import BuildContext


def _with_groups(ctx: BuildContext, kwargs: dict[str, Any]) -> dict[str, Any]:
    if ctx.groups is not None and (ctx.spec.target_modules or "weight_decay" in ctx.given):
        kwargs["params"] = ctx.groups
    return kwargs


def adafactor(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """transformers' Adafactor; with ``relative_step`` it must not get a learning rate."""
    kwargs = dict(ctx.kwargs)
    if kwargs.get("warmup_init") and not kwargs.get("relative_step"):
        raise ValueError(
            "optim_args warmup_init=true for optim='adafactor' needs relative_step=true as well"
        )
    if kwargs.get("relative_step"):
        # Adafactor computes its own step size; a manual lr is an error inside it.
        kwargs["lr"] = None
    return ctx.target(), _with_groups(ctx, kwargs)
