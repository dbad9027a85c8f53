"""Scheduler records, their registry and ``create_scheduler``: ``lr_scheduler_type`` gets what ``optim`` gets.

A scheduler record names a function ``(optimizer, num_warmup_steps, num_training_steps, **kwargs)``
or an ``LRScheduler`` subclass, declares its typed options, and says whether it needs evaluation
metrics. ``lr_scheduler_kwargs`` is parsed against those options in ``optim_args.parse_options``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
    #: A ``(ctx) -> LRScheduler`` function replacing the generic call, for schedulers that need more.
    builder: str | Callable[..., Any] | None = None
    source: str = "builtin"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def option_map(self) -> dict[str, Option]:
        return {o.name: o for o in self.options}


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
    ),
    SchedulerSpec(
        "cosine_with_min_lr", f"{_TF}:get_cosine_with_min_lr_schedule_with_warmup",
        "Linear warm-up, then cosine decay to a minimum learning rate.", options=(_CYCLES, *_MIN_LR),
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
        "Warm-up, stable phase, then decay (WSD).",
        options=(
            opt("num_decay_steps", "int", None, "steps of the decay phase"),
            opt("num_stable_steps", "int", None, "steps of the stable phase"),
            opt("warmup_type", "str", "linear", "linear, cosine or 1-sqrt", choices=("linear", "cosine", "1-sqrt")),
            opt("decay_type", "str", "cosine", "linear, cosine or 1-sqrt", choices=("linear", "cosine", "1-sqrt")),
            opt("min_lr_ratio", "float", 0.0, "final rate as a fraction of the initial one"),
            _CYCLES,
        ),
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
    """A scheduler record for an ``LRScheduler`` subclass, a scheduler function or a ``SchedulerSpec``."""
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
    }
    fields.update(meta)
    return SchedulerSpec(name=name, source=source, **fields)


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
    def attach(obj: Any) -> Any:
        schedulers.register(spec_from_object(name, obj, "register_scheduler", meta), replace=replace)
        return obj

    return attach if scheduler is None else attach(scheduler)


def _name_of(args: Any) -> str:
    value = getattr(args, "lr_scheduler_type", "linear")
    return str(getattr(value, "value", value))


def parse_scheduler_kwargs(spec: SchedulerSpec, raw: Any) -> dict[str, Any]:
    """Typed ``lr_scheduler_kwargs``; the step counts belong to the Trainer, not the kwargs."""
    if isinstance(raw, dict) or isinstance(raw, str):
        from .optim_args import to_mapping

        mapping = to_mapping(raw) if raw else {}
        clash = [k for k in _STEP_ARGS if k in mapping]
        if clash:
            raise ValueError(
                f"lr_scheduler_kwargs key {clash[0]!r} is set by the Trainer from max_steps / warmup_steps; "
                "remove it from lr_scheduler_kwargs and set TrainingArguments.warmup_steps / max_steps instead"
            )
        raw = mapping
    return parse_options(
        raw, spec.options, subject=f"lr_scheduler_type={spec.name!r}", where="lr_scheduler_kwargs"
    )


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
        return builder(optimizer, warmup, num_training_steps, kwargs, args)
    target = deps.import_object(spec.target) if isinstance(spec.target, str) else spec.target
    steps = {"num_warmup_steps": warmup, "num_training_steps": num_training_steps}
    call = {k: v for k, v in steps.items() if k in spec.takes}
    return target(optimizer, **call, **kwargs)


def check_scheduler_args(args: Any) -> None:
    """Early checks when TrainingArguments are created: the name, kwargs and evaluation need."""
    spec = schedulers.get(_name_of(args))
    parse_scheduler_kwargs(spec, getattr(args, "lr_scheduler_kwargs", None))
    strategy = str(getattr(getattr(args, "eval_strategy", "no"), "value", getattr(args, "eval_strategy", "no")))
    if spec.needs_eval and strategy == "no":
        raise ValueError(
            f"lr_scheduler_type={spec.name!r} changes the rate from evaluation results, but eval_strategy='no'. "
            "Set eval_strategy='steps' (with eval_steps) or 'epoch', and pass an eval_dataset."
        )
