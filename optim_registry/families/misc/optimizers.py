"""Shims for the "misc" records: GrokAdamW with its state where torch keeps state.

``grokadamw.GrokAdamW`` keeps each parameter's moments in ``group["state"]`` (a dict keyed by the
parameter tensors) instead of ``optimizer.state``. torch's ``state_dict`` then saves copies of the
parameters as dictionary keys, and after loading no key is the live parameter any more, so a resumed
run silently restarts every moment (transformers 5.23 resumes 8.7e-3 away from an uninterrupted run).
The subclass here (reached through this module's ``__getattr__``) hands the library that dict only for
the duration of ``step()`` and keeps the entries in ``optimizer.state``, so the state is saved, loaded
and round-tripped through ``torch.load(weights_only=True)`` like any torch optimizer's.

Importing ``grokadamw`` runs ``logging.basicConfig(level=INFO)``; the root logger's level and handlers
are put back right after the import.
"""

from __future__ import annotations

import logging
import warnings
from functools import cache
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "GrokAdamW":
        return _grokadamw()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def import_quietly(module: str) -> Any:
    """Import ``module`` and undo any change it makes to the root logger's level and handlers."""
    import importlib

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        return importlib.import_module(module)
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


class _StateInOptimizer:
    """Mixin over ``grokadamw.GrokAdamW``: per-parameter state lives in ``self.state``."""

    def step(self, closure: Any = None) -> Any:
        groups = self.param_groups  # type: ignore[attr-defined]
        state = self.state  # type: ignore[attr-defined]
        for group in groups:
            group["state"] = {p: state[p] for p in group["params"] if p in state and state[p]}
        try:
            with warnings.catch_warnings():
                # The library wraps its update in torch.cuda.amp.autocast(): deprecated, and a no-op on CPU.
                warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast.*is deprecated")
                warnings.filterwarnings("ignore", message=r"CUDA is not available.*Disabling autocast")
                return super().step(closure)  # type: ignore[misc]
        finally:
            for group in groups:
                for p, entry in group.pop("state", {}).items():
                    state[p] = entry


@cache
def _grokadamw() -> type:
    base = import_quietly("grokadamw").GrokAdamW
    return type(
        "GrokAdamW",
        (_StateInOptimizer, base),
        {
            "__module__": __name__,
            "__qualname__": "GrokAdamW",
            "__doc__": "grokadamw.GrokAdamW whose per-parameter state is kept in optimizer.state (exact resume).",
        },
    )
