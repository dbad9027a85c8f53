"""Turns any (optimizer class, kwargs) into a layer-wise factory the stock Trainer can call."""

from __future__ import annotations

from typing import Any

from .build import BuildContext


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
    inner_adapt: str | None = None,
) -> Any:
    from . import deps
    from .layerwise import LayerwiseOptimizer

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

    return LayerwiseOptimizer(params, make, clip_per_param=clip_per_param)


def layerwise_factory(ctx: BuildContext, cls: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(LayerwiseFactory, kwargs)`` wrapping ``cls`` so each parameter gets its own optimizer."""
    from .build import is_factory

    if is_factory(cls):
        raise ValueError(f"optim={ctx.spec.name!r}: {cls!r} is a factory and cannot be made layer-wise")
    kwargs = dict(kwargs)
    groups = kwargs.pop("params", None) or ctx.groups
    kwargs.pop("model", None)
    clip = kwargs.pop("clip_per_param", None)
    lr = kwargs.get("lr")
    # The outer groups are what schedulers and the Trainer's logging see: give each its lr.
    outer = [{**g, "lr": g.get("lr", lr)} for g in groups]
    out = {"params": outer, "inner": cls, "inner_kwargs": kwargs, "clip_per_param": clip}
    if ctx.spec.adapt is not None:
        out["inner_adapt"] = ctx.spec.adapt
    return LayerwiseFactory(), out
