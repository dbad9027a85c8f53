"""Shims for the torchao low-bit AdamW records (torchao is imported only inside functions).

The records point at thin subclasses of ``torchao.optim.AdamW4bit`` / ``AdamW8bit`` / ``AdamWFp8``
(reached through this module's ``__getattr__``) that change two things and leave the update alone:

- ``group["lr"]`` stays a Python float, as in every other optimizer. torchao turns it into a tensor so
  its compiled step is not recompiled when the rate changes, and then refuses a float assigned later
  (``RuntimeError: lr was changed to a non-Tensor object``), which breaks code that sets rates by
  assignment (the layer-wise engine, user code) and logs ``0.009999999776`` for 0.01. Here each group
  owns a 0-d tensor that is filled with the current float just before the compiled step.
- ``state_dict()`` stores quantised state as plain tensors plus plain values (a tagged dict per state
  tensor) instead of torchao's tensor subclasses, which implement neither ``torch.equal`` nor
  ``copy.deepcopy`` and load only where torchao registered them as safe globals. ``load_state_dict``
  rebuilds the subclasses before torch's loader sees them (torch would otherwise cast the uint8 codes
  to the parameter's dtype).
"""

from __future__ import annotations

from functools import cache
from typing import Any

_CLASSES = ("AdamW4bit", "AdamW8bit", "AdamWFp8")
_SUBCLASSES = ("OptimState4bit", "OptimState8bit", "OptimStateFp8")
_TAG = "torchao_quantized"


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        return _shim(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


class _PlainStateAndLr:
    """Mixin over ``torchao.optim.adam._AdamBase``: float learning rates, plain-tensor state dicts."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        import torch

        given = param_group.get("lr", self.defaults.get("lr"))  # type: ignore[attr-defined]
        super().add_param_group(param_group)  # type: ignore[misc]
        if not isinstance(given, torch.Tensor):  # torchao just made it a float32 tensor: keep the exact float
            self.param_groups[-1]["lr"] = given  # type: ignore[attr-defined]

    def step(self, closure: Any = None) -> Any:
        import torch

        cells: list[torch.Tensor] = self.__dict__.setdefault("_lr_cells", [])
        swapped = []
        for i, group in enumerate(self.param_groups):  # type: ignore[attr-defined]
            lr = group["lr"]
            if isinstance(lr, torch.Tensor):
                continue
            while len(cells) <= i:
                cells.append(torch.zeros((), dtype=torch.float32))
            cells[i].fill_(lr)
            group["lr"] = cells[i]
            swapped.append((group, lr))
        try:
            return super().step(closure)  # type: ignore[misc]
        finally:
            for group, lr in swapped:
                group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()  # type: ignore[misc]
        sd["state"] = {
            k: {name: pack_state_tensor(v) for name, v in entry.items()} for k, entry in sd["state"].items()
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        state_dict["state"] = {
            k: {name: unpack_state_tensor(v) for name, v in entry.items()}
            for k, entry in state_dict["state"].items()
        }
        super().load_state_dict(state_dict)  # type: ignore[misc]


@cache
def _shim(name: str) -> type:
    import torchao.optim

    base = getattr(torchao.optim, name)
    return type(
        name,
        (_PlainStateAndLr, base),
        {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"torchao.optim.{name} with float learning rates and a plain-tensor state_dict.",
        },
    )
