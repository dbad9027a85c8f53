"""Builder for torch-optimi records: betas in each class's shape, Triton chosen by the parameters' device."""

from __future__ import annotations

from typing import Any

from ..build import BuildContext


def trainable_devices(model: Any) -> set[str] | None:
    """Device types of the trainable parameters (``None`` without a model)."""
    if model is None:
        return None
    return {p.device.type for p in model.parameters() if p.requires_grad}


def on_cpu(ctx: BuildContext) -> bool:
    """Whether the run's parameters live on the CPU (decided without a model from the arguments)."""
    devices = trainable_devices(ctx.model)
    if devices is not None:
        return "cpu" in devices
    import torch

    return bool(getattr(ctx.args, "use_cpu", False)) or not torch.cuda.is_available()


def _betas(ctx: BuildContext, kwargs: dict[str, Any]) -> None:
    betas = kwargs.get("betas")
    if betas is None:
        return
    wanted = 3 if ctx.spec.name == "optimi_adan" else 2
    if len(betas) != wanted:
        raise ValueError(
            f"optim_args key 'betas' for optim={ctx.spec.name!r} takes {wanted} numbers, got {tuple(betas)}"
        )
    kwargs["betas"] = tuple(float(b) for b in betas)


def build(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """``(optimi class, kwargs)``; ``triton=False`` whenever a parameter is on the CPU.

    optimi decides on Triton by itself when ``triton`` is None, and StableAdamW (plus any class whose
    first step sees a group without gradients) decides before looking at a parameter, so it picks
    Triton whenever triton imports and then fails on CPU tensors. The device is known here, so the
    choice is made here.
    """
    kwargs = dict(ctx.kwargs)
    _betas(ctx, kwargs)
    # Pass it even though the groups carry their own: optimi's defaults (0.01 for AdamW) must never
    # apply to a plain parameter list.
    kwargs["weight_decay"] = ctx.hparams["weight_decay"]
    cpu = on_cpu(ctx)
    if kwargs.get("triton") and cpu:
        raise ValueError(
            f"optim_args triton=true for optim={ctx.spec.name!r}: optimi's Triton kernels need CUDA or XPU "
            "parameters and these are on the CPU. Drop `triton` (the registry then uses optimi's PyTorch "
            "path on CPU) or train on a GPU."
        )
    if cpu:
        kwargs["triton"] = False
    return ctx.target(), ctx.with_groups(kwargs)
