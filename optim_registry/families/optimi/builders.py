"""Builder for torch-optimi records: Triton chosen by the parameters' device."""

from __future__ import annotations

from typing import Any

from ...context import BuildContext


def build(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """``(optimi class, kwargs)``; ``triton=False`` whenever a parameter is on the CPU.

    optimi decides on Triton by itself when ``triton`` is None, and StableAdamW (plus any class whose
    first step sees a group without gradients) decides before looking at a parameter, so it picks
    Triton whenever triton imports and then fails on CPU tensors. The device is known here, so the
    choice is made here.
    """
    kwargs = dict(ctx.kwargs)
    cpu = ctx.on_cpu
    if kwargs.get("triton") and cpu:
        raise ValueError(
            f"optim_args triton=true for optim={ctx.spec.name!r}: optimi's Triton kernels need CUDA or XPU "
            "parameters and these are on the CPU. Drop `triton` (the registry then uses optimi's PyTorch "
            "path on CPU) or train on a GPU."
        )
    if cpu:
        kwargs["triton"] = False
    return ctx.target(), ctx.with_groups(kwargs)
