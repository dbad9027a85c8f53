"""The registries of optimizer and scheduler names: records, provenance, conflicts and listing.

Built-in records come from ``optim_registry.builtin`` (data only). Plugin names are read from
entry-point metadata when the registry is first used; a plugin's code is imported only when its name
is resolved. Names registered in code with ``register_optimizer`` sit beside both.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .optim_args import closest

S = TypeVar("S")

#: Set to 1/true to skip entry-point discovery (pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD idea).
DISABLE_ENV = "OPTIM_REGISTRY_DISABLE_PLUGINS"
#: Comma-separated names (or ``*``) that plugins may take over from the built-ins, deliberately.
OVERRIDE_ENV = "OPTIM_REGISTRY_ALLOW_OVERRIDE"


class PluginError(ValueError):
    """A plugin name cannot be used: duplicated, shadowing a built-in, or failing to import."""


@dataclass
class _Provider:
    source: str  # distribution name, "builtin" or "register_optimizer"
    loader: Callable[[], Any] | None = None  # returns the spec (plugins: loads the entry point)
    spec: Any = None
    module: str | None = None  # for availability without import
    entry_point: str | None = None


@dataclass
class Registry(Generic[S]):
    """Name -> record, for one kind ("optimizer" or "scheduler")."""

    kind: str
    group: str  # entry-point group
    builtin_loader: Callable[[], list[S]]
    plugin_adapter: Callable[[str, Any, str], S]
    _builtin: dict[str, S] | None = None
    _providers: dict[str, list[_Provider]] = field(default_factory=dict)
    _discovered: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # -- building the table --------------------------------------------------------------------
    def builtin(self) -> dict[str, S]:
        with self._lock:
            if self._builtin is None:
                self._builtin = {spec.name: spec for spec in self.builtin_loader()}  # type: ignore[attr-defined]
            return self._builtin

    def _discover(self) -> None:
        with self._lock:
            if self._discovered:
                return
            self._discovered = True
            if os.environ.get(DISABLE_ENV, "").lower() in ("1", "true", "yes"):
                return
            for ep in importlib.metadata.entry_points(group=self.group):
                dist = ep.dist.name if ep.dist is not None else "unknown distribution"
                self._providers.setdefault(ep.name, []).append(
                    _Provider(source=dist, loader=ep.load, module=ep.module, entry_point=ep.value)
                )

    def rediscover(self) -> None:
        """Read entry points again (after installing a plugin in a running process)."""
        with self._lock:
            self._providers = {k: [p for p in v if p.loader is None] for k, v in self._providers.items()}
            self._providers = {k: v for k, v in self._providers.items() if v}
            self._discovered = False

    def register(self, spec: S, *, source: str = "register_optimizer", replace: bool = False) -> S:
        name = spec.name  # type: ignore[attr-defined]
        with self._lock:
            if name in self.builtin() and not replace:
                raise PluginError(
                    f"{self.kind} name {name!r} is built in; pass replace=True to take it over deliberately"
                )
            providers = self._providers.setdefault(name, [])
            if replace:
                providers[:] = [p for p in providers if p.loader is not None]
            elif any(p.loader is None for p in providers):
                raise PluginError(f"{self.kind} name {name!r} is already registered; pass replace=True")
            providers.append(_Provider(source=source, spec=spec))
            self._overrides = getattr(self, "_overrides", set())
            if replace:
                self._overrides.add(name)
        return spec

    def unregister(self, name: str) -> None:
        with self._lock:
            providers = self._providers.get(name, [])
            providers[:] = [p for p in providers if p.loader is not None]
            if not providers:
                self._providers.pop(name, None)
            getattr(self, "_overrides", set()).discard(name)

    # -- lookup ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._discover()
        return sorted(set(self.builtin()) | set(self._providers))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def check_name(self, name: str) -> None:
        """``ValueError`` with the closest names when ``name`` is not registered."""
        if name not in self:
            near = closest(str(name), self.names(), n=5)
            hint = f" Closest registered names: {', '.join(near)}." if near else ""
            raise ValueError(
                f"Unknown {self._field()} {name!r}.{hint} "
                f"Run `optim-registry list` for every name, or register your own (docs/plugins.md)."
            )

    def _field(self) -> str:
        return "optim" if self.kind == "optimizer" else "lr_scheduler_type"

    def get(self, name: str) -> S:
        """The record for ``name``; loads the plugin providing it if it is one."""
        name = str(getattr(name, "value", name))
        self.check_name(name)
        self._discover()
        with self._lock:
            providers = self._providers.get(name, [])
            code = [p for p in providers if p.loader is None]
            plugins = [p for p in providers if p.loader is not None]
            if code:  # register_optimizer in this process wins: the user asked in code
                return code[-1].spec
            if len(plugins) > 1:
                both = " and ".join(f"{p.source} ({p.entry_point})" for p in plugins)
                raise PluginError(
                    f"{self._field()} {name!r} is provided by more than one plugin: {both}. "
                    f"Uninstall one of them, or set {DISABLE_ENV}=1 and register the one you want in code."
                )
            if plugins:
                allowed = os.environ.get(OVERRIDE_ENV, "")
                if name in self.builtin() and not (allowed == "*" or name in allowed.split(",")):
                    raise PluginError(
                        f"plugin distribution {plugins[0].source!r} offers {self._field()} {name!r}, which is "
                        f"built in; refusing to replace it silently. Set {OVERRIDE_ENV}={name} to allow it, "
                        "or uninstall the plugin."
                    )
                return self._load(name, plugins[0])
            return self.builtin()[name]

    def _load(self, name: str, provider: _Provider) -> S:
        if provider.spec is None:
            try:
                obj = provider.loader()  # type: ignore[misc]
            except Exception as exc:
                raise PluginError(
                    f"plugin {name!r} from distribution {provider.source!r} ({provider.entry_point}) failed to "
                    f"import: {type(exc).__name__}: {exc}"
                ) from exc
            provider.spec = self.plugin_adapter(name, obj, provider.source)
        return provider.spec

    def provenance(self, name: str) -> list[tuple[str, str | None, bool]]:
        """``(source, entry point, importable)`` for each provider of ``name`` (no plugin import)."""
        self._discover()
        out = []
        if name in self.builtin():
            out.append(("builtin", None, True))
        for p in self._providers.get(name, []):
            importable = p.module is None or importlib.util.find_spec(p.module.split(".")[0]) is not None
            out.append((p.source, p.entry_point, importable))
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
