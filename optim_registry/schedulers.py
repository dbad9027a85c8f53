"""Scheduler records, their registry and ``create_scheduler``: ``lr_scheduler_type`` gets what ``optim`` gets.

A scheduler record names a function ``(optimizer, num_warmup_steps, num_training_steps, **kwargs)``
or an ``LRScheduler`` subclass, declares its typed options, and says whether it needs evaluation
metrics. ``lr_scheduler_kwargs`` (a dict, a JSON string or ``"k=v,k=v"``) is parsed against those
options in ``optim_args.parse_options``. transformers' names point at transformers' own functions;
the extra names live in ``builtin_schedulers`` (records) and ``schedules`` (functions).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from .catalog import SCHEDULER_GROUP
from .optim_args import parse_options
from .registry import PluginError, Registry
from .spec import Option, opt

_STEP_ARGS = ("num_warmup_steps", "num_training_steps")


@dataclass(frozen=True)
class SchedulerSpec:
    """Everything the registry knows about one ``lr_scheduler_type`` name."""

    name: str
    target: str | Callable[..., Any] | type
    description: str
    options: tuple[Option, ...] = ()
    #: Which of num_warmup_steps / num_training_steps the target takes.
    takes: frozenset[str] = frozenset(_STEP_ARGS)
    #: Stepped with evaluation metrics (ReduceLROnPlateau, GreedyLR): needs eval during training.
    needs_eval: bool = False
    #: ``(optimizer, num_warmup_steps, num_training_steps, kwargs, args) -> scheduler`` replacing the
    #: generic call, for names whose kwargs must be converted first (ratios, absolute rates).
    builder: str | Callable[..., Any] | None = None
    #: ``(typed_kwargs) -> None`` raising ``ValueError`` for combinations no single option can refuse
    #: (a count and a ratio of the same phase); run when the arguments are created.
    check: Callable[[dict[str, Any]], None] | None = None
    source: str = "builtin"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def option_map(self) -> dict[str, Option]:
        return {o.name: o for o in self.options}


def reference_lr(optimizer: Any, args: Any = None) -> float:
    """The rate absolute scheduler options are relative to: ``optimizer.defaults['lr']`` as transformers
    reads it, else ``args.learning_rate`` (layer-wise optimizers carry no defaults), else the first group's."""
    for value in (getattr(optimizer, "defaults", {}).get("lr"), getattr(args, "learning_rate", None)):
        if value is not None and not isinstance(value, bool):
            return float(value)
    group = optimizer.param_groups[0]
    return float(group.get("initial_lr", group["lr"]))


def _one_of(kwargs: dict[str, Any], name: str, keys: tuple[str, str], *, required: bool, hint: str) -> None:
    given = [k for k in keys if kwargs.get(k) is not None]
    if len(given) > 1:
        raise ValueError(
            f"lr_scheduler_type={name!r}: lr_scheduler_kwargs sets both {keys[0]!r} and {keys[1]!r}; keep one ({hint})"
        )
    if required and not given:
        raise ValueError(
            f"lr_scheduler_type={name!r} needs lr_scheduler_kwargs {keys[0]!r} or {keys[1]!r} ({hint}), "
            f"e.g. lr_scheduler_kwargs='{keys[1]}=0.1'"
        )


def _check_min_lr(kwargs: dict[str, Any], *, name: str) -> None:
    _one_of(kwargs, name, ("min_lr", "min_lr_rate"), required=True,
            hint="min_lr is absolute, min_lr_rate a fraction of the learning rate")


def _build_min_lr(optimizer: Any, warmup: int, total: int, kwargs: dict[str, Any], args: Any, *, target: str) -> Any:
    from . import deps

    kwargs = dict(kwargs)
    min_lr = kwargs.pop("min_lr", None)
    if min_lr is not None:  # transformers divides by optimizer.defaults["lr"]; so do we, when it exists
        kwargs["min_lr_rate"] = min_lr / reference_lr(optimizer, args)
    return deps.import_object(target)(optimizer, warmup, total, **kwargs)


def _build_polynomial(optimizer: Any, warmup: int, total: int, kwargs: dict[str, Any], args: Any) -> Any:
    from .schedules import get_polynomial_schedule

    return get_polynomial_schedule(optimizer, warmup, total, lr_init=reference_lr(optimizer, args), **kwargs)


_WSD_PHASES = ("num_decay_steps", "decay_ratio", "num_stable_steps", "stable_ratio")


def _check_wsd(kwargs: dict[str, Any]) -> None:
    from .schedules import wsd_phase_steps

    wsd_phase_steps(1, **{k: kwargs[k] for k in _WSD_PHASES if k in kwargs})


def _build_wsd(optimizer: Any, warmup: int, total: int, kwargs: dict[str, Any], args: Any) -> Any:
    from transformers.optimization import get_wsd_schedule

    from .schedules import wsd_phase_steps

    kwargs = dict(kwargs)
    decay, stable = wsd_phase_steps(total, **{k: kwargs.pop(k) for k in _WSD_PHASES if k in kwargs})
    if stable is None and warmup + decay > total:
        raise ValueError(
            f"warmup_stable_decay: warm-up ({warmup}) + decay ({decay}) steps exceed the {total} training steps; "
            "shorten one of them (lr_scheduler_kwargs decay_ratio / num_decay_steps, TrainingArguments.warmup_steps)"
        )
    # transformers warns when both are given; with the stable phase known, the total is not needed.
    return get_wsd_schedule(optimizer, warmup, decay, num_training_steps=None if stable is not None else total,
                            num_stable_steps=stable, **kwargs)


_TF = "transformers.optimization"
_CYCLES = opt("num_cycles", "float", 0.5, "number of cosine waves (0.5: down to 0 once)")
_MIN_LR = (
    opt("min_lr", "float", None, "the lowest learning rate, absolute"),
    opt("min_lr_rate", "float", None, "the lowest learning rate, as a fraction of the initial one"),
)

BUILTIN = (
    SchedulerSpec("constant", f"{_TF}:get_constant_schedule", "Constant learning rate.", takes=frozenset()),
    SchedulerSpec(
        "constant_with_warmup", f"{_TF}:get_constant_schedule_with_warmup",
        "Linear warm-up, then constant.", takes=frozenset({"num_warmup_steps"}),
    ),
    SchedulerSpec("cosine", f"{_TF}:get_cosine_schedule_with_warmup", "Linear warm-up, then cosine decay.",
                  options=(_CYCLES,)),
    SchedulerSpec(
        "cosine_warmup_with_min_lr", f"{_TF}:get_cosine_with_min_lr_schedule_with_warmup_lr_rate",
        "Warm-up from a fraction of the rate, then cosine decay to a minimum.",
        options=(_CYCLES, *_MIN_LR, opt("warmup_lr_rate", "float", None, "warm-up start as a fraction")),
        builder=partial(_build_min_lr, target=f"{_TF}:get_cosine_with_min_lr_schedule_with_warmup_lr_rate"),
        check=partial(_check_min_lr, name="cosine_warmup_with_min_lr"),
    ),
    SchedulerSpec(
        "cosine_with_min_lr", f"{_TF}:get_cosine_with_min_lr_schedule_with_warmup",
        "Linear warm-up, then cosine decay to a minimum learning rate.", options=(_CYCLES, *_MIN_LR),
        builder=partial(_build_min_lr, target=f"{_TF}:get_cosine_with_min_lr_schedule_with_warmup"),
        check=partial(_check_min_lr, name="cosine_with_min_lr"),
    ),
    SchedulerSpec(
        "cosine_with_restarts", f"{_TF}:get_cosine_with_hard_restarts_schedule_with_warmup",
        "Linear warm-up, then cosine decay with hard restarts.",
        options=(opt("num_cycles", "int", 1, "number of hard restarts"),),
    ),
    SchedulerSpec(
        "greedy", f"{_TF}:get_greedy_schedule",
        "GreedyLR: raises the rate while the evaluation metric improves, lowers it when it does not.",
        takes=frozenset(), needs_eval=True,
        options=(
            opt("mode", "str", "min", "min: lower metric is better; max: higher", choices=("min", "max")),
            opt("factor", "float", 0.95, "multiplicative change per decision"),
            opt("patience", "int", 10, "evaluations without improvement before lowering"),
            opt("threshold", "float", 1e-6, "improvement that counts"),
            opt("threshold_mode", "str", "abs", "rel or abs", choices=("rel", "abs")),
            opt("cooldown", "int", 0, "evaluations to wait after a decrease"),
            opt("warmup", "int", 0, "evaluations to wait after an increase"),
            opt("min_lr", "float", 1e-3, "lowest learning rate"),
            opt("max_lr", "float", 1.0, "highest learning rate"),
            opt("eps", "float", 1e-8, "smallest change applied"),
            opt("smooth", "bool", False, "smooth the metric with a moving window"),
            opt("window_size", "int", 50, "window of the smoothing"),
            opt("reset_start", "int", 500, "after this many evaluations, reset at min_lr"),
        ),
    ),
    SchedulerSpec(
        "inverse_sqrt", f"{_TF}:get_inverse_sqrt_schedule", "Linear warm-up, then 1/sqrt(step) decay.",
        takes=frozenset({"num_warmup_steps"}),
        options=(opt("timescale", "int", None, "decay time scale (default: num_warmup_steps or 10,000)"),),
    ),
    SchedulerSpec("linear", f"{_TF}:get_linear_schedule_with_warmup", "Linear warm-up, then linear decay to 0."),
    SchedulerSpec(
        "polynomial", f"{_TF}:get_polynomial_decay_schedule_with_warmup",
        "Linear warm-up, then polynomial decay to lr_end.",
        options=(opt("lr_end", "float", 1e-7, "final learning rate"), opt("power", "float", 1.0, "power")),
        builder=_build_polynomial,
    ),
    SchedulerSpec(
        "reduce_lr_on_plateau", f"{_TF}:get_reduce_on_plateau_schedule",
        "ReduceLROnPlateau: lowers the rate when the evaluation metric stops improving.",
        takes=frozenset(), needs_eval=True,
        options=(
            opt("mode", "str", "min", "min or max", choices=("min", "max")),
            opt("factor", "float", 0.1, "multiplicative decrease"),
            opt("patience", "int", 10, "evaluations without improvement"),
            opt("threshold", "float", 1e-4, "relative improvement that counts"),
            opt("threshold_mode", "str", "rel", "rel or abs", choices=("rel", "abs")),
            opt("cooldown", "int", 0, "evaluations to wait after a decrease"),
            opt("min_lr", "float", 0.0, "lowest learning rate"),
            opt("eps", "float", 1e-8, "smallest change applied"),
        ),
    ),
    SchedulerSpec(
        "warmup_stable_decay", f"{_TF}:get_wsd_schedule",
        "Warm-up, stable phase, then decay (WSD); phases as step counts or fractions of the run.",
        options=(
            opt("num_decay_steps", "int", None, "steps of the decay phase (or decay_ratio)"),
            opt("decay_ratio", "float", None, "decay phase as a fraction of the run (or num_decay_steps)"),
            opt("num_stable_steps", "int", None, "steps of the stable phase (default: what warm-up and decay leave)"),
            opt("stable_ratio", "float", None, "stable phase as a fraction of the run (or num_stable_steps)"),
            opt("warmup_type", "str", "linear", "linear, cosine or 1-sqrt", choices=("linear", "cosine", "1-sqrt")),
            opt("decay_type", "str", "cosine", "linear, cosine or 1-sqrt", choices=("linear", "cosine", "1-sqrt")),
            opt("min_lr_ratio", "float", 0.0, "final rate as a fraction of the initial one"),
            _CYCLES,
        ),
        builder=_build_wsd, check=_check_wsd,
    ),
)


def _builtin_schedulers() -> list[SchedulerSpec]:
    records = list(BUILTIN)
    try:
        from .builtin_schedulers import RECORDS as more
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.builtin_schedulers":
            raise
        more = ()
    return records + list(more)


def spec_from_object(name: str, obj: Any, source: str, meta: dict[str, Any] | None = None) -> SchedulerSpec:
    """A scheduler record for an ``LRScheduler`` subclass, a scheduler function or a ``SchedulerSpec``.

    Options are typed from the signature's defaults (``optimizer``, ``last_epoch``, ``verbose`` and the
    step counts excluded). A ``ReduceLROnPlateau`` / ``GreedyLR`` subclass is marked ``needs_eval``: the
    Trainer steps those with evaluation metrics.
    """
    import torch

    from .build import signature_options

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
    takes = frozenset(a for a in _STEP_ARGS if a in params)
    skip = {"optimizer", "last_epoch", "verbose", *_STEP_ARGS}
    fields = {
        "target": obj,
        "description": ((obj.__doc__ or name).strip().splitlines() or [name])[0],
        "options": signature_options(obj, skip=skip),
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


def parse_scheduler_kwargs(spec: SchedulerSpec, raw: Any) -> dict[str, Any]:
    """Typed ``lr_scheduler_kwargs`` for ``spec``: a dict, a JSON object string or ``"k=v,k=v"``.

    Values are typed by the declared options (``"1e-6"`` from YAML becomes a float); an unknown key or a
    wrong type is a ``ValueError`` naming the key. The step counts belong to the Trainer, not the kwargs.
    """
    from .optim_args import to_mapping

    mapping = to_mapping(raw, "lr_scheduler_kwargs") if raw else {}
    clash = [k for k in _STEP_ARGS if k in mapping]
    if clash:
        raise ValueError(
            f"lr_scheduler_kwargs key {clash[0]!r} is set by the Trainer from max_steps / warmup_steps; "
            "remove it from lr_scheduler_kwargs and set TrainingArguments.warmup_steps / max_steps instead"
        )
    typed = parse_options(
        mapping, spec.options, subject=f"lr_scheduler_type={spec.name!r}", where="lr_scheduler_kwargs"
    )
    if spec.check is not None:
        spec.check(typed)
    return typed


def create_scheduler(args: Any, optimizer: Any, num_training_steps: int, *, warmup: int | None = None) -> Any:
    """The scheduler ``args.lr_scheduler_type`` names, driving every param group of ``optimizer``.

    ``warmup`` overrides the warm-up steps taken from the arguments (0 for optimizers that warm up
    themselves).
    """
    from . import deps

    spec = schedulers.get(_name_of(args))
    kwargs = parse_scheduler_kwargs(spec, getattr(args, "lr_scheduler_kwargs", None))
    if warmup is None:
        warmup = args.get_warmup_steps(num_training_steps) if hasattr(args, "get_warmup_steps") else 0
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


def check_scheduler_args(args: Any) -> None:
    """Early checks when TrainingArguments are created: the name, kwargs and evaluation need.

    Also gives metric-driven names the default transformers gives its own (``reduce_lr_on_plateau``,
    ``greedy``): ``metric_for_best_model="loss"`` (lower is better), which the Trainer steps them with.
    """
    spec = schedulers.get(_name_of(args))
    parse_scheduler_kwargs(spec, getattr(args, "lr_scheduler_kwargs", None))
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
