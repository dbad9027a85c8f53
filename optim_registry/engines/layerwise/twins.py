"""The ``<name>_layerwise`` twin of a record: the same optimizer, each parameter stepped inside backward (data only).

The registry derives one for every built-in record with ``supports_layerwise`` (``families.all_records``); the
engine that steps it is ``engine.LayerwiseOptimizer``, built by ``factory.layerwise_factory``. Importing this
module imports no torch: listing reads it.
"""

from __future__ import annotations

from ...spec import POSITIVE, Distributed, OptimizerSpec, Option

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


def layerwise_variant(spec: OptimizerSpec) -> OptimizerSpec:
    """``<name>_layerwise``: the same optimizer, each parameter stepped inside backward."""
    # DDP: stepped from DDP's communication hook once each gradient bucket is averaged (ddp.py).
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


def twins(records: list[OptimizerSpec]) -> list[OptimizerSpec]:
    """The twin of every record that supports one and has no hand-written twin among ``records``."""
    names = {r.name for r in records}
    return [
        layerwise_variant(r)
        for r in records
        if r.supports_layerwise and not r.layerwise and r.name + LAYERWISE_SUFFIX not in names
    ]


def has_global_clip(spec: OptimizerSpec) -> bool:
    """Whether this layer-wise record offers ``clip=global`` (a base with its own ``clip`` key does not)."""
    return spec.option_map.get("clip") == CLIP_GLOBAL
