"""The registries of names: the generic ``Registry``, the optimizer one and ``register_optimizer``.

Built-in records come from ``optim_registry.families`` (each family's ``records``: data only). Plugin names are read from
entry-point metadata when the registry is first used (``optim_registry.plugins``); a plugin's code is
imported only when its name is resolved. Names registered in code with ``register_optimizer`` sit beside
both. The scheduler registry is ``optim_registry.schedulers.schedulers``.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from . import deps
from .optim_args import closest, shorten
from .plugins import (
    DISABLE_ENV,
    OPTIMIZER_GROUP,
    OVERRIDE_ENV,
    BuiltinReplacedWarning,
    PluginError,
    PluginShadowWarning,
    allowed_override,
    entry_points,
)
from .spec import OptimizerSpec, plain_name

S = TypeVar("S")

def check_new_name(kind: str, name: Any) -> None:
    """Refuse a name nobody could type as ``optim=`` / ``lr_scheduler_type=``: empty, spaces, not a str."""
    if not isinstance(name, str):
        raise ValueError(f"{kind} name must be a str, got {type(name).__name__} {shorten(name)}")
    if not name or name != name.strip() or any(ch.isspace() for ch in name) or "," in name:
        raise ValueError(
            f"{kind} name {shorten(name)} is not usable: a name must be non-empty, without spaces or commas "
            "(e.g. 'my_sgd')"
        )


def external_stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` called in this package that points at the user's line."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("optim_registry"):
        level += 1
        frame = frame.f_back  # type: ignore[assignment]
    return level


def caller_module(skip: tuple[str, ...] = ("optim_registry.",)) -> str:
    """The ``__name__`` of the first calling frame outside this package (who registered a name)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name == "optim_registry" or name.startswith(skip)):
            return name or "<unknown module>"
        frame = frame.f_back  # type: ignore[assignment]
    return "<unknown module>"


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
    #: Given a built-in record when its name is resolved (``get``, not listing); returns the record to use.
    resolve_builtin: Callable[[S], S] | None = None
    _builtin: dict[str, S] | None = None
    _providers: dict[str, list[_Provider]] = field(default_factory=dict)
    _discovered: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock)
    #: Built-in names replaced in code (``replace=True``).
    _overrides: set[str] = field(default_factory=set)
    #: Changes whenever a name is registered, unregistered or rediscovered (what a cached ``Plan`` checks).
    generation: int = 0

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
            for ep in entry_points(self.group):
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
            self.generation += 1

    def register(
        self, spec: S, *, source: str = "register_optimizer", replace: bool = False, by: str | None = None
    ) -> S:
        """Add ``spec`` under its name. Replacing a built-in needs ``replace=True`` and warns, naming ``by``."""
        name = spec.name  # type: ignore[attr-defined]
        check_new_name(self.kind, name)
        with self._lock:
            builtin = name in self.builtin()
            if builtin and not replace:
                raise PluginError(
                    f"{self.kind} name {name!r} is built in; pass replace=True to take it over deliberately"
                )
            providers = self._providers.setdefault(name, [])
            if replace:
                providers[:] = [p for p in providers if p.loader is not None]
            elif any(p.loader is None for p in providers):
                raise PluginError(f"{self.kind} name {name!r} is already registered; pass replace=True")
            providers.append(_Provider(source=source, spec=spec))
            if replace:
                self._overrides.add(name)
            self.generation += 1
        if builtin:
            # Outside the lock: a warnings filter set to "error" raises here, after the table is consistent.
            warnings.warn(
                f"{self._field()} {name!r} is built in and was replaced by {by or source!r} "
                f"(register_{self.kind}(..., replace=True)); `optim-registry list` shows it as the source. "
                f"unregister_{self.kind}({name!r}) restores the built-in.",
                BuiltinReplacedWarning,
                stacklevel=external_stacklevel(),
            )
        return spec

    def unregister(self, name: str) -> None:
        with self._lock:
            providers = self._providers.get(name, [])
            providers[:] = [p for p in providers if p.loader is not None]
            if not providers:
                self._providers.pop(name, None)
            self._overrides.discard(name)
            self.generation += 1

    # -- lookup ---------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._discover()
        with self._lock:
            return sorted(set(self.builtin()) | set(self._providers))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._discover()
        with self._lock:
            return name in self.builtin() or bool(self._providers.get(name))

    def check_name(self, name: str) -> None:
        """``ValueError`` with the closest names when ``name`` is not registered."""
        if name not in self:
            self._unknown(name)

    def _unknown(self, name: Any) -> None:
        near = closest(str(name), self.names(), n=5)
        hint = f" Closest registered names: {', '.join(near)}." if near else ""
        raise ValueError(
            f"Unknown {self._field()} {shorten(name)}.{hint} "
            f"Run `optim-registry list` for every name, or register your own (docs/plugins.md)."
        )

    def _field(self) -> str:
        return "optim" if self.kind == "optimizer" else "lr_scheduler_type"

    def allowed_override(self, name: str) -> bool:
        """Whether the environment lets a plugin take over the built-in ``name`` deliberately."""
        return allowed_override(name)

    def get(self, name: str) -> S:
        """The record for ``name``; loads the plugin providing it if it is one.

        The name is looked up and its provider chosen in one step under the lock, so a name registered
        or unregistered by another thread meanwhile gives the old or the new answer, never a raw error.
        """
        name = plain_name(name)
        self._discover()
        shadowed: _Provider | None = None
        with self._lock:
            providers = list(self._providers.get(name, []))
            code = [p for p in providers if p.loader is None]
            plugins = [p for p in providers if p.loader is not None]
            builtin = self.builtin().get(name)
            if code:  # register_optimizer in this process wins: the user asked in code
                return code[-1].spec
            if builtin is None and not plugins:
                chosen = None
            elif len(plugins) > 1 and (builtin is None or self.allowed_override(name)):
                both = " and ".join(f"{p.source} ({p.entry_point})" for p in plugins)
                raise PluginError(
                    f"{self._field()} {name!r} is provided by more than one plugin: {both}. "
                    f"Uninstall one of them, or set {DISABLE_ENV}=1 and register the one you want in code."
                )
            elif plugins and (builtin is None or self.allowed_override(name)):
                chosen = plugins[0]
            else:
                shadowed = plugins[0] if plugins else None
                chosen = None
        if chosen is not None:
            return self._load(name, chosen)  # outside the lock: plugin code may import and register
        if builtin is None:
            self._unknown(name)
        if shadowed is not None:
            # A fixed location (this line): Python's default filter says it once per process, not at every resolve.
            warnings.warn(self.shadow_message(name, [shadowed]), PluginShadowWarning, stacklevel=1)
        if self.resolve_builtin is not None:
            return self.resolve_builtin(builtin)  # type: ignore[arg-type]
        return builtin  # type: ignore[return-value]

    def shadow_message(self, name: str, plugins: list[Any]) -> str:
        """What is said about plugins that offer the built-in ``name`` (warning and listing)."""
        who = ", ".join(f"{getattr(p, 'source', p)!r}" for p in plugins)
        return (
            f"plugin distribution {who} offers {self._field()} {name!r}, which is built in; refusing to replace it "
            f"silently: {name!r} is the built-in. Set {OVERRIDE_ENV}={name} to use the plugin's, or uninstall it."
        )

    def conflicts(self, name: str) -> str | None:
        """Why ``name`` has more than one provider, or ``None`` (for listings; imports no plugin)."""
        self._discover()
        with self._lock:
            providers = list(self._providers.get(name, []))
            builtin = name in self.builtin()
            replaced = name in self._overrides
        plugins = [p for p in providers if p.loader is not None]
        code = [p for p in providers if p.loader is None]
        if builtin and code and replaced:
            return f"built-in replaced by {code[-1].source} (register_{self.kind}(..., replace=True))"
        if builtin and plugins and not self.allowed_override(name):
            return f"plugin {', '.join(p.source for p in plugins)} offers this built-in name: ignored"
        if builtin and plugins:
            return f"built-in replaced by plugin {plugins[0].source} ({OVERRIDE_ENV})"
        if len(plugins) > 1 and not code:
            return f"provided by {len(plugins)} plugins ({', '.join(p.source for p in plugins)}): refused"
        return None

    def _load(self, name: str, provider: _Provider) -> S:
        if provider.spec is None:  # two threads may both load; both get an equal record
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
        with self._lock:
            builtin = name in self.builtin()
            providers = list(self._providers.get(name, []))
        if builtin:
            out.append(("builtin", None, True))
        for p in providers:
            importable = p.module is None or deps.importable(p.module)
            out.append((p.source, p.entry_point, importable))
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# -- the optimizer names --------------------------------------------------------------------------------
def _builtin_optimizers() -> list[OptimizerSpec]:
    from .families import all_records

    return all_records()


def spec_from_object(name: str, obj: Any, source: str, meta: dict[str, Any] | None = None) -> OptimizerSpec:
    """A record for whatever a plugin (or ``register_optimizer``) points at.

    - an ``OptimizerSpec``: used as it is (renamed to ``name``);
    - a ``torch.optim.Optimizer`` subclass: hyperparameters and options read from its signature;
    - any other callable: a builder ``(BuildContext) -> (cls_or_factory, kwargs)``.
    """
    import torch

    from .signature import signature_options
    from .spec import HPARAMS

    meta = dict(meta or {})
    if isinstance(obj, OptimizerSpec):
        return _checked(obj.variant(name=name, source=source, **meta), obj.target)
    if isinstance(obj, type) and not issubclass(obj, torch.optim.Optimizer):
        raise PluginError(
            f"optimizer plugin {name!r} from {source!r} points at the class {qualname(obj)}, which is not a "
            "torch.optim.Optimizer subclass: register an Optimizer subclass, an OptimizerSpec, or a builder "
            "function (ctx: BuildContext) -> (optimizer class or factory, kwargs) (docs/plugins.md)"
        )
    if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer):
        import inspect

        params = inspect.signature(obj.__init__).parameters
        betas = params["betas"].default if "betas" in params else None
        # TrainingArguments' (adam_beta1, adam_beta2) fit a constructor whose betas are two numbers; other
        # betas (AdEMAMix's three) stay an optim_args option with the constructor's default and length
        other_betas = isinstance(betas, (tuple, list)) and len(betas) != 2
        hparams = frozenset(h for h in HPARAMS if h in params and not (h == "betas" and other_betas))
        fields = {
            "target": obj,
            "family": "plugin",
            "description": (obj.__doc__ or obj.__name__).strip().splitlines()[0],
            "hparams": hparams,
            "options": signature_options(obj, skip=set(hparams) | {"params"}, ranges=True),
        }
        fields.update(meta)
        return _checked(OptimizerSpec(name=name, source=source, **fields), obj)
    if callable(obj):
        problem = builder_problem(obj)
        if problem:
            raise PluginError(
                f"optimizer plugin {name!r} from {source!r}: its builder {problem}. A builder is a function "
                "(ctx: BuildContext) -> (optimizer class or factory, kwargs dict); to register an optimizer class, "
                "pass a torch.optim.Optimizer subclass instead (docs/plugins.md)."
            )
        fields = {
            "target": obj,
            "builder": obj,
            "family": "plugin",
            "description": ((getattr(obj, "__doc__", None) or name).strip().splitlines() or [name])[0],
            "hparams": frozenset({"lr", "betas", "eps", "weight_decay"}),
            "supports_layerwise": False,
        }
        fields.update(meta)
        return OptimizerSpec(name=name, source=source, **fields)
    raise PluginError(
        f"optimizer plugin {name!r} from {source!r} points at {obj!r}: expected a torch.optim.Optimizer "
        "subclass, an OptimizerSpec or a builder function"
    )


def _refreshed(spec: OptimizerSpec) -> OptimizerSpec:
    """The built-in record as its ``refresh`` hook has it for the installed library (most have none)."""
    if spec.refresh is None:
        return spec
    from .deps import import_object

    hook = import_object(spec.refresh) if isinstance(spec.refresh, str) else spec.refresh
    return hook(spec)


optimizers: Registry[OptimizerSpec] = Registry(
    kind="optimizer",
    group=OPTIMIZER_GROUP,
    builtin_loader=_builtin_optimizers,
    plugin_adapter=lambda name, obj, source: spec_from_object(name, obj, source),
    resolve_builtin=_refreshed,
)


def register_optimizer(
    name: str, builder: Any = None, *, replace: bool = False, **meta: Any
) -> Any:
    """Register ``name`` -> an Optimizer subclass, an ``OptimizerSpec`` or a builder; call or decorator.

    Example::

        @register_optimizer("my_sgd", description="SGD with a twist")
        class MySGD(torch.optim.SGD): ...

    ``meta`` sets record fields (``description``, ``options``, ``needs_model``, ``target_modules`` ...).
    Replacing a built-in (``replace=True``) warns with ``BuiltinReplacedWarning`` naming the calling
    module, which ``list_optimizers()`` then shows as the name's ``source``.
    """
    check_new_name("optimizer", name)  # before anything: as a decorator too, the bad name is refused at once

    def attach(obj: Any) -> Any:
        by = caller_module()
        source = by if replace and name in optimizers.builtin() else "register_optimizer"
        spec = spec_from_object(name, obj, source, meta)
        optimizers.register(spec, source=source, replace=replace, by=by)
        return obj

    if builder is None:
        return attach
    return attach(builder)


def unregister_optimizer(name: str) -> None:
    """Forget a name registered in code (plugins and built-ins stay)."""
    optimizers.unregister(name)


def builtin_names() -> list[str]:
    return sorted(optimizers.builtin())



def builder_problem(builder: Any) -> str | None:
    """Why ``builder`` cannot be called with one ``BuildContext`` (``None`` when it can, as far as its signature
    says)."""
    import inspect

    if not callable(builder):
        return f"is {shorten(builder)}, which cannot be called"
    try:
        inspect.signature(builder).bind(None)
    except TypeError:
        return f"({qualname(builder)}{signature_text(builder)}) cannot be called with one argument"
    except ValueError:  # no signature (a builtin): let the call decide
        pass
    return None


def unpassed_arguments(spec: OptimizerSpec, cls: Any) -> list[str]:
    """The constructor arguments of ``cls`` (a record's optimizer class) that have no default and that the
    registry never passes: not the parameters (first, positional), not a hyperparameter the record takes, not
    a declared option, not ``fixed``."""
    import inspect

    if spec.builder is not None or not isinstance(cls, type):
        return []
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # after self
    except (TypeError, ValueError):
        return []
    passed = set(spec.option_map) | set(spec.fixed) | (set(spec.hparams) & {"lr", "betas", "eps", "weight_decay"})
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    params_arg = positional[0].name if positional else None  # the registry passes the groups here
    return [
        p.name for p in params
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name != params_arg and p.name not in passed
    ]


def _checked(spec: OptimizerSpec, cls: Any) -> OptimizerSpec:
    """``spec``, refused when its class needs a constructor argument the registry would never pass."""
    missing = unpassed_arguments(spec, cls)
    if missing:
        import inspect

        kinds = {p.name: p.kind for p in inspect.signature(cls.__init__).parameters.values()}
        what = ", ".join(
            f"{'keyword-only ' if kinds[m] is inspect.Parameter.KEYWORD_ONLY else ''}argument {m!r}" for m in missing
        )
        raise PluginError(
            f"optimizer plugin {spec.name!r} from {spec.source!r}: {qualname(cls)}.__init__ needs {what} without a "
            "default, which the registry never passes (it passes the parameters, the hyperparameters the record "
            "takes, its declared options and `fixed`). Give the argument a default, declare it as an option "
            f"(options=(Option({missing[0]!r}, 'float', required=True),) when registering), or register a builder."
        )
    return spec


def load_builder(spec: OptimizerSpec) -> Callable[..., Any]:
    """The record's builder, refused with a ``ValueError`` unless it can be called with one BuildContext."""
    builder = deps.import_object(spec.builder) if isinstance(spec.builder, str) else spec.builder
    problem = builder_problem(builder)
    if problem:
        raise ValueError(
            f"optim={spec.name!r} (from {spec.source}): its builder {problem}. A builder is a function "
            "(ctx: BuildContext) -> (optimizer class or factory, kwargs dict); to register an optimizer class, "
            "pass a torch.optim.Optimizer subclass instead (docs/plugins.md)."
        )
    return builder  # type: ignore[return-value]


def qualname(obj: Any) -> str:
    """How a message names a function or class: its qualified name, else its type's."""
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def signature_text(obj: Any) -> str:
    """``obj``'s signature as written, or ``(...)`` when it has none."""
    import inspect

    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
