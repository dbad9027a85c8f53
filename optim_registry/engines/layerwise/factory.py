"""The factory the stock Trainer calls for a ``_layerwise`` name: any record's ``(optimizer class, kwargs)`` made
layer-wise, from the arguments' plan.

What the arguments ask of clipping was decided with their plan (``plan.check_layerwise_clipping``); here it is
handed to the engine (``engine.LayerwiseOptimizer``), with the record's post-construction hook for each inner
optimizer.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ... import deps
from ...plan import clipping_ways
from ...spec import is_factory
from . import twins
from .engine import LayerwiseOptimizer

if TYPE_CHECKING:
    from ...context import BuildContext


class LayerwiseFactory:
    """Zero-argument callable returning ``build(model, **kwargs)``, as transformers calls factories."""

    def __call__(self) -> Any:
        return build_layerwise

    def __repr__(self) -> str:
        return "LayerwiseFactory"


def build_layerwise(
    model: Any,
    *,
    params: list[dict[str, Any]],
    inner: type,
    inner_kwargs: dict[str, Any],
    clip_per_param: float | None = None,
    max_grad_norm: float | None = None,
    unapplied_max_grad_norm: float | None = None,
    name: str = "layerwise",
    has_global_clip: bool = True,
    inner_adapt: str | None = None,
) -> Any:
    adapt = deps.import_object(inner_adapt) if isinstance(inner_adapt, str) else inner_adapt

    def make(groups: list[dict[str, Any]]) -> Any:
        given = [g.get("lr") for g in groups]
        optimizer = inner(groups, **inner_kwargs)
        if adapt is not None:
            adapt(optimizer)
            for group, lr in zip(optimizer.param_groups, given, strict=False):
                if isinstance(lr, float) and isinstance(group.get("lr"), float):
                    group["lr"] = lr  # the exact rate it was given (torchao rounds it through float32)
        return optimizer

    optimizer = LayerwiseOptimizer(params, make, clip_per_param=clip_per_param, max_grad_norm=max_grad_norm)
    if unapplied_max_grad_norm is not None:
        # Once, when training starts: the stock Trainer accepts its default here, so refusing would break
        # the guides' examples; staying quiet would hide that no clipping happens.
        warnings.warn(
            f"optim={name!r}: global-norm clipping (max_grad_norm={unapplied_max_grad_norm}, transformers' "
            "default) is not applied, because each parameter is stepped inside backward. To clip, use "
            + clipping_ways(name, unapplied_max_grad_norm, has_global_clip)
            + ".",
            UserWarning,
            stacklevel=2,
        )
    return optimizer


def layerwise_factory(ctx: BuildContext, cls: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(LayerwiseFactory, kwargs)`` wrapping ``cls`` so each parameter gets its own optimizer."""
    if is_factory(cls):
        raise ValueError(f"optim={ctx.spec.name!r}: {cls!r} is a factory and cannot be made layer-wise")
    plan = ctx.plan
    kwargs = dict(kwargs)
    groups = kwargs.pop("params", None) or ctx.groups
    kwargs.pop("model", None)
    kwargs.pop("clip_per_param", None)
    has_global = twins.has_global_clip(ctx.spec)
    if has_global:
        kwargs.pop("clip", None)
    # Read from what optim_args said, not from kwargs: a family builder may not pass options through.
    clip = ctx.given.get("clip_per_param")
    global_norm = plan.max_grad_norm if has_global and ctx.given.get("clip") == "global" else None
    lr = kwargs.get("lr")
    # The outer groups are what schedulers and the Trainer's logging see: give each its lr.
    outer = [{**g, "lr": g.get("lr", lr)} for g in groups]
    out = {
        "params": outer, "inner": cls, "inner_kwargs": kwargs, "clip_per_param": clip,
        "max_grad_norm": global_norm, "unapplied_max_grad_norm": plan.unapplied_max_grad_norm, "name": ctx.spec.name,
        "has_global_clip": has_global,
    }
    if ctx.spec.adapt is not None:
        out["inner_adapt"] = ctx.spec.adapt
    return LayerwiseFactory(), out
