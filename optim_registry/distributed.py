"""Which distributed back-end a run will use, and whether the chosen optimizer supports it.

Checked when the TrainingArguments are created, before transformers' own set-up (which needs
deepspeed installed) and before any model exists. Pure functions over the arguments and the record.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .engines.zero import FSDP2_WAY, ZERO_KINDS
from .optim_args import shorten
from .spec import OptimizerSpec


@dataclass(frozen=True)
class Backend:
    """The back-end a run will use: ``none``, ``ddp``, ``fsdp`` (FSDP1), ``fsdp2``, ``zero1``, ``zero2``, ``zero3``."""

    kind: str
    detail: str = ""
    deepspeed_optimizer: str | None = None  # the "optimizer.type" of a DeepSpeed config, if any


#: FSDP2 as the arguments imply it, or as the build sees it in a model's DTensor parameters.
FSDP2 = Backend("fsdp2", "FSDP2 (fully_shard, DTensor parameters)")


def _load_deepspeed_config(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return _parse_json(text, f"deepspeed={shorten(value)}")
        path = Path(text)
        if path.is_file():
            return _parse_json(path.read_text(), f"deepspeed={shorten(value)} (file {path})")
        raise ValueError(
            f"deepspeed={shorten(value)}: no such DeepSpeed config file; give the path of a JSON config, a dict, "
            'or a JSON object string such as \'{"zero_optimization": {"stage": 2}}\''
        )
    return {}


def _parse_json(text: str, what: str) -> dict[str, Any]:
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. Fix the JSON (keys "
            "and strings in double quotes, no trailing commas), or give the path of a DeepSpeed JSON config file"
        ) from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{what} is JSON but not an object; a DeepSpeed config is a JSON object")
    return loaded


def deepspeed_config(args: Any) -> dict[str, Any]:
    """The DeepSpeed config the arguments name (a dict, a JSON string or a file), ``{}`` without one."""
    return _load_deepspeed_config(getattr(args, "deepspeed", None))


def detect_backend(args: Any) -> Backend:
    """The back-end implied by ``deepspeed`` / ``fsdp`` arguments and the launcher's WORLD_SIZE."""
    deepspeed = getattr(args, "deepspeed", None)
    if deepspeed:
        config = _load_deepspeed_config(deepspeed)
        stage = int(config.get("zero_optimization", {}).get("stage", 0) or 0)
        optimizer = config.get("optimizer", {}).get("type") if isinstance(config.get("optimizer"), dict) else None
        kind = f"zero{stage}" if stage in (1, 2, 3) else "ddp"
        return Backend(kind, f"DeepSpeed ZeRO stage {stage}", optimizer)
    fsdp = getattr(args, "fsdp", None)
    if fsdp and fsdp not in ("", [], False):
        config = getattr(args, "fsdp_config", None) or {}
        # transformers 5.x defaults to FSDP2 when the config names no version (TrainingArguments, "version").
        version = config.get("fsdp_version", config.get("version", 2)) if isinstance(config, dict) else 2
        orig = config.get("use_orig_params", True) if isinstance(config, dict) else True
        if str(version) == "2":
            # fully_shard: DTensor parameters that keep their global shapes (see optim_registry.engines.fsdp2).
            return FSDP2
        return Backend("fsdp", "FSDP1" + ("" if orig else " (flattened parameters)"))
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        return Backend("ddp", f"DDP over {world} processes")
    return Backend("none")


def support(spec: OptimizerSpec, kind: str) -> bool | str:
    """``True``, ``False`` or a reason string: the record's declared support for ``kind``."""
    if kind == "none":
        return True
    return getattr(spec.distributed, kind)


def check_distributed(spec: OptimizerSpec, args: Any, *, default_optim: str = "adamw_torch") -> Backend:
    """Raise ``ValueError`` for any optimizer x back-end combination the registry knows cannot work."""
    backend = detect_backend(args)
    if backend.deepspeed_optimizer and (spec.name != default_optim or getattr(args, "optim_args", None)):
        raise ValueError(
            f"The DeepSpeed config defines its own optimizer ({backend.deepspeed_optimizer!r}) and "
            f"optim={spec.name!r} chooses another; DeepSpeed would silently use its own. Remove the "
            "'optimizer' block from the DeepSpeed config to use optim, or drop the optim choice."
        )
    check_support(spec, backend)
    return backend


def check_support(spec: OptimizerSpec, backend: Backend) -> None:
    """``ValueError`` naming the back-end when the record says it cannot train under it (the one refusal, asked
    from the arguments and, for a model already sharded by FSDP2, by the build)."""
    verdict = support(spec, backend.kind)
    if verdict is not True:
        reason = f": {verdict}" if isinstance(verdict, str) else ""
        fsdp2 = ""
        if backend.kind in ZERO_KINDS and spec.distributed.fsdp2 is True:
            fsdp2 = f" It trains under FSDP2: {FSDP2_WAY}."
        raise ValueError(
            f"optim={spec.name!r} does not support {backend.detail}{reason}.{fsdp2} "
            "See `optim-registry show " + spec.name + "` for what it supports, or choose another optimizer "
            "(docs/distributed.md)."
        )


def fsdp2_verdict(spec: OptimizerSpec) -> OptimizerSpec:
    """The record, with FSDP2 refused where the owner-rank path cannot reach the optimizer's math.

    That path hands the library whole-tensor copies through its param groups: an optimizer built from the model
    itself, or one that moves the weights outside ``step()``, would act on the wrong tensors. The one decision:
    the built-in records carry it (listings, docs) and the build asks it of any record (plugins too).
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
