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
) -> Any:
    from .layerwise import LayerwiseOptimizer

    def make(groups: list[dict[str, Any]]) -> Any:
        return inner(groups, **inner_kwargs)

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
    return LayerwiseFactory(), {"params": outer, "inner": cls, "inner_kwargs": kwargs, "clip_per_param": clip}
