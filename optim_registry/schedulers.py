"""Scheduler records, their registry and ``create_scheduler``: ``lr_scheduler_type`` gets what ``optim`` gets.

A scheduler record names a function ``(optimizer, num_warmup_steps, num_training_steps, **kwargs)``
or an ``LRScheduler`` subclass, declares its typed options, and says whether it needs evaluation
metrics. ``lr_scheduler_kwargs`` (a dict, a JSON string or ``"k=v,k=v"``) is parsed against those
options in ``optim_args.parse_options``. transformers' names point at transformers' own functions;
the extra names live in ``builtin_schedulers`` (records) and ``schedule_functions`` (functions).
"""

from __future__ import annotations

import inspect
import math
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
    #: ``(typed_kwargs, run) -> None`` (or ``(typed_kwargs) -> None``) raising ``ValueError`` for what no
    #: single option's range can refuse: a count and a ratio of the same phase, a floor above the rate,
    #: phases longer than the run. ``run`` is a ``RunFacts``; its fields are ``None`` where the arguments
    #: do not tell yet. Run when the arguments are created, again before the optimizer is built, and
    #: when the scheduler is built.
    check: Callable[..., None] | None = None
    source: str = "builtin"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def option_map(self) -> dict[str, Option]:
        return {o.name: o for o in self.options}


@dataclass(frozen=True)
class RunFacts:
    """What is known about the run a schedule will drive, for the records' ``check`` hooks."""

    #: The rate absolute options (``min_lr``, ``lr_end``) are relative to.
    learning_rate: float | None = None
    #: Optimizer steps of the whole run (``max_steps``, or the Trainer's count).
    total_steps: int | None = None
    #: The schedule's warm-up in steps (0 for optimizers that warm up themselves); ``None`` while a
    #: fractional ``warmup_steps`` has no known total to be a fraction of.
    warmup_steps: int | None = None


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
    from .catalog import optimizers

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


def _not_above_rate(kwargs: dict[str, Any], run: RunFacts, key: str, *, name: str, strict: bool = False) -> None:
    """An absolute floor / end rate must stay below the learning rate (else the schedule climbs)."""
    value, lr = kwargs.get(key), run.learning_rate
    if value is None or lr is None:
        return
    if value > lr or (strict and value == lr):
        bound = f"[0, {lr:g})" if strict else f"[0, {lr:g}]"
        raise ValueError(
            f"lr_scheduler_type={name!r}: lr_scheduler_kwargs key {key!r} ({value:g}) is above the learning rate "
            f"({lr:g}), so the schedule would raise the rate instead of lowering it; valid range {bound}. "
            f"Lower {key} or raise learning_rate."
        )


def _fits_run(run: RunFacts, phases: dict[str, int], *, name: str, fix: str) -> None:
    """Refuse phases (warm-up, stable, decay) that together last longer than the run."""
    if run.total_steps is None or any(v is None for v in phases.values()):
        return
    if sum(phases.values()) > run.total_steps:
        parts = " + ".join(f"{k} ({v})" for k, v in phases.items())
        raise ValueError(
            f"lr_scheduler_type={name!r}: {parts} = {sum(phases.values())} steps exceed the {run.total_steps} "
            f"training steps; shorten one of them ({fix})"
        )


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


def _check_min_lr(kwargs: dict[str, Any], run: RunFacts, *, name: str) -> None:
    _one_of(kwargs, name, ("min_lr", "min_lr_rate"), required=True,
            hint="min_lr is absolute, min_lr_rate a fraction of the learning rate")
    _not_above_rate(kwargs, run, "min_lr", name=name)


def _build_min_lr(optimizer: Any, warmup: int, total: int, kwargs: dict[str, Any], args: Any, *, target: str) -> Any:
    from . import deps

    kwargs = dict(kwargs)
    min_lr = kwargs.pop("min_lr", None)
    if min_lr is not None:  # transformers divides by optimizer.defaults["lr"]; so do we, when it exists
        kwargs["min_lr_rate"] = min_lr / reference_lr(optimizer, args)
    return deps.import_object(target)(optimizer, warmup, total, **kwargs)


def _check_polynomial(kwargs: dict[str, Any], run: RunFacts) -> None:
    # transformers refuses lr_end >= the rate only when the scheduler is built, after the optimizer.
    _not_above_rate({"lr_end": kwargs.get("lr_end", 1e-7)}, run, "lr_end", name="polynomial", strict=True)


def _build_polynomial(optimizer: Any, warmup: int, total: int, kwargs: dict[str, Any], args: Any) -> Any:
    from .schedule_functions import get_polynomial_schedule

    return get_polynomial_schedule(optimizer, warmup, total, lr_init=reference_lr(optimizer, args), **kwargs)


def _rates(kwargs: dict[str, Any], key: str, default: float, *, name: str, positive: bool = False) -> list[float]:
    """A bound of a metric-driven scheduler: one rate, or one per param group as torch / GreedyLR take it.

    Declared ``any`` (no option type is "a number or a tuple"), so its range is checked here.
    """
    value = kwargs.get(key, default)
    many = isinstance(value, (list, tuple))
    numbers = list(value) if many else [value]
    where = f"lr_scheduler_type={name!r}: lr_scheduler_kwargs"
    bound = "> 0" if positive else ">= 0"
    if not numbers or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
        raise ValueError(
            f"{where} key {key!r}: {value!r} is not a rate or a tuple of rates (one per param group), e.g. 1e-5"
        )
    for number in numbers:
        if not math.isfinite(number):
            raise ValueError(f"{where} {key}={value!r} is not a finite number (key {key!r}, valid range {bound})")
        if number < 0 or (positive and number == 0):
            raise ValueError(f"{where} {key}={value!r} is out of range (key {key!r}, valid range {bound})")
    if key in kwargs:  # typed: torch and GreedyLR take a float, or a list with one per param group
        kwargs[key] = [float(v) for v in numbers] if many else float(value)
    return [float(v) for v in numbers]


def _check_plateau(kwargs: dict[str, Any], run: RunFacts) -> None:
    for value in _rates(kwargs, "min_lr", 0.0, name="reduce_lr_on_plateau"):
        _not_above_rate({"min_lr": value}, run, "min_lr", name="reduce_lr_on_plateau")


def _check_greedy(kwargs: dict[str, Any]) -> None:
    lows = _rates(kwargs, "min_lr", 1e-3, name="greedy")
    highs = _rates(kwargs, "max_lr", 1.0, name="greedy", positive=True)
    if len(lows) > 1 and len(highs) > 1 and len(lows) != len(highs):
        raise ValueError(
            f"lr_scheduler_type='greedy': lr_scheduler_kwargs 'min_lr' has {len(lows)} rates and 'max_lr' "
            f"{len(highs)}; give one rate, or one per param group for both"
        )
    for i in range(max(len(lows), len(highs))):
        low, high = lows[min(i, len(lows) - 1)], highs[min(i, len(highs) - 1)]
        if low > high:
            raise ValueError(
                f"lr_scheduler_type='greedy': lr_scheduler_kwargs key 'min_lr' ({low:g}) is above 'max_lr' "
                f"({high:g}); min_lr must be in [0, max_lr]"
            )


_WSD_PHASES = ("num_decay_steps", "decay_ratio", "num_stable_steps", "stable_ratio")


def _check_wsd(kwargs: dict[str, Any], run: RunFacts) -> None:
    from .schedule_functions import wsd_phase_steps

    phases = {k: kwargs[k] for k in _WSD_PHASES if k in kwargs}
    wsd_phase_steps(1, **phases)  # the count-or-ratio rules, whatever the run's length
    if run.total_steps is None:
        return
    decay, stable = wsd_phase_steps(run.total_steps, **phases)
    lengths = {"warm-up": run.warmup_steps, "decay": decay}
    if stable is not None:
        lengths = {"warm-up": run.warmup_steps, "stable": stable, "decay": decay}
    _fits_run(run, lengths, name="warmup_stable_decay",
              fix="TrainingArguments.warmup_steps, lr_scheduler_kwargs decay_ratio / num_decay_steps"
              + (" / stable_ratio / num_stable_steps" if stable is not None else ""))


def _build_wsd(optimizer: Any, warmup: int, total: int, kwargs: dict[str, Any], args: Any) -> Any:
    from transformers.optimization import get_wsd_schedule

    from .schedule_functions import wsd_phase_steps

    kwargs = dict(kwargs)
    decay, stable = wsd_phase_steps(total, **{k: kwargs.pop(k) for k in _WSD_PHASES if k in kwargs})
    # transformers warns when both are given; with the stable phase known, the total is not needed.
    return get_wsd_schedule(optimizer, warmup, decay, num_training_steps=None if stable is not None else total,
                            num_stable_steps=stable, **kwargs)


_TF = "transformers.optimization"
_FN = "optim_registry.schedule_functions"
#: Every transformers schedule function takes it: the index of the last step done (-1: start afresh).
LAST_EPOCH = opt("last_epoch", "int", -1, "index of the last step already done (-1: start at step 0)", low=-1)
_CYCLES = opt("num_cycles", "float", 0.5, "number of cosine waves (0.5: down to 0 once)", low=0)
_FRACTION = {"low": 0, "high": 1}
_MIN_LR = (
    opt("min_lr", "float", None, "the lowest learning rate, absolute", low=0),
    opt("min_lr_rate", "float", None, "the lowest learning rate, as a fraction of the initial one", **_FRACTION),
)
_NON_NEGATIVE = {"low": 0}

BUILTIN = (
    SchedulerSpec("constant", f"{_TF}:get_constant_schedule", "Constant learning rate.", takes=frozenset(),
                  options=(LAST_EPOCH,)),
    SchedulerSpec(
        "constant_with_warmup", f"{_TF}:get_constant_schedule_with_warmup",
        "Linear warm-up, then constant.", takes=frozenset({"num_warmup_steps"}), options=(LAST_EPOCH,),
    ),
    SchedulerSpec("cosine", f"{_TF}:get_cosine_schedule_with_warmup", "Linear warm-up, then cosine decay.",
                  options=(_CYCLES, LAST_EPOCH)),
    SchedulerSpec(
        "cosine_warmup_with_min_lr", f"{_TF}:get_cosine_with_min_lr_schedule_with_warmup_lr_rate",
        "Warm-up from a fraction of the rate, then cosine decay to a minimum.",
        options=(_CYCLES, *_MIN_LR, opt("warmup_lr_rate", "float", None, "warm-up start as a fraction", **_FRACTION),
                 LAST_EPOCH),
        builder=partial(_build_min_lr, target=f"{_TF}:get_cosine_with_min_lr_schedule_with_warmup_lr_rate"),
        check=partial(_check_min_lr, name="cosine_warmup_with_min_lr"),
    ),
    SchedulerSpec(
        "cosine_with_min_lr", f"{_TF}:get_cosine_with_min_lr_schedule_with_warmup",
        "Linear warm-up, then cosine decay to a minimum learning rate.", options=(_CYCLES, *_MIN_LR, LAST_EPOCH),
        builder=partial(_build_min_lr, target=f"{_TF}:get_cosine_with_min_lr_schedule_with_warmup"),
        check=partial(_check_min_lr, name="cosine_with_min_lr"),
    ),
    SchedulerSpec(
        "cosine_with_restarts", f"{_TF}:get_cosine_with_hard_restarts_schedule_with_warmup",
        "Linear warm-up, then cosine decay with hard restarts.",
        # transformers types it int but computes with float(num_cycles): 1.5 cycles work.
        options=(opt("num_cycles", "float", 1, "number of hard restarts", low=0), LAST_EPOCH),
    ),
    SchedulerSpec(
        "greedy", f"{_FN}:get_greedy_schedule",
        "GreedyLR: raises the rate while the evaluation metric improves, lowers it when it does not.",
        takes=frozenset({"num_warmup_steps"}), needs_eval=True,
        options=(
            opt("mode", "str", "min", "min: lower metric is better; max: higher", choices=("min", "max")),
            opt("factor", "float", 0.95, "multiplicative change per decision", low=0, high=1, low_open=True,
                high_open=True),
            opt("patience", "int", 10, "evaluations without improvement before lowering", **_NON_NEGATIVE),
            opt("threshold", "float", 1e-6, "improvement that counts", **_NON_NEGATIVE),
            opt("threshold_mode", "str", "abs", "rel or abs", choices=("rel", "abs")),
            opt("cooldown", "int", 0, "evaluations to wait after a decrease", **_NON_NEGATIVE),
            opt("warmup", "int", 0, "evaluations to wait after an increase", **_NON_NEGATIVE),
            opt("min_lr", "any", 1e-3, "lowest learning rate (>= 0), or one per param group", low=0),
            opt("max_lr", "any", 1.0, "highest learning rate (> 0), or one per param group", low=0, low_open=True),
            opt("eps", "float", 1e-8, "smallest change applied", **_NON_NEGATIVE),
            opt("smooth", "bool", False, "smooth the metric with a moving window"),
            opt("window_size", "int", 50, "window of the smoothing", low=1),
            opt("reset_start", "int", 500, "after this many evaluations, reset at min_lr", **_NON_NEGATIVE),
        ),
        check=_check_greedy,
    ),
    SchedulerSpec(
        "inverse_sqrt", f"{_TF}:get_inverse_sqrt_schedule", "Linear warm-up, then 1/sqrt(step) decay.",
        takes=frozenset({"num_warmup_steps"}),
        # typed int by transformers, but only divided by: a float scale works as well
        options=(opt("timescale", "float", None, "decay time scale (default: num_warmup_steps or 10,000)", low=0,
                     low_open=True),
                 LAST_EPOCH),
    ),
    SchedulerSpec("linear", f"{_TF}:get_linear_schedule_with_warmup", "Linear warm-up, then linear decay to 0.",
                  options=(LAST_EPOCH,)),
    SchedulerSpec(
        "polynomial", f"{_TF}:get_polynomial_decay_schedule_with_warmup",
        "Linear warm-up, then polynomial decay to lr_end.",
        options=(opt("lr_end", "float", 1e-7, "final learning rate", **_NON_NEGATIVE),
                 opt("power", "float", 1.0, "power", low=0, low_open=True), LAST_EPOCH),
        builder=_build_polynomial, check=_check_polynomial,
    ),
    SchedulerSpec(
        "reduce_lr_on_plateau", f"{_FN}:get_reduce_on_plateau_schedule",
        "ReduceLROnPlateau: lowers the rate when the evaluation metric stops improving.",
        takes=frozenset({"num_warmup_steps"}), needs_eval=True,
        options=(
            opt("mode", "str", "min", "min or max", choices=("min", "max")),
            opt("factor", "float", 0.1, "multiplicative decrease", low=0, high=1, high_open=True),
            opt("patience", "int", 10, "evaluations without improvement", **_NON_NEGATIVE),
            opt("threshold", "float", 1e-4, "relative improvement that counts", **_NON_NEGATIVE),
            opt("threshold_mode", "str", "rel", "rel or abs", choices=("rel", "abs")),
            opt("cooldown", "int", 0, "evaluations to wait after a decrease", **_NON_NEGATIVE),
            opt("min_lr", "any", 0.0, "lowest learning rate (>= 0, at most the rate), or one per param group", low=0),
            opt("eps", "float", 1e-8, "smallest change applied", **_NON_NEGATIVE),
        ),
        check=_check_plateau,
    ),
    SchedulerSpec(
        "warmup_stable_decay", f"{_TF}:get_wsd_schedule",
        "Warm-up, stable phase, then decay (WSD); phases as step counts or fractions of the run.",
        options=(
            opt("num_decay_steps", "int", None, "steps of the decay phase (or decay_ratio)", **_NON_NEGATIVE),
            opt("decay_ratio", "float", None, "decay phase as a fraction of the run (or num_decay_steps)", **_FRACTION),
            opt("num_stable_steps", "int", None, "steps of the stable phase (default: what warm-up and decay leave)",
                **_NON_NEGATIVE),
            opt("stable_ratio", "float", None, "stable phase as a fraction of the run (or num_stable_steps)",
                **_FRACTION),
            opt("warmup_type", "str", "linear", "linear, cosine or 1-sqrt", choices=("linear", "cosine", "1-sqrt")),
            opt("decay_type", "str", "cosine", "linear, cosine or 1-sqrt", choices=("linear", "cosine", "1-sqrt")),
            opt("min_lr_ratio", "float", 0.0, "final rate as a fraction of the initial one", **_FRACTION),
            _CYCLES,
            LAST_EPOCH,
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
    takes = frozenset(a for a in _STEP_ARGS if a in params)
    skip = {"optimizer", "last_epoch", "verbose", *_STEP_ARGS}
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
    clash = [k for k in _STEP_ARGS if k in mapping]
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
