"""Turns any (optimizer class, kwargs) into a layer-wise factory the stock Trainer can call."""

from __future__ import annotations

import math
import warnings
from typing import Any

from .build import BuildContext
from .distributed import detect_backend


class LayerwiseFactory:
    """Zero-argument callable returning ``build(model, **kwargs)``, as transformers calls factories."""

    def __call__(self) -> Any:
        return build_layerwise

    def __repr__(self) -> str:
        return "LayerwiseFactory"


def default_max_grad_norm() -> float:
    """transformers' default ``max_grad_norm`` (the dataclass field's default, 1.0 in transformers 5)."""
    import transformers

    return float(transformers.TrainingArguments.__dataclass_fields__["max_grad_norm"].default)


def clipping_ways(name: str, max_grad_norm: float, has_global: bool) -> str:
    """The ways to get clipping with a layer-wise name, for warnings and errors."""
    ways = []
    if has_global:
        ways.append(f"optim_args='clip=global' (exact global-norm clipping to max_grad_norm={max_grad_norm}; "
                    "one extra backward pass per step)")
    ways.append(f"optim_args='clip_per_param={max_grad_norm}' (each parameter's gradient clipped on its own)")
    from .build import spec_for

    base = spec_for(name).base or name  # the record says which whole-model name it twins
    ways.append(f"the whole-model name optim={base!r}")
    return "; ".join(ways) + "; or max_grad_norm=0 to say no clipping is wanted"


def has_global_clip(spec: Any) -> bool:
    """Whether this layer-wise record offers ``clip=global`` (a base with its own ``clip`` key does not)."""
    from .builtin import CLIP_GLOBAL

    return spec.option_map.get("clip") == CLIP_GLOBAL


def check_layerwise_clipping(spec: Any, args: Any, given: dict[str, Any]) -> float | None:
    """Refuses a clipping request a layer-wise name cannot honour; returns the norm that will not be applied.

    ``clip=global`` clips to ``max_grad_norm`` exactly. Without a clipping option, ``max_grad_norm`` at
    transformers' default is accepted with a warning at build time (the return value), as the stock Trainer
    accepts it; any other value is refused, since the user asked for it.
    """
    name = spec.name
    max_norm = float(getattr(args, "max_grad_norm", 0.0) or 0.0)
    clip = given.get("clip")
    per_param = given.get("clip_per_param")
    if clip == "global":
        if per_param is not None:
            raise ValueError(
                f"optim={name!r}: optim_args 'clip=global' and 'clip_per_param={per_param:g}' ask for two kinds "
                "of clipping; keep one"
            )
        if not (max_norm > 0 and math.isfinite(max_norm)):
            raise ValueError(
                f"optim={name!r}: optim_args 'clip=global' clips to max_grad_norm, which is {args.max_grad_norm}; "
                "set max_grad_norm to a positive finite norm (e.g. 1.0), or drop 'clip=global'"
            )
        backend = detect_backend(args)
        if backend.kind != "none":
            raise ValueError(
                f"optim={name!r}: optim_args 'clip=global' cannot run under {backend.detail}: there each gradient "
                "bucket is stepped as soon as it is averaged, before any pass could see the global norm. Use "
                "optim_args='clip_per_param=...', max_grad_norm=0, or the whole-model name."
            )
        return None
    if max_norm == 0:
        return None
    if max_norm != default_max_grad_norm():
        raise ValueError(
            f"optim={name!r} steps each parameter inside backward, so global-norm clipping "
            f"(max_grad_norm={args.max_grad_norm}) cannot be applied without a clipping option. Use "
            + clipping_ways(name, max_norm, has_global_clip(spec))
            + "."
        )
    return None if per_param is not None else max_norm


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
    from .build import is_factory

    if is_factory(cls):
        raise ValueError(f"optim={ctx.spec.name!r}: {cls!r} is a factory and cannot be made layer-wise")
    unapplied = check_layerwise_clipping(ctx.spec, ctx.args, ctx.given)
    kwargs = dict(kwargs)
    groups = kwargs.pop("params", None) or ctx.groups
    kwargs.pop("model", None)
    kwargs.pop("clip_per_param", None)
    has_global = has_global_clip(ctx.spec)
    if has_global:
        kwargs.pop("clip", None)
    # Read from what optim_args said, not from kwargs: a family builder may not pass options through.
    clip = ctx.given.get("clip_per_param")
    global_norm = float(ctx.args.max_grad_norm) if has_global and ctx.given.get("clip") == "global" else None
    lr = kwargs.get("lr")
    # The outer groups are what schedulers and the Trainer's logging see: give each its lr.
    outer = [{**g, "lr": g.get("lr", lr)} for g in groups]
    out = {
        "params": outer, "inner": cls, "inner_kwargs": kwargs, "clip_per_param": clip,
        "max_grad_norm": global_norm, "unapplied_max_grad_norm": unapplied, "name": ctx.spec.name,
        "has_global_clip": has_global,
    }
    if ctx.spec.adapt is not None:
        out["inner_adapt"] = ctx.spec.adapt
    return LayerwiseFactory(), out
