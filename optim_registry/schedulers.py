"""Scheduler records and their registry: ``lr_scheduler_type`` gets what ``optim`` gets.

A scheduler record names a function ``(optimizer, num_warmup_steps, num_training_steps, **kwargs)``
or an ``LRScheduler`` subclass, declares its typed options, and says whether it needs evaluation
metrics. ``lr_scheduler_kwargs`` (a dict, a JSON string or ``"k=v,k=v"``) is typed against those
options in ``optim_args.parse_options``, once, when the arguments are resolved (``plan.Plan.schedule_kwargs``);
``build.create_scheduler`` builds the scheduler. transformers' names point at transformers' own functions;
every built-in record lives in ``schedules.records``, the extra names' functions in ``schedules.functions``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .optim_args import parse_options
from .plugins import SCHEDULER_GROUP
from .registry import PluginError, Registry
from .spec import STEP_ARGS, RunFacts, SchedulerSpec


def _call_check(check: Callable[..., None], kwargs: dict[str, Any], run: RunFacts) -> None:
    """Call a record's check with ``run`` when it takes two positional arguments (older hooks take one)."""
    try:
        params = inspect.signature(check).parameters.values()
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        takes_run = len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)
    except (TypeError, ValueError):
        takes_run = False
    check(kwargs, run) if takes_run else check(kwargs)


def _builtin_schedulers() -> list[SchedulerSpec]:
    from .schedules.records import RECORDS

    return list(RECORDS)


def spec_from_object(name: str, obj: Any, source: str, meta: dict[str, Any] | None = None) -> SchedulerSpec:
    """A scheduler record for an ``LRScheduler`` subclass, a scheduler function or a ``SchedulerSpec``.

    Options are typed from the signature's defaults (``optimizer``, ``last_epoch``, ``verbose`` and the
    step counts excluded). A ``ReduceLROnPlateau`` / ``GreedyLR`` subclass is marked ``needs_eval``: the
    Trainer steps those with evaluation metrics.
    """
    import torch

    from .schedules.records import LAST_EPOCH
    from .signature import signature_options

    meta = dict(meta or {})
    if isinstance(obj, SchedulerSpec):
        return replace(obj, name=name, source=source, **meta)
    shape = ("an LRScheduler subclass, or a function (optimizer, num_warmup_steps, num_training_steps, **kwargs) "
             "-> LRScheduler (docs/plugins.md)")
    if not callable(obj):
        raise PluginError(f"scheduler plugin {name!r} from {source!r} points at {obj!r}: not callable; register {shape}")
    is_class = isinstance(obj, type) and issubclass(obj, torch.optim.lr_scheduler.LRScheduler)
    if isinstance(obj, type) and not is_class and not issubclass(obj, _metric_driven_types()):
        raise PluginError(
            f"scheduler plugin {name!r} from {source!r} points at the class {obj.__qualname__}, which is not a "
            f"torch.optim.lr_scheduler.LRScheduler subclass; register {shape}"
        )
    try:
        params = inspect.signature(obj.__init__ if isinstance(obj, type) else obj).parameters
    except (TypeError, ValueError):
        params = {}
    else:
        listed = list(params.values())[1 if isinstance(obj, type) else 0:]
        takes_optimizer = any(p.kind is p.VAR_POSITIONAL for p in listed) or (
            bool(listed) and listed[0].kind in (listed[0].POSITIONAL_ONLY, listed[0].POSITIONAL_OR_KEYWORD)
        )
        if not takes_optimizer:
            label = getattr(obj, "__qualname__", None) or type(obj).__name__
            raise PluginError(
                f"scheduler plugin {name!r} from {source!r} points at {label}{inspect.signature(obj)}, which takes no "
                f"positional argument for the optimizer the Trainer passes first; register {shape}"
            )
    takes = frozenset(a for a in STEP_ARGS if a in params)
    skip = {"optimizer", "last_epoch", "verbose", *STEP_ARGS}
    fields = {
        "target": obj,
        "description": ((obj.__doc__ or name).strip().splitlines() or [name])[0],
        # last_epoch is typed here, not from the signature: an int >= -1 whatever the default says.
        "options": signature_options(obj, skip=skip) + ((LAST_EPOCH,) if "last_epoch" in params else ()),
        "takes": takes,
        "needs_eval": isinstance(obj, type) and issubclass(obj, _metric_driven_types()),
    }
    fields.update(meta)
    return SchedulerSpec(name=name, source=source, **fields)


def _metric_driven_types() -> tuple[type, ...]:
    """The scheduler types the stock Trainer steps with ``metrics[metric_for_best_model]``."""
    import torch
    from transformers.optimization import GreedyLR

    return (torch.optim.lr_scheduler.ReduceLROnPlateau, GreedyLR)


schedulers: Registry[SchedulerSpec] = Registry(
    kind="scheduler",
    group=SCHEDULER_GROUP,
    builtin_loader=_builtin_schedulers,
    plugin_adapter=lambda name, obj, source: spec_from_object(name, obj, source),
)


def register_scheduler(name: str, scheduler: Any = None, *, replace: bool = False, **meta: Any) -> Any:
    """Register ``name`` -> an LRScheduler subclass, a scheduler function or a ``SchedulerSpec``.

    Usable as a call or a decorator, like ``register_optimizer``.
    """
    from .registry import caller_module, check_new_name

    check_new_name("scheduler", name)

    def attach(obj: Any) -> Any:
        by = caller_module()
        source = by if replace and name in schedulers.builtin() else "register_scheduler"
        schedulers.register(spec_from_object(name, obj, source, meta), source=source, replace=replace, by=by)
        return obj

    return attach if scheduler is None else attach(scheduler)


def type_scheduler_kwargs(spec: SchedulerSpec, raw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(typed kwargs spec takes, raw kwargs it does not take)`` from ``lr_scheduler_kwargs``: a dict, a JSON
    object string or ``"k=v,k=v"``.

    Values are typed by the declared options (``"1e-6"`` from YAML becomes a float) and checked against
    their ranges; a wrong type or value is a ``ValueError`` naming the key. The step counts belong to the
    Trainer, not the kwargs. Keys ``spec`` does not take are handed back untyped: the stock class accepts
    them when the arguments are created (``set_lr_scheduler`` may still change the scheduler), and
    ``check_scheduler_kwargs(..., strict=True)`` refuses them when training starts.
    """
    from .optim_args import to_mapping

    mapping = to_mapping(raw, "lr_scheduler_kwargs") if raw else {}
    clash = [k for k in STEP_ARGS if k in mapping]
    if clash:
        raise ValueError(
            f"lr_scheduler_kwargs key {clash[0]!r} is set by the Trainer from max_steps / warmup_steps; "
            "remove it from lr_scheduler_kwargs and set TrainingArguments.warmup_steps / max_steps instead"
        )
    unknown = {k: v for k, v in mapping.items() if k not in spec.option_map}
    typed = parse_options(
        {k: v for k, v in mapping.items() if k not in unknown}, spec.options, subject=f"lr_scheduler_type={spec.name!r}",
        where="lr_scheduler_kwargs",
    )
    return typed, unknown


def check_scheduler_kwargs(
    spec: SchedulerSpec, typed: dict[str, Any], unknown: dict[str, Any], *, run: RunFacts | None = None,
    strict: bool = True,
) -> None:
    """The record's ``check`` on the typed kwargs (with ``run``, what is known about the run); ``strict`` also
    refuses the keys ``spec`` does not take, naming the accepted ones."""

    def refuse_unknown() -> None:
        parse_options(unknown, spec.options, subject=f"lr_scheduler_type={spec.name!r}", where="lr_scheduler_kwargs")

    if strict and unknown:
        refuse_unknown()
    if spec.check is None:
        return
    try:
        _call_check(spec.check, typed, run or RunFacts())
    except ValueError as exc:
        if not unknown:
            raise
        # Refused now anyway: a key the scheduler does not take is then the likelier cause (a typo of the
        # missing key), so say that first.
        try:
            refuse_unknown()
        except ValueError as unknown_exc:
            raise ValueError(f"{unknown_exc}. Without it: {exc}") from None
        raise


def parse_scheduler_kwargs(
    spec: SchedulerSpec, raw: Any, *, run: RunFacts | None = None, strict: bool = True
) -> dict[str, Any]:
    """Typed and checked ``lr_scheduler_kwargs`` for ``spec`` (``type_scheduler_kwargs`` then
    ``check_scheduler_kwargs``); ``strict=False`` leaves out keys ``spec`` does not take."""
    typed, unknown = type_scheduler_kwargs(spec, raw)
    check_scheduler_kwargs(spec, typed, unknown, run=run, strict=strict)
    return typed


def check_kwargs_json(args: Any) -> None:
    """A JSON ``lr_scheduler_kwargs`` string that does not parse, refused with the key and the fix (the parent
    class would raise json's bare ``Expecting ',' delimiter``)."""
    from .optim_args import to_mapping

    raw = getattr(args, "lr_scheduler_kwargs", None)
    if isinstance(raw, str) and raw.strip().startswith("{"):
        to_mapping(raw, "lr_scheduler_kwargs")


def _start_from(optimizer: Any, kwargs: dict[str, Any]) -> None:
    """``last_epoch >= 0`` starts the schedule after that step. torch then reads each group's
    ``initial_lr``, which only an earlier scheduler leaves behind (transformers' Trainer would raise a
    KeyError): a fresh optimizer's groups start from their rate."""
    if kwargs.get("last_epoch", -1) >= 0:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
