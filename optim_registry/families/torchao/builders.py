"""The post-construction fix for the torchao low-bit AdamW records (torchao is imported only inside functions).

The records point at torchao's own ``AdamW4bit`` / ``AdamW8bit`` / ``AdamWFp8``, the classes transformers
returns. `adopt` (run by ``build.finalize`` and for each layer-wise inner optimizer) installs optimizer
hooks that change two things and leave the update alone:

- ``group["lr"]`` stays a Python float, as in every other optimizer. torchao turns it into a tensor so
  its compiled step is not recompiled when the rate changes, and then refuses a float assigned later
  (``RuntimeError: lr was changed to a non-Tensor object``), which breaks code that sets rates by
  assignment (the layer-wise engine, user code) and logs ``0.009999999776`` for 0.01. Here the floats
  are put back after construction, and a step pre-hook fills a 0-d tensor per group with the current
  float just before the compiled step (a post-hook puts the float back).
- ``state_dict()`` stores quantised state as plain tensors plus plain values (a tagged dict per state
  tensor) instead of torchao's tensor subclasses, which implement neither ``torch.equal`` nor
  ``copy.deepcopy`` and load only where torchao registered them as safe globals. A load pre-hook rebuilds
  the subclasses before torch's loader sees them (torch would otherwise cast the uint8 codes to the
  parameter's dtype).
"""

from __future__ import annotations

from functools import cache
from typing import Any

_SUBCLASSES = ("OptimState4bit", "OptimState8bit", "OptimStateFp8")
_TAG = "torchao_quantized"
_ADOPTED = "_optim_registry_hooks"


@cache
def _subclasses() -> dict[str, type]:
    from torchao.optim.subclass_4bit import OptimState4bit
    from torchao.optim.subclass_8bit import OptimState8bit
    from torchao.optim.subclass_fp8 import OptimStateFp8

    return {c.__name__: c for c in (OptimState4bit, OptimState8bit, OptimStateFp8)}


def _encode(value: Any) -> Any:
    import torch

    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, (tuple, list, torch.Size)):
        return {"shape": [int(v) for v in value]}
    return value


def _decode(value: Any) -> Any:
    import torch

    if isinstance(value, dict) and "dtype" in value:
        return getattr(torch, value["dtype"])
    if isinstance(value, dict) and "shape" in value:
        return torch.Size(value["shape"])
    return value


def pack_state_tensor(value: Any) -> Any:
    """A torchao quantised state tensor as ``{"torchao_quantized": class name, "data": {...}, "attrs": [...]}``."""
    kind = type(value).__name__
    if kind not in _SUBCLASSES:
        return value
    names, attrs = value.__tensor_flatten__()
    return {_TAG: kind, "data": {n: getattr(value, n) for n in names}, "attrs": [_encode(a) for a in attrs]}


def unpack_state_tensor(value: Any) -> Any:
    """Inverse of `pack_state_tensor` (anything else is returned unchanged)."""
    if not (isinstance(value, dict) and _TAG in value):
        return value
    cls = _subclasses().get(value[_TAG])
    if cls is None:
        raise ValueError(f"unknown torchao state tensor type {value[_TAG]!r} in the optimizer state")
    return cls.__tensor_unflatten__(dict(value["data"]), [_decode(a) for a in value["attrs"]], None, None)


def _float_lr(value: Any, default: Any) -> float:
    """The float a group's rate was given as: torchao stored it as a float32 tensor."""
    number = float(value)
    if isinstance(default, float) and float(_f32(default)) == number:
        return default  # the exact float given (0.01, not 0.009999999776)
    return number


def _f32(value: float) -> Any:
    import torch

    return torch.tensor(value, dtype=torch.float32)


def _before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    import torch

    _after_step(optimizer, args, kwargs)  # a step that raised left its tensors in place
    cells: list[torch.Tensor] = optimizer.__dict__.setdefault("_optim_registry_lr_cells", [])
    swapped = []
    for i, group in enumerate(optimizer.param_groups):
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):  # set by the user as torchao documents: theirs to fill
            continue
        while len(cells) <= i:
            cells.append(torch.zeros((), dtype=torch.float32))
        cells[i].fill_(lr)
        group["lr"] = cells[i]
        swapped.append((group, lr))
    optimizer.__dict__["_optim_registry_lr_swapped"] = swapped


def _after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    for group, lr in optimizer.__dict__.pop("_optim_registry_lr_swapped", ()):
        group["lr"] = lr


def _pack_state_dict(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    state_dict["state"] = {
        k: {name: pack_state_tensor(v) for name, v in entry.items()} for k, entry in state_dict["state"].items()
    }
    return state_dict


def _unpack_state_dict(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    state_dict = dict(state_dict)
    state_dict["state"] = {
        k: {name: unpack_state_tensor(v) for name, v in entry.items()} for k, entry in state_dict["state"].items()
    }
    return state_dict


def adopt(optimizer: Any) -> None:
    """Float learning rates and a plain-tensor state dict for a torchao optimizer (idempotent)."""
    import torch

    if getattr(optimizer, _ADOPTED, None) is not None:
        return
    default = optimizer.defaults.get("lr")
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor) and group["lr"].dim() == 0:
            group["lr"] = _float_lr(group["lr"], default)
    setattr(optimizer, _ADOPTED, (
        optimizer.register_step_pre_hook(_before_step),
        optimizer.register_step_post_hook(_after_step),
        optimizer.register_state_dict_post_hook(_pack_state_dict),
        optimizer.register_load_state_dict_pre_hook(_unpack_state_dict),
    ))
