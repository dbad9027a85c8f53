"""One record per registered name, for ``list_optimizers()``, the CLI and the generated docs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from . import deps
from .spec import OptimizerSpec


@dataclass(frozen=True)
class OptimizerInfo:
    """What ``list_optimizers()`` returns for one name (no optimizer package is imported)."""

    name: str
    description: str
    family: str
    requires: list[str]
    available: bool
    source: str
    options: dict[str, dict[str, Any]]
    hparams: list[str]
    needs_gpu: str | None
    unsupported: str | None
    layerwise: bool
    supports_layerwise: bool
    protocol: str
    state_bytes: float | None
    install: str | None
    paper: str = ""
    importable: bool | None = None
    providers: list[str] = field(default_factory=list)
    #: Why more than one provider offers this name and which one is used (``None``: no conflict).
    conflict: str | None = None
    #: The record this layer-wise twin or preset derives from (``None`` for a base record).
    base: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def info(spec: OptimizerSpec, providers: list[tuple[str, str | None, bool]] | None = None) -> OptimizerInfo:
    from .spec import option_table

    absent = deps.missing(spec.requires)
    options = {
        o.name: {"type": o.type, "default": _jsonable(o.default), "help": o.help,
                 **({"choices": list(o.choices)} if o.choices else {}),
                 **({"valid": o.describe()} if o.describe() else {})}
        for o in option_table(spec)
    }
    providers = providers or []
    return OptimizerInfo(
        name=spec.name,
        description=spec.description,
        family=spec.family,
        requires=[r.pip for r in spec.requires],
        available=not absent,
        source=spec.source,
        options=options,
        hparams=sorted(spec.hparams),
        needs_gpu=spec.needs_gpu,
        unsupported=spec.unsupported,
        layerwise=spec.layerwise,
        supports_layerwise=spec.supports_layerwise,
        protocol=spec.protocol,
        state_bytes=spec.state_bytes,
        install=" && ".join(r.pip_line for r in absent) or None,
        paper=spec.paper,
        importable=all(p[2] for p in providers) if providers else None,
        providers=[p[0] for p in providers],
        base=spec.base,
    )


def layerwise_twins(records: Iterable[Any]) -> dict[str, str]:
    """``{base name: its layer-wise twin's name}``, read from the twins' ``base`` field (records or infos)."""
    return {r.base: r.name for r in records if r.layerwise and r.base}


def layerwise_twin(name: str) -> str | None:
    """The layer-wise twin of the built-in ``name`` (``None`` when it has none), found by the twin's ``base``."""
    from .registry import optimizers

    return layerwise_twins(optimizers.builtin().values()).get(name)


def _plugin_info(name: str, providers: list[tuple[str, str | None, bool]]) -> OptimizerInfo:
    """A plugin name described from metadata alone (its code is not imported for a listing)."""
    source = " & ".join(p[0] for p in providers)
    return OptimizerInfo(
        name=name, description=f"plugin ({providers[0][1]})", family="plugin", requires=[],
        available=all(p[2] for p in providers), source=source, options={}, hparams=[], needs_gpu=None,
        unsupported=None, layerwise=False, supports_layerwise=False, protocol="step", state_bytes=None, install=None,
        importable=all(p[2] for p in providers), providers=[p[0] for p in providers],
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def list_optimizers() -> list[OptimizerInfo]:
    """Every registered optimizer name, built-in and plugin, sorted by name."""
    from .registry import optimizers

    out = []
    builtin = optimizers.builtin()
    for name in optimizers.names():
        providers = optimizers.provenance(name)
        with optimizers._lock:
            loaded = [p for p in optimizers._providers.get(name, []) if p.spec is not None]
        conflict = optimizers.conflicts(name)
        if loaded:
            record = info(loaded[-1].spec, providers)
        elif name in builtin:
            record = info(builtin[name], providers if len(providers) > 1 else None)
        else:
            record = _plugin_info(name, providers)
        out.append(replace(record, conflict=conflict) if conflict else record)
    return out


def list_schedulers() -> list[dict[str, Any]]:
    """Every registered scheduler name with its options."""
    from .schedulers import schedulers

    out = []
    for name in schedulers.names():
        providers = schedulers.provenance(name)
        if name in schedulers.builtin():
            spec = schedulers.builtin()[name]
            options = {o.name: {"type": o.type, "default": _jsonable(o.default), "help": o.help} for o in spec.options}
            out.append({"name": name, "description": spec.description, "source": "builtin", "options": options,
                        "needs_eval": spec.needs_eval})
        else:
            out.append({"name": name, "description": "plugin", "source": " & ".join(p[0] for p in providers),
                        "options": {}, "needs_eval": False})
    return out
