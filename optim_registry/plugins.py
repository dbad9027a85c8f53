"""Plugins: optimizer and scheduler names other distributions declare as entry points.

Entry-point metadata is read when a registry is first used; a plugin's code is imported only when its name
is resolved (``Registry.get``). The environment switches discovery off or lets a plugin take over a
built-in name deliberately.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any

#: Entry-point groups: the entry-point name is the ``optim=`` / ``lr_scheduler_type=`` name.
OPTIMIZER_GROUP = "optim_registry.optimizers"
SCHEDULER_GROUP = "optim_registry.schedulers"

#: Set to 1/true to skip entry-point discovery (pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD idea).
DISABLE_ENV = "OPTIM_REGISTRY_DISABLE_PLUGINS"
#: Comma-separated names (or ``*``) that plugins may take over from the built-ins, deliberately.
OVERRIDE_ENV = "OPTIM_REGISTRY_ALLOW_OVERRIDE"


class PluginError(ValueError):
    """A plugin name cannot be used: duplicated, shadowing a built-in, or failing to import."""


class BuiltinReplacedWarning(UserWarning):
    """A built-in name now resolves to something else (``register_optimizer(..., replace=True)``)."""


class PluginShadowWarning(UserWarning):
    """An installed plugin offers a built-in name; the built-in is used and the plugin's entry ignored."""


def entry_points(group: str) -> list[Any]:
    """The installed entry points of ``group`` (none when ``OPTIM_REGISTRY_DISABLE_PLUGINS`` is set)."""
    if os.environ.get(DISABLE_ENV, "").lower() in ("1", "true", "yes"):
        return []
    return list(importlib.metadata.entry_points(group=group))


def allowed_override(name: str) -> bool:
    """Whether the environment lets a plugin take over the built-in ``name`` deliberately."""
    allowed = os.environ.get(OVERRIDE_ENV, "")
    return allowed.strip() == "*" or name in [a.strip() for a in allowed.split(",")]
