"""The registry instances: built-in records, plugin adapters, and ``register_optimizer``."""

from __future__ import annotations

from typing import Any

from .registry import PluginError, Registry, caller_module, check_new_name
from .spec import OptimizerSpec

OPTIMIZER_GROUP = "optim_registry.optimizers"
SCHEDULER_GROUP = "optim_registry.schedulers"


def _builtin_optimizers() -> list[OptimizerSpec]:
    from .builtin import all_records

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
        return obj.variant(name=name, source=source, **meta)
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
        return OptimizerSpec(name=name, source=source, **fields)
    if callable(obj):
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

