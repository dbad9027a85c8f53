"""What a set of arguments means, resolved once: one frozen ``Plan`` that every reader takes.

``plan_of(args)`` is the one function the build, the Trainer, the schedulers, the checkpoint manifest, the
runnable checks and the tools ask. It makes the plan (the record, typed ``optim_args``, hyperparameters,
``optim_groups`` rules, target patterns, the schedule record and its typed kwargs, the distributed facts) once
per arguments object, and again only when a field it read has changed since: ``set_optimizer`` /
``set_lr_scheduler``, or a user assigning ``args.optim_args = ...`` (or changing that dict in place). The cache
is keyed by a snapshot of exactly the fields the plan read, so it is never stale and never says more than the
arguments do. Making a plan never writes to the arguments (it reads them through a read-only view).

Making it raises, as one ``ValueError`` naming the value and the way out, everything the arguments alone show
(the model is not needed). Whether the name can run on this machine (packages, GPU) is ``runnable``'s question.

Example::

    plan = plan_of(TrainingArguments("out", optim="sgd", optim_args="momentum=0.9"))
    plan.given      # {'momentum': 0.9}
    plan.kwargs     # {'lr': 5e-05, 'momentum': 0.9}
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

from .distributed import Backend, check_distributed, deepspeed_config, detect_backend
from .engines import zero
from .engines.layerwise.twins import has_global_clip
from .engines.zero import ZERO_KINDS
from .optim_args import check_range, coerce, parse_options, shorten
from .registry import load_builder, optimizers
from .schedulers import check_scheduler_kwargs, schedulers, type_scheduler_kwargs
from .spec import (
    HPARAM_FIELDS,
    OptimizerSpec,
    Option,
    RunFacts,
    SchedulerSpec,
    Values,
    group_option_table,
    option_table,
    plain_name,
)


class IgnoredTargetModulesWarning(UserWarning):
    """``optim_target_modules`` was given to an optimizer that does not use target modules.

    Said once per process by Python's default warnings filter (the warning's location is fixed inside the
    package); ``warnings.simplefilter("always", IgnoredTargetModulesWarning)`` shows every one.
    """


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, eq=False)
class Plan:
    """What one set of arguments means: everything typed and checked, nothing read twice."""

    #: The registered name (``args.optim`` as a plain string) and its record.
    name: str
    spec: OptimizerSpec
    #: Exactly what ``optim_args`` said, typed.
    given: Mapping[str, Any]
    #: Every declared option, typed: what ``optim_args`` gave, else the record's default.
    options: Mapping[str, Any]
    #: ``lr``, ``betas``, ``eps``, ``weight_decay`` from the arguments, overridden by ``optim_args``.
    hparams: Mapping[str, Any]
    #: The generic constructor keyword arguments: lr, the hyperparameters the record takes, ``fixed``, the
    #: options that are sent (targeted options excepted).
    kwargs: Mapping[str, Any]
    #: The sent options that go into the ``optim_target_modules`` groups only (GaLore's ``rank`` ...).
    target_options: Mapping[str, Any]
    #: Parsed ``optim_groups`` rules.
    rules: tuple[Any, ...]
    #: ``optim_target_modules`` (checked) when the record uses target modules, else ``None``.
    target_patterns: Any
    #: ``TrainingArguments.weight_decay`` (the stock groups' decay).
    weight_decay: float
    #: ``max_steps`` when set (> 0), else ``None``.
    max_steps: int | None
    #: ``max_grad_norm`` and, for a layer-wise name, the default norm that will not be applied (warned about
    #: when the optimizer is built), else ``None``.
    max_grad_norm: float
    unapplied_max_grad_norm: float | None
    #: The distributed back-end the arguments imply.
    backend: Backend
    #: The schedule: its record, its typed kwargs, the raw keys it does not take (refused when training
    #: starts: ``set_lr_scheduler`` may still change the scheduler) and the warm-up as the arguments say it.
    schedule: SchedulerSpec
    schedule_kwargs: Mapping[str, Any]
    schedule_unknown: Mapping[str, Any]
    warmup_steps: float

    def run_facts(self, total_steps: int | None = None) -> RunFacts:
        """What is known about the run a schedule drives (``total_steps`` when the Trainer knows it)."""
        total = self.max_steps if total_steps is None else total_steps
        return _run_facts(self.spec, self.hparams, total, self.warmup_steps)


# ------------------------------------------------------------------------------------------ the cache


class _Reads:
    """A read-only view of the arguments that remembers each field read (the plan's cache key)."""

    def __init__(self, args: Any) -> None:
        object.__setattr__(self, "_args", args)
        object.__setattr__(self, "_seen", {})

    def __getattr__(self, name: str) -> Any:
        try:
            value = getattr(self._args, name)
        except AttributeError:
            self._seen.setdefault(name, _ABSENT)
            raise
        self._seen.setdefault(name, _frozen(value))
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"resolving the arguments never changes them (tried to set {name!r})")


_ABSENT = object()


class _Same:
    """A value compared by identity (an object a snapshot cannot copy: a callable, a tensor)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _frozen(value: Any) -> Any:
    """A snapshot of ``value`` that compares equal exactly when the value is the same (dicts and lists deeply)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, Enum)):
        return value
    if isinstance(value, Mapping):
        return ("map", tuple((_frozen(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_frozen(v) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted((_frozen(v) for v in value), key=repr)))
    return _Same(value)


def _snapshot(args: Any, fields: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(_frozen(getattr(args, f, _ABSENT)) if hasattr(args, f) else _ABSENT for f in fields)


def _environment() -> tuple[Any, ...]:
    # What the plan reads besides the arguments: the registries' contents. The launcher's WORLD_SIZE (the
    # distributed facts) is read when the plan is made, as when the arguments are created: a build later in
    # another environment judges the model it is given (an FSDP2-sharded one: build.check_fsdp2).
    return optimizers.generation, schedulers.generation


@dataclass
class _Entry:
    fields: tuple[str, ...]
    snapshot: tuple[Any, ...]
    environment: tuple[Any, ...]
    plan: Plan


_CACHE: dict[int, _Entry] = {}
_LOCK = threading.Lock()


def _forget(key: int) -> None:
    with _LOCK:
        _CACHE.pop(key, None)


def plan_of(args: Any) -> Plan:
    """The plan of ``args``: made once, and again only when a field it read (or the registry) has changed."""
    key = id(args)
    with _LOCK:
        entry = _CACHE.get(key)
    environment = _environment()
    if entry is not None and entry.environment == environment and entry.snapshot == _snapshot(args, entry.fields):
        return entry.plan
    reads = _Reads(args)
    plan = make_plan(reads)
    fields = tuple(reads._seen)
    snapshot = tuple(reads._seen[f] for f in fields)
    with _LOCK:
        if key not in _CACHE:
            try:
                weakref.finalize(args, _forget, key)
            except TypeError:  # an arguments object that takes no weak reference: not cached
                return plan
        _CACHE[key] = _Entry(fields, snapshot, environment, plan)
    return plan


# ------------------------------------------------------------------------------------------ making it


def make_plan(args: Any) -> Plan:
    """Resolve, type and check ``args`` (every check the arguments alone allow). ``plan_of`` caches it."""
    name = plain_name(args.optim)
    optimizers.check_name(name)
    spec = optimizers.get(name)
    if spec.builder is not None and spec.source != "builtin":
        load_builder(spec)  # a plugin's "builder" that cannot be one is refused by name, now
    given, hparams = check_values(spec, args)
    options = {o.name: given[o.name] if o.name in given else typed_default(o) for o in spec.options}
    kwargs: dict[str, Any] = {"lr": hparams["lr"]}
    for key in ("betas", "eps"):
        if key in spec.hparams:
            kwargs[key] = hparams[key]
    if spec.weight_decay_kwarg and "weight_decay" in spec.hparams:
        # The groups carry it too; this covers a plain parameter list, where the library's own default
        # (often 0.01) would apply instead of TrainingArguments'.
        kwargs["weight_decay"] = hparams["weight_decay"]
    kwargs.update(spec.fixed)
    sent = sent_options(spec, given)
    kwargs.update({k: v for k, v in sent.items() if k not in spec.target_options})
    rules = parse_group_rules(spec, getattr(args, "optim_groups", None))
    patterns = _check_target_modules(spec, getattr(args, "optim_target_modules", None))
    max_steps = int(getattr(args, "max_steps", -1) or -1)
    schedule, schedule_kwargs, unknown, warmup = _check_schedule(spec, args, hparams, max_steps)
    _check_protocol(spec, args)
    unapplied = check_layerwise_clipping(spec, args, given) if spec.layerwise else None
    backend = check_distributed(spec, args)
    if backend.kind in ZERO_KINDS:
        zero.check(spec, args, backend.kind, deepspeed_config(args), options)
    return Plan(
        name=name, spec=spec, given=MappingProxyType(given), options=MappingProxyType(options),
        hparams=MappingProxyType(hparams), kwargs=MappingProxyType(kwargs),
        target_options=MappingProxyType({k: v for k, v in sent.items() if k in spec.target_options}),
        rules=rules, target_patterns=patterns, weight_decay=float(args.weight_decay),
        max_steps=max_steps if max_steps > 0 else None,
        max_grad_norm=float(getattr(args, "max_grad_norm", 0.0) or 0.0), unapplied_max_grad_norm=unapplied,
        backend=backend, schedule=schedule, schedule_kwargs=MappingProxyType(schedule_kwargs),
        schedule_unknown=MappingProxyType(unknown), warmup_steps=warmup,
    )


# ------------------------------------------------------------------------------------------ optim_args


def parse_optim_args(spec: OptimizerSpec, raw: Any) -> dict[str, Any]:
    """Typed ``optim_args`` for ``spec`` (record options and hyperparameter overrides together)."""
    return parse_options(raw, option_table(spec), subject=f"optim={spec.name!r}")


def typed_default(option: Option) -> Any:
    """An option's default as the optimizer takes it: a dtype declared by name becomes the torch dtype.

    Records name dtypes as strings so that listing them imports no torch; building imports it anyway.
    """
    if option.type == "dtype" and isinstance(option.default, str):
        try:
            return coerce(option, option.default, where="the record's default")
        except ValueError:  # a dtype torch names differently: the library reads its own spelling
            return option.default
    return option.default


def sent_options(spec: OptimizerSpec, given: Mapping[str, Any]) -> dict[str, Any]:
    """The options passed on to the optimizer: those ``optim_args`` gave, plus defaults marked ``send``."""
    sent = {o.name: typed_default(o) for o in spec.options if o.send}
    sent.update({k: v for k, v in given.items() if k in spec.option_map})
    return sent


def hyperparameters(spec: OptimizerSpec, args: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """lr / betas / eps / weight_decay from the TrainingArguments, overridden by ``optim_args``."""
    values = {
        "lr": float(args.learning_rate),
        "betas": (float(args.adam_beta1), float(args.adam_beta2)),
        "eps": float(args.adam_epsilon),
        "weight_decay": float(args.weight_decay),
    }
    for key in values:
        if given.get(key) is not None:
            values[key] = given[key]
    return values


def check_hyperparameter_fields(spec: OptimizerSpec, args: Any, given: Mapping[str, Any]) -> None:
    """The TrainingArguments fields the optimizer will use, in range (nan and inf refused).

    ``learning_rate`` and ``weight_decay`` go into every param group; ``adam_beta1/2`` and
    ``adam_epsilon`` only matter to records that take ``betas`` / ``eps``. A value overridden in
    ``optim_args`` is checked there instead.
    """
    for key, fields in HPARAM_FIELDS.items():
        used = key in spec.hparams or key in ("lr", "weight_decay")
        if not used or given.get(key) is not None:
            continue
        for option in fields:
            value = getattr(args, option.name, None)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                # set_optimizer(learning_rate="abc") stores whatever it is given: say which field and the fix.
                try:
                    value = coerce(option, value, where="TrainingArguments")
                except ValueError:
                    example, setter_key = _EXAMPLES[option.name]
                    raise ValueError(
                        f"TrainingArguments.{option.name}={shorten(value)} is not a number; give a number, e.g. "
                        f"{option.name}={example} (set_optimizer(name, {setter_key}={example}) sets it)"
                    ) from None
            check_range(option, float(value), where="TrainingArguments")


#: A usual value of each TrainingArguments hyperparameter field and ``set_optimizer``'s keyword for it.
_EXAMPLES = {"learning_rate": ("1e-3", "learning_rate"), "adam_beta1": ("0.9", "beta1"),
             "adam_beta2": ("0.999", "beta2"), "adam_epsilon": ("1e-8", "epsilon"),
             "weight_decay": ("0.01", "weight_decay")}


def record_values(spec: OptimizerSpec, given: Mapping[str, Any], hp: Mapping[str, Any]) -> Values:
    """Every value the optimizer will be built with: option defaults, ``fixed``, what optim_args gave, hparams."""
    values = Values({o.name: o.default for o in spec.options})
    values.given = frozenset(given)
    values.update(spec.fixed)
    values.update(given)
    for key in ("lr", "betas", "eps", "weight_decay"):
        if key in spec.hparams:
            values[key] = hp[key]
    return values


def check_values(spec: OptimizerSpec, args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Typed ``optim_args`` and the resolved hyperparameters, after every check the arguments alone allow.

    Types, ranges and tuple lengths (the parser), the TrainingArguments fields the optimizer uses,
    options the constructor cannot do without, and the record's cross-field ``checks``.
    """
    given = parse_optim_args(spec, getattr(args, "optim_args", None))
    check_hyperparameter_fields(spec, args, given)
    missing = [o.name for o in spec.options if o.required and o.name not in given and o.name not in spec.fixed]
    if missing:
        example = ",".join(f"{m}=..." for m in missing)
        raise ValueError(
            f"optim={spec.name!r} needs optim_args key(s) {', '.join(repr(m) for m in missing)}: the optimizer's "
            f"constructor has no default for them. Pass optim_args=\"{example}\", or give the constructor "
            "argument a default when registering it."
        )
    hp = hyperparameters(spec, args, given)
    values = record_values(spec, given, hp)
    for check in spec.checks:
        problem = check(values)
        if problem:
            raise ValueError(f"optim={spec.name!r}: {problem}")
    return given, hp


# ------------------------------------------------------------------------------------------ groups, targets


def parse_group_rules(spec: OptimizerSpec, raw: Any) -> tuple[Any, ...]:
    """Typed ``optim_groups`` rules for ``spec``; refuses names whose update cannot honour them."""
    from .group_rules import load_rules, parse_rules

    if raw is None or (not isinstance(raw, str) and not load_rules(raw)):
        return ()
    rules = parse_rules(raw, group_option_table(spec), subject=f"optim={spec.name!r}")
    if rules and spec.needs_model:
        raise ValueError(
            f"optim={spec.name!r} is built with the whole model and steps every parameter with one rate and "
            "weight decay (LOMO-style fused backward or a model-built optimizer), so optim_groups rules cannot "
            "apply. Drop optim_groups, or choose a name that takes param groups (e.g. optim='adamw_torch')."
        )
    return rules


def _check_target_modules(spec: OptimizerSpec, patterns: Any) -> Any:
    """Target patterns well formed for a record that uses them (returned); a warning for one that does not."""
    from .labels import check_target_patterns

    if spec.target_modules:
        if patterns is None:
            raise ValueError(
                f"optim={spec.name!r} needs `optim_target_modules` (e.g. ['self_attn', 'mlp'] or 'all-linear'): "
                "the modules whose weights it projects"
            )
        check_target_patterns(patterns)
        return patterns
    if patterns is not None and not (spec.builder is not None and spec.source != "builtin"):
        # (a plugin's own builder may read the patterns itself: no warning for it)
        warnings.warn(
            f"optim_target_modules={shorten(patterns)} is ignored: optim={spec.name!r} does not use target modules "
            "(GaLore, APOLLO and Q-GaLore names do). Drop optim_target_modules, or choose such an optimizer.",
            IgnoredTargetModulesWarning,
            stacklevel=1,  # a fixed location: the default filter says it once per process
        )
    return None


# ------------------------------------------------------------------------------------------ schedule


def _check_schedule(
    spec: OptimizerSpec, args: Any, hparams: Mapping[str, Any], max_steps: int
) -> tuple[SchedulerSpec, dict[str, Any], dict[str, Any], float]:
    """The schedule record, its typed kwargs (those it takes), the keys it does not take, the warm-up."""
    schedule = schedulers.get(plain_name(getattr(args, "lr_scheduler_type", "linear")))
    typed, unknown = type_scheduler_kwargs(schedule, getattr(args, "lr_scheduler_kwargs", None))
    warmup = float(getattr(args, "warmup_steps", 0) or 0)
    facts = _run_facts(spec, hparams, max_steps if max_steps > 0 else None, warmup)
    check_scheduler_kwargs(schedule, typed, unknown, run=facts, strict=False)
    strategy = plain_name(getattr(args, "eval_strategy", "no"))
    if schedule.needs_eval and strategy == "no":
        raise ValueError(
            f"lr_scheduler_type={schedule.name!r} changes the rate from evaluation results, but eval_strategy='no'. "
            "Set eval_strategy='steps' (with eval_steps) or 'epoch', and pass an eval_dataset."
        )
    return schedule, typed, unknown, warmup


def _run_facts(spec: OptimizerSpec, hparams: Mapping[str, Any], total: int | None, raw_warmup: float) -> RunFacts:
    if raw_warmup <= 0 or spec.owns_warmup:
        warmup: int | None = 0
    elif raw_warmup >= 1:
        warmup = int(raw_warmup)
    else:
        warmup = math.ceil(total * raw_warmup) if total is not None else None
    return RunFacts(learning_rate=float(hparams["lr"]), total_steps=total, warmup_steps=warmup)


def check_scheduler_args(args: Any, num_training_steps: int | None = None, *, strict: bool = False) -> Plan:
    """The schedule's checks with what is known now: ``strict`` (when training starts) also refuses kwargs the
    scheduler does not take, and ``num_training_steps`` (the Trainer's count) checks phases against the run.

    Called by the Trainer before it builds the optimizer, so a refused scheduler never leaves an optimizer's
    hooks behind. Reads the plan; parses nothing again.
    """
    plan = plan_of(args)
    check_scheduler_kwargs(plan.schedule, dict(plan.schedule_kwargs), dict(plan.schedule_unknown),
                           run=plan.run_facts(num_training_steps), strict=strict)
    return plan


# ------------------------------------------------------------------------------------------ protocols


def _check_protocol(spec: OptimizerSpec, args: Any) -> None:
    """The training loop's protocol against the arguments (fused backward, layer-wise stepping)."""
    name = spec.name
    ga = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
    fp16 = bool(getattr(args, "fp16", False))
    if spec.protocol == "fused_backward" and ga > 1:
        raise ValueError(
            f"optim={name!r} updates the weights inside backward, so gradient accumulation cannot work: "
            f"set gradient_accumulation_steps=1 (got {ga}), or choose another optimizer."
        )
    if spec.protocol == "fused_backward" and fp16:
        raise ValueError(
            f"optim={name!r} needs its own backward (fused_backward), but with fp16=True accelerate runs the "
            "GradScaler's backward instead and never calls it. Use bf16=True or full precision."
        )
    if spec.layerwise and fp16:
        raise ValueError(
            f"optim={name!r} steps each parameter inside backward, before fp16 loss scaling can unscale or "
            "check the gradients. Use bf16=True, or the whole-model name " + repr(spec.base) + "."
        )


def default_max_grad_norm() -> float:
    """transformers' default ``max_grad_norm`` (the dataclass field's default, 1.0 in transformers 5)."""
    import transformers

    return float(transformers.TrainingArguments.__dataclass_fields__["max_grad_norm"].default)


def clipping_ways(name: str, max_grad_norm: float, has_global: bool) -> str:
    """The ways to get clipping with a layer-wise name, for warnings and errors."""
    ways = []
    if has_global:
        ways.append(f"optim_args='clip=global' (exact global-norm clipping to max_grad_norm={max_grad_norm}; "
                    "one extra backward pass per step)")
    ways.append(f"optim_args='clip_per_param={max_grad_norm}' (each parameter's gradient clipped on its own)")
    base = optimizers.get(name).base or name  # the record says which whole-model name it twins
    ways.append(f"the whole-model name optim={base!r}")
    return "; ".join(ways) + "; or max_grad_norm=0 to say no clipping is wanted"


def check_layerwise_clipping(spec: OptimizerSpec, args: Any, given: Mapping[str, Any]) -> float | None:
    """Refuses a clipping request a layer-wise name cannot honour; returns the norm that will not be applied.

    ``clip=global`` clips to ``max_grad_norm`` exactly. Without a clipping option, ``max_grad_norm`` at
    transformers' default is accepted with a warning at build time (the return value), as the stock Trainer
    accepts it; any other value is refused, since the user asked for it.
    """
    name = spec.name
    max_norm = float(getattr(args, "max_grad_norm", 0.0) or 0.0)
    clip = given.get("clip")
    per_param = given.get("clip_per_param")
    if clip == "global":
        if per_param is not None:
            raise ValueError(
                f"optim={name!r}: optim_args 'clip=global' and 'clip_per_param={per_param:g}' ask for two kinds "
                "of clipping; keep one"
            )
        if not (max_norm > 0 and math.isfinite(max_norm)):
            raise ValueError(
                f"optim={name!r}: optim_args 'clip=global' clips to max_grad_norm, which is {args.max_grad_norm}; "
                "set max_grad_norm to a positive finite norm (e.g. 1.0), or drop 'clip=global'"
            )
        backend = detect_backend(args)
        if backend.kind != "none":
            raise ValueError(
                f"optim={name!r}: optim_args 'clip=global' cannot run under {backend.detail}: there each gradient "
                "bucket is stepped as soon as it is averaged, before any pass could see the global norm. Use "
                "optim_args='clip_per_param=...', max_grad_norm=0, or the whole-model name."
            )
        return None
    if max_norm == 0:
        return None
    if max_norm != default_max_grad_norm():
        raise ValueError(
            f"optim={name!r} steps each parameter inside backward, so global-norm clipping "
            f"(max_grad_norm={args.max_grad_norm}) cannot be applied without a clipping option. Use "
            + clipping_ways(name, max_norm, has_global_clip(spec))
            + "."
        )
    return None if per_param is not None else max_norm
