"""Builders of the torch family (torch.optim and transformers' Adafactor) the generic path cannot build."""

from __future__ import annotations

from typing import Any

from ...context import BuildContext


def adafactor(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """transformers' Adafactor; with ``relative_step`` it must not get a learning rate."""
    kwargs = dict(ctx.kwargs)  # warmup_init without relative_step: refused by the record's checks
    if kwargs.get("relative_step"):
        # Adafactor computes its own step size; a manual lr is an error inside it.
        kwargs["lr"] = None
    return ctx.target(), ctx.with_groups(kwargs)
