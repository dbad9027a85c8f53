"""Builder for FlashOptim: CUDA gets its fast path, CPU only on an explicit ``quantize=false`` opt-in."""

from __future__ import annotations

import logging
from typing import Any

from ...context import BuildContext
from ...param_groups import split_by_dtype

logger = logging.getLogger(__name__)

#: What FlashOptim can run on a CPU: each of these must be off.
_CPU_PATH = {"quantize": False, "fused": False, "master_weight_bits": None}


def _cpu_kwargs(ctx: BuildContext) -> dict[str, Any]:
    """The plain path for a CPU run, or the ``ValueError`` that says how to opt in."""
    name = ctx.spec.name
    if ctx.given.get("quantize") is not False:
        raise ValueError(
            f"optim={name!r}: FlashOptim's default path (int8 state, fused Triton step, 24-bit master "
            "weights) needs a CUDA GPU and these parameters are on the CPU. To run its plain PyTorch path "
            "on CPU (fp32 state for fp32 weights, unfused, no master-weight correction: none of the memory "
            'savings) pass optim_args="quantize=false"; or train on a GPU.'
        )
    for key in ("fused", "master_weight_bits"):
        if key in ctx.given and ctx.given[key] != _CPU_PATH[key]:
            raise ValueError(
                f"optim_args {key}={ctx.given[key]} for optim={name!r} needs a CUDA GPU and these parameters "
                f"are on the CPU; drop {key!r} (with quantize=false the CPU path uses "
                f"{key}={_CPU_PATH[key]}) or train on a GPU."
            )
    return dict(_CPU_PATH)


def build(ctx: BuildContext) -> tuple[Any, dict[str, Any]]:
    """``(Flash* class, kwargs)`` after the device policy: see ``records.py``."""
    kwargs = dict(ctx.kwargs)
    if ctx.on_cpu:
        kwargs.update(_cpu_kwargs(ctx))
    elif kwargs.get("master_weight_bits", 24) is not None and ctx.model is not None:
        import torch

        trainable = [p for p in ctx.model.parameters() if p.requires_grad]
        if trainable and all(p.dtype == torch.float32 for p in trainable):
            # FlashOptim refuses master weights for an all-fp32 model; fp32 already is the master copy.
            logger.warning(
                "optim=%r: master_weight_bits=%s only applies to bf16/fp16 weights and every trainable "
                "weight is fp32, so no master-weight correction is kept (pass master_weight_bits=none to "
                "silence this).",
                ctx.spec.name, kwargs.get("master_weight_bits", 24),
            )
            kwargs["master_weight_bits"] = None
    if ctx.groups is not None:
        # FlashOptim needs one dtype per group (loading a state dict is undefined otherwise). It also puts
        # the shared lr into every group's initial_lr, where torch schedulers start from: a group with its
        # own rate (Muon-style groups, optim_groups rules) must say its own.
        kwargs["params"] = [
            {**g, "initial_lr": g["lr"]} if "lr" in g else g for g in split_by_dtype(ctx.groups)
        ]
    return ctx.target(), kwargs
