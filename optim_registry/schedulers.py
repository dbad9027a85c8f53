"""Scheduler records, their registry and ``create_scheduler``: ``lr_scheduler_type`` gets what ``optim`` gets.

A scheduler record names a function ``(optimizer, num_warmup_steps, num_training_steps, **kwargs)``
or an ``LRScheduler`` subclass, declares its typed options, and says whether it needs evaluation
metrics. ``lr_scheduler_kwargs`` (a dict, a JSON string or ``"k=v,k=v"``) is parsed against those
options in ``optim_args.parse_options``. transformers' names point at transformers' own functions;
every built-in record lives in ``builtin.schedulers``, the extra names' functions in ``schedule_functions``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .builtin.schedulers import reference_lr
from .optim_args import parse_options
from .plugins import SCHEDULER_GROUP
from .registry import PluginError, Registry
from .spec import STEP_ARGS, RunFacts, SchedulerSpec


def run_facts(args: Any, num_training_steps: int | None = None) -> RunFacts:
    """``RunFacts`` from the arguments alone (``num_training_steps`` when the Trainer knows it)."""
    total = num_training_steps
    if total is None:
        max_steps = int(getattr(args, "max_steps", -1) or -1)
        total = max_steps if max_steps > 0 else None
    optim_spec = _optimizer_spec(args)
    raw = float(getattr(args, "warmup_steps", 0) or 0)
    if raw <= 0 or (optim_spec is not None and optim_spec.owns_warmup):
        warmup: int | None = 0
    elif raw >= 1:
        warmup = int(raw)
    else:
        warmup = math.ceil(total * raw) if total is not None else None
    return RunFacts(learning_rate=_args_lr(args, optim_spec), total_steps=total, warmup_steps=warmup)


def _optimizer_spec(args: Any) -> Any:
    from .registry import optimizers

    name = getattr(args, "optim", None)
    name = str(getattr(name, "value", name))
    return optimizers.get(name) if name in optimizers else None


def _args_lr(args: Any, optim_spec: Any) -> float | None:
    """``optim_args``' ``lr`` when it overrides the learning rate, else ``learning_rate``."""
    if optim_spec is not None:
        from .build import parse_optim_args

        try:
            given = parse_optim_args(optim_spec, getattr(args, "optim_args", None)).get("lr")
        except ValueError:  # reported by the optimizer's own check
            given = None
        if given is not None:
            return float(given)
    value = getattr(args, "learning_rate", None)
    return None if value is None else float(value)


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
    from .builtin.schedulers import RECORDS

    return list(RECORDS)


def spec_from_object(name: str, obj: Any, source: str, meta: dict[str, Any] | None = None) -> SchedulerSpec:
    """A scheduler record for an ``LRScheduler`` subclass, a scheduler function or a ``SchedulerSpec``.

    Options are typed from the signature's defaults (``optimizer``, ``last_epoch``, ``verbose`` and the
    step counts excluded). A ``ReduceLROnPlateau`` / ``GreedyLR`` subclass is marked ``needs_eval``: the
    Trainer steps those with evaluation metrics.
    """
    import torch

    from .builtin.schedulers import LAST_EPOCH
    from .signature import signature_options

    meta = dict(meta or {})
    if isinstance(obj, SchedulerSpec):
        return replace(obj, name=name, source=source, **meta)
    if not callable(obj):
        raise PluginError(f"scheduler plugin {name!r} from {source!r} points at {obj!r}: not callable")
    is_class = isinstance(obj, type) and issubclass(obj, torch.optim.lr_scheduler.LRScheduler)
    try:
        params = inspect.signature(obj.__init__ if is_class else obj).parameters
    except (TypeError, ValueError):
        params = {}
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


def _name_of(args: Any) -> str:
    value = getattr(args, "lr_scheduler_type", "linear")
    return str(getattr(value, "value", value))


def parse_scheduler_kwargs(
    spec: SchedulerSpec, raw: Any, *, run: RunFacts | None = None, strict: bool = True
) -> dict[str, Any]:
    """Typed ``lr_scheduler_kwargs`` for ``spec``: a dict, a JSON object string or ``"k=v,k=v"``.

    Values are typed by the declared options (``"1e-6"`` from YAML becomes a float) and checked against
    their ranges and the record's ``check`` (with ``run``, what is known about the run); a wrong type or
    value is a ``ValueError`` naming the key. The step counts belong to the Trainer, not the kwargs.
    ``strict=False`` (when the arguments are created) leaves out keys ``spec`` does not take: the stock
    class accepts them there, since ``set_lr_scheduler`` may still change the scheduler; they are
    refused when training starts.
    """
    from .optim_args import to_mapping

    mapping = to_mapping(raw, "lr_scheduler_kwargs") if raw else {}
    clash = [k for k in STEP_ARGS if k in mapping]
    if clash:
        raise ValueError(
            f"lr_scheduler_kwargs key {clash[0]!r} is set by the Trainer from max_steps / warmup_steps; "
            "remove it from lr_scheduler_kwargs and set TrainingArguments.warmup_steps / max_steps instead"
        )
    unknown = [] if strict else [k for k in mapping if k not in spec.option_map]
    subject = f"lr_scheduler_type={spec.name!r}"
    typed = parse_options(
        {k: v for k, v in mapping.items() if k not in unknown}, spec.options, subject=subject,
        where="lr_scheduler_kwargs",
    )
    if spec.check is not None:
        try:
            _call_check(spec.check, typed, run or RunFacts())
        except ValueError as exc:
            if not unknown:
                raise
            # Refused now anyway: a key the scheduler does not take is then the likelier cause (a typo of
            # the missing key), so say that first.
            try:
                parse_options({k: mapping[k] for k in unknown}, spec.options, subject=subject,
                              where="lr_scheduler_kwargs")
            except ValueError as unknown_exc:
                raise ValueError(f"{unknown_exc}. Without it: {exc}") from None
            raise
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


def create_scheduler(args: Any, optimizer: Any, num_training_steps: int, *, warmup: int | None = None) -> Any:
    """The scheduler ``args.lr_scheduler_type`` names, driving every param group of ``optimizer``.

    ``warmup`` overrides the warm-up steps taken from the arguments (0 for optimizers that warm up
    themselves).
    """
    from . import deps

    spec = schedulers.get(_name_of(args))
    if warmup is None:
        warmup = args.get_warmup_steps(num_training_steps) if hasattr(args, "get_warmup_steps") else 0
    run = RunFacts(learning_rate=reference_lr(optimizer, args), total_steps=num_training_steps, warmup_steps=warmup)
    kwargs = parse_scheduler_kwargs(spec, getattr(args, "lr_scheduler_kwargs", None), run=run)
    _start_from(optimizer, kwargs)
    if spec.builder is not None:
        builder = deps.import_object(spec.builder) if isinstance(spec.builder, str) else spec.builder
        scheduler = builder(optimizer, warmup, num_training_steps, kwargs, args)
    else:
        target = deps.import_object(spec.target) if isinstance(spec.target, str) else spec.target
        steps = {"num_warmup_steps": warmup, "num_training_steps": num_training_steps}
        call = {k: v for k, v in steps.items() if k in spec.takes}
        scheduler = target(optimizer, **call, **kwargs)
    if spec.needs_eval and not isinstance(scheduler, _metric_driven_types()):
        # The stock Trainer passes metrics only to these types; anything else would be stepped every
        # optimizer step without them.
        raise ValueError(
            f"lr_scheduler_type={spec.name!r} is declared metric-driven (needs_eval) but built a "
            f"{type(scheduler).__name__}; the Trainer steps only ReduceLROnPlateau / GreedyLR (and subclasses) "
            "with evaluation metrics. Subclass one of them, or register the scheduler without needs_eval."
        )
    return scheduler


def check_scheduler_args(args: Any, num_training_steps: int | None = None, *, strict: bool = False) -> None:
    """The scheduler checks the arguments allow: the name, the kwargs' types and ranges, the record's
    cross-field rules, the evaluation need.

    When the arguments are created (``strict=False``), keys the scheduler does not take are left for
    later; the Trainer calls this again with ``strict=True`` and the run's length before it builds the
    optimizer, so a refused scheduler never leaves an optimizer's hooks behind.

    Also gives metric-driven names the default transformers gives its own (``reduce_lr_on_plateau``,
    ``greedy``): ``metric_for_best_model="loss"`` (lower is better), which the Trainer steps them with.
    """
    spec = schedulers.get(_name_of(args))
    parse_scheduler_kwargs(spec, getattr(args, "lr_scheduler_kwargs", None), run=run_facts(args, num_training_steps),
                           strict=strict)
    strategy = str(getattr(getattr(args, "eval_strategy", "no"), "value", getattr(args, "eval_strategy", "no")))
    if spec.needs_eval and strategy == "no":
        raise ValueError(
            f"lr_scheduler_type={spec.name!r} changes the rate from evaluation results, but eval_strategy='no'. "
            "Set eval_strategy='steps' (with eval_steps) or 'epoch', and pass an eval_dataset."
        )
    if spec.needs_eval and hasattr(args, "metric_for_best_model") and args.metric_for_best_model is None:
        args.metric_for_best_model = "loss"
        if getattr(args, "greater_is_better", None) is None:
            args.greater_is_better = False
