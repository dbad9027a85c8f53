"""optim_registry: every ``optim="..."`` string becomes the right optimizer, for any HF Trainer.

Public API only. Attributes are loaded on first use (PEP 562), so ``import optim_registry`` imports
no optimizer package, and not even transformers.
"""

from __future__ import annotations

import threading
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "TrainingArguments": "trainer",
    "OptimTrainer": "trainer",
    "OptimRegistryMixin": "trainer",
    "RegistryArgumentsMixin": "trainer",
    "get_optimizer_cls_and_kwargs": "build",
    "create_optimizer": "build",
    "create_scheduler": "build",
    "register_optimizer": "registry",
    "unregister_optimizer": "registry",
    "register_scheduler": "schedulers",
    "list_optimizers": "listing",
    "list_schedulers": "listing",
    "OptimizerInfo": "listing",
    "OptimizerSpec": "spec",
    "Option": "spec",
    "Requirement": "spec",
    "SchedulerSpec": "schedulers",
    "BuildContext": "context",
    "MissingDependencyError": "deps",
    "PluginError": "plugins",
    "LayerwiseOptimizer": "engines.layerwise.engine",
}

__all__ = sorted([*_LAZY, "OptimizerNames", "__version__"])


_LOCK = threading.Lock()


def _make_optimizer_names() -> Any:
    from enum import Enum

    from .registry import builtin_names

    # One class for the process: threads that first touch the attribute together wait here, and the
    # later ones take the class the first one made (``OptimizerNames.X is OptimizerNames.X`` everywhere).
    with _LOCK:
        made = globals().get("OptimizerNames")
        if made is not None:
            return made
        members = {name.upper(): name for name in builtin_names()}
        made = Enum("OptimizerNames", members, type=str, module=__name__)
        globals()["OptimizerNames"] = made
        return made


def __getattr__(name: str) -> Any:
    if name == "OptimizerNames":
        value = _make_optimizer_names()
    elif name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
