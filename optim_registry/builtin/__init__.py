"""Built-in records: data only, one module per optimizer family (and ``schedulers`` for the scheduler names);
importing them imports no optimizer."""

from __future__ import annotations

import importlib
from dataclasses import replace

from ..spec import POSITIVE, Distributed, OptimizerSpec, Option

#: The family modules, each defining ``RECORDS`` (a tuple sorted by name).
FAMILIES = (
    "torch",
    "bitsandbytes",
    "low_rank",
    "lomo",
    "schedulefree",
    "misc",
    "torchao",
    "optimi",
    "beyond",
    "flashoptim",
    "pytorch_optimizer",
)

LAYERWISE_SUFFIX = "_layerwise"

CLIP_PER_PARAM = Option(
    "clip_per_param",
    "float",
    None,
    "clip each parameter's gradient to this norm inside backward, each on its own (not a global norm)",
    **POSITIVE,
)

#: ``clip=global``: exact global-norm clipping to ``max_grad_norm`` at the cost of a second backward pass.
CLIP_GLOBAL = Option(
    "clip",
    "str",
    None,
    "'global': clip to the global gradient norm max_grad_norm exactly, as the whole-model name does "
    "(the norm is measured in an extra backward pass before any parameter steps)",
    choices=("global",),
)


def family_records() -> list[OptimizerSpec]:
    """Every hand-written (or, for pytorch_optimizer, generated) record of every family module."""
    records: list[OptimizerSpec] = []
    for family in FAMILIES:
        module = importlib.import_module(f"optim_registry.families.{family}.records")
        records.extend(getattr(module, "RECORDS", ()))
        extra = getattr(module, "generated_records", None)
        if extra is not None:
            records.extend(extra())
    return records


def layerwise_variant(spec: OptimizerSpec) -> OptimizerSpec:
    """``<name>_layerwise``: the same optimizer, each parameter stepped inside backward."""
    # DDP: stepped from DDP's communication hook once each gradient bucket is averaged (layerwise_ddp).
    ddp = spec.distributed.ddp
    sharded = f"each parameter is stepped inside backward on unsharded gradients; use {spec.name!r}"
    return spec.variant(
        distributed=Distributed(ddp=ddp, fsdp=sharded, zero1=sharded, zero2=sharded, zero3=sharded,
                                fsdp2=sharded),
        name=spec.name + LAYERWISE_SUFFIX,
        description=f"{spec.description} Layer-wise: each parameter is stepped inside backward, so the "
        "whole model's gradients never exist at once.",
        layerwise=True,
        supports_layerwise=False,
        # A base with its own `clip` option (pytorch_optimizer's FAdam) keeps it; its twin has no clip=global.
        options=spec.options + (CLIP_PER_PARAM,) + (() if "clip" in spec.option_map else (CLIP_GLOBAL,)),
        base=spec.name,
        resume="per-parameter optimizer states gathered into one state_dict",
    )


def all_records() -> list[OptimizerSpec]:
    """Hand-written records plus a ``_layerwise`` twin of every one that supports it."""
    records = family_records()
    names = {r.name for r in records}
    duplicated = len(names) != len(records)
    if duplicated:
        seen: set[str] = set()
        dupes = sorted({r.name for r in records if r.name in seen or seen.add(r.name)})
        raise RuntimeError(f"built-in optimizer names declared twice: {dupes}")
    derived = [
        layerwise_variant(r)
        for r in records
        if r.supports_layerwise and not r.layerwise and r.name + LAYERWISE_SUFFIX not in names
    ]
    return [fsdp2_verdict(r) for r in records + derived]


def fsdp2_verdict(spec: OptimizerSpec) -> OptimizerSpec:
    """The record, with FSDP2 refused where the owner-rank path cannot reach the optimizer's math.

    That path hands the library whole-tensor copies through its param groups: an optimizer built from
    the model itself, or one that moves the weights outside ``step()``, would act on the wrong tensors.
    """
    d = spec.distributed
    if d.fsdp2 is not True or d.fsdp2_math != "owner":
        return spec
    why = None
    if spec.protocol == "fused_backward":
        why = "the weights change inside backward, before FSDP2 has reduced the gradients"
    elif spec.protocol != "step":
        why = f"the {spec.protocol!r} protocol moves the weights outside step()"
    elif spec.needs_model:
        why = "built from the model rather than its param groups, so it cannot be given whole-tensor copies"
    return spec if why is None else spec.variant(distributed=replace(d, fsdp2=why))
