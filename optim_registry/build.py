"""The only place the parts meet: name + arguments + model -> ``(cls_or_factory, kwargs)`` -> optimizer.

``get_optimizer_cls_and_kwargs`` keeps transformers' contract (magic keys ``params``, ``model``,
``optimizer_dict``; factories called ``factory()(model, **kwargs)``), so the stock
``Trainer.create_optimizer`` can consume what it returns. Everything that can go wrong is checked
here, before the model is touched.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import deps, zero
from .distributed import detect_backend
from .optim_args import check_range, coerce, parse_options, shorten
from .param_groups import build_groups, target_linear_weights
from .spec import (
    HPARAM_FIELDS,
    OptimizerSpec,
    Option,
    Values,
    group_option_table,
    is_factory,
    option_table,
)
from .zero import ZERO_KINDS


@dataclass(frozen=True)
class TrainerScope:
    """What the Trainer knows about the build in progress beyond the arguments (unset: ``None``)."""

    #: The weight-decay parameter names from the Trainer's ``get_decay_parameter_names`` (users may override it).
    decay_names: frozenset[str] | None = None
    #: The run's total optimizer steps (for ratios such as warm-up 0.1).
    training_steps: int | None = None


_NO_TRAINER = TrainerScope()  # frozen: safe to share as the default
#: The one piece of state a Trainer hands to the builds inside it; set only by ``trainer_scope``.
_SCOPE: contextvars.ContextVar[TrainerScope] = contextvars.ContextVar("optim_registry_scope", default=_NO_TRAINER)


@contextlib.contextmanager
def trainer_scope(
    *, decay_names: Iterable[str] | None = None, training_steps: int | None = None
) -> Iterator[TrainerScope]:
    """Builds inside this block use these decay names and know the run's length; unset fields are inherited."""
    outer = _SCOPE.get()
    scope = TrainerScope(
        decay_names=outer.decay_names if decay_names is None else frozenset(decay_names),
        training_steps=outer.training_steps if training_steps is None else training_steps,
    )
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def current_decay_names() -> set[str] | None:
    """The Trainer's weight-decay parameter names for the build in progress (None: the default split)."""
    names = _SCOPE.get().decay_names
    return None if names is None else set(names)


def current_training_steps() -> int | None:
    """The run's total optimizer steps when a Trainer said them, else ``None``."""
    return _SCOPE.get().training_steps


@dataclass
class BuildContext:
    """What a builder gets: the record, the arguments, the model and everything already computed."""

    spec: OptimizerSpec
    args: Any
    model: Any
    options: dict[str, Any]  # every declared option, typed: what optim_args gave, else the record's default
    hparams: dict[str, Any]  # lr, betas, eps, weight_decay after optim_args overrides
    kwargs: dict[str, Any]  # generic constructor kwargs: lr, hparams, fixed, the options that are sent
    groups: list[dict[str, Any]] | None = None  # param groups (weight decay / targets / routing / rules)
    given: dict[str, Any] = field(default_factory=dict)  # exactly what optim_args said, typed
    rules: tuple[Any, ...] = ()  # parsed optim_groups rules (already applied to ``groups``)

    def target(self) -> Any:
        return load_target(self.spec)

    def with_groups(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` plus ``params=self.groups`` when the Trainer's own groups would be wrong.

        That is when target modules, routing or ``optim_groups`` split the parameters, or ``optim_args`` overrode ``weight_decay``
        (the Trainer builds its groups from ``args.weight_decay``). Otherwise the Trainer builds the
        groups, as transformers does, honouring an overridden ``get_decay_parameter_names``.
        """
        if self.groups is not None and (
            self.spec.target_modules or "weight_decay" in self.given or self.rules or self.spec.routing
        ):
            kwargs["params"] = self.groups
        return kwargs

    @property
    def num_training_steps(self) -> int | None:
        """Total optimizer steps of the run: known inside a Trainer, else ``args.max_steps`` if set."""
        known = current_training_steps()
        if known is not None:
            return known
        max_steps = int(getattr(self.args, "max_steps", -1) or -1)
        return max_steps if max_steps > 0 else None

    @property
    def on_cpu(self) -> bool:
        """Whether this run's parameters live on the CPU (``on_cpu``: the one device rule)."""
        return on_cpu(self.model, self.args)

    def require_model(self) -> Any:
        if self.model is None:
            raise ValueError(f"optim={self.spec.name!r} needs the model: pass `model=` when resolving it")
        return self.model


def on_cpu(model: Any = None, args: Any = None) -> bool:
    """The one device rule: whether the run's parameters live on the CPU.

    With a model, where its trainable parameters are (one on the CPU is enough: a CUDA-only kernel would
    meet it). Without one, ``TrainingArguments.use_cpu``, or no CUDA GPU on this machine.
    """
    params = []
    if model is not None and hasattr(model, "parameters"):
        params = [p for p in model.parameters() if p.requires_grad] or list(model.parameters())
    if params:
        return any(p.device.type == "cpu" for p in params)
    if args is not None and getattr(args, "use_cpu", False):
        return True
    import torch

    return not torch.cuda.is_available()


def sent_options(spec: OptimizerSpec, given: dict[str, Any]) -> dict[str, Any]:
    """The options passed on to the optimizer: those ``optim_args`` gave, plus defaults marked ``send``."""
    sent = {o.name: typed_default(o) for o in spec.options if o.send}
    sent.update({k: v for k, v in given.items() if k in spec.option_map})
    return sent


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


def load_target(spec: OptimizerSpec) -> Any:
    target = spec.target
    return deps.import_target(spec.name, target, spec.requires) if isinstance(target, str) else target


def _name_of(args: Any) -> str:
    optim = getattr(args, "optim", None)
    return str(getattr(optim, "value", optim))


def spec_for(name: str) -> OptimizerSpec:
    from .registry import optimizers

    return optimizers.get(name)


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


def parse_optim_args(spec: OptimizerSpec, raw: Any) -> dict[str, Any]:
    """Typed ``optim_args`` for ``spec`` (record options and hyperparameter overrides together)."""
    return parse_options(raw, option_table(spec), subject=f"optim={spec.name!r}")


def hyperparameters(spec: OptimizerSpec, args: Any, given: dict[str, Any]) -> dict[str, Any]:
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


def check_hyperparameter_fields(spec: OptimizerSpec, args: Any, given: dict[str, Any]) -> None:
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
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            check_range(option, float(value), where="TrainingArguments")


def record_values(spec: OptimizerSpec, given: dict[str, Any], hp: dict[str, Any]) -> Values:
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


def make_context(args: Any, model: Any = None, spec: OptimizerSpec | None = None) -> BuildContext:
    """Resolve, check and type everything for ``args.optim`` without touching the model."""
    spec = spec or spec_for(_name_of(args))
    given, hp = check_values(spec, args)
    options = {o.name: given[o.name] if o.name in given else typed_default(o) for o in spec.options}
    kwargs: dict[str, Any] = {"lr": hp["lr"]}
    for key in ("betas", "eps"):
        if key in spec.hparams:
            kwargs[key] = hp[key]
    if spec.weight_decay_kwarg and "weight_decay" in spec.hparams:
        # The groups carry it too; this covers a plain parameter list, where the library's own default
        # (often 0.01) would apply instead of TrainingArguments'.
        kwargs["weight_decay"] = hp["weight_decay"]
    kwargs.update(spec.fixed)
    kwargs.update({k: v for k, v in sent_options(spec, given).items() if k not in spec.target_options})
    rules = parse_group_rules(spec, getattr(args, "optim_groups", None))
    ctx = BuildContext(
        spec=spec, args=args, model=model, options=options, hparams=hp, kwargs=kwargs, given=given, rules=rules
    )
    if (spec.needs_model or spec.target_modules or spec.layerwise or spec.routing or rules) and model is None:
        ctx.require_model()
    if model is not None:
        ctx.groups = compose_groups(ctx)
    return ctx


def compose_groups(ctx: BuildContext) -> list[dict[str, Any]]:
    """The one place groups are made: weight-decay split x target modules, matrix routing, then the rules.

    Pure over the model (nothing in it changes); every mistake is raised before anything is built.
    """
    spec, model, hp = ctx.spec, ctx.model, ctx.hparams
    targets: list[str] = []
    if spec.target_modules:
        targets = target_linear_weights(
            model, getattr(ctx.args, "optim_target_modules", None), subject=f"optim={spec.name!r}"
        )
    target_opts = {k: v for k, v in sent_options(spec, ctx.given).items() if k in spec.target_options}
    decay_names = current_decay_names()
    groups = build_groups(
        model, weight_decay=hp["weight_decay"], decay_names=decay_names, targets=targets, target_options=target_opts
    )
    if spec.routing is not None:
        groups = _route(ctx, groups)
    if ctx.rules:
        from .group_rules import compose
        from .param_groups import decay_parameter_names

        decay = set(decay_parameter_names(model) if decay_names is None else decay_names)
        no_decay = {n for n, p in model.named_parameters() if p.requires_grad and n not in decay}
        groups = compose(model, groups, ctx.rules, default_lr=hp["lr"], no_decay=no_decay)
    return groups


def matrix_routes(spec: OptimizerSpec, options: dict[str, Any], model: Any) -> dict[str, str]:
    """Each trainable parameter's route under ``spec.routing`` (see ``param_groups.ROUTES``)."""
    from .param_groups import DEFAULT_MATRIX_EXCLUDE, route_matrices

    routing = spec.routing
    declared = spec.option_map
    exclude = options["exclude"] if "exclude" in declared else DEFAULT_MATRIX_EXCLUDE
    lora = options["lora_to_adamw"] if "lora_to_adamw" in declared else True
    experts = bool(routing and routing.experts) and bool(options.get("expert_matrices", True))
    return route_matrices(model, exclude=exclude, lora_to_adamw=bool(lora), experts=experts)


def _route(ctx: BuildContext, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from .param_groups import split_matrix_groups

    routing = ctx.spec.routing
    if routing is None:
        return groups
    options = ctx.options

    def option(name: str | None) -> Any:
        return None if name is None else options.get(name)  # every declared option is there, defaulted

    routes = matrix_routes(ctx.spec, options, ctx.model)
    names: dict[int, str] = {}
    for n, p in ctx.model.named_parameters():
        names.setdefault(id(p), n)
    matrix_lr = option(routing.lr_option)
    other_lr = option(routing.other_lr_option)
    return split_matrix_groups(
        groups, names, routes, flag=routing.flag,
        matrix_lr=float(ctx.hparams["lr"] if matrix_lr is None else matrix_lr),
        other_lr=float(ctx.hparams["lr"] if other_lr is None else other_lr),
        matrix_weight_decay=option(routing.weight_decay_option),
        other_weight_decay=option(routing.other_weight_decay_option),
    )


def get_optimizer_cls_and_kwargs(args: Any, model: Any = None) -> tuple[Any, dict[str, Any]]:
    """``(optimizer class or factory, kwargs)`` for ``args.optim``, as ``Trainer.get_optimizer_cls_and_kwargs``.

    Example::

        cls, kwargs = get_optimizer_cls_and_kwargs(TrainingArguments("out", optim="sgd"))
        # (torch.optim.SGD, {"lr": 5e-05})
    """
    spec = spec_for(_name_of(args))
    deps.check(spec.name, spec.requires)
    if spec.unsupported:
        raise ValueError(f"optim={spec.name!r} cannot train through the Trainer: {spec.unsupported}")
    fsdp2 = check_fsdp2(spec, model)
    ctx = make_context(args, model, spec)
    kind = detect_backend(args).kind
    if kind in ZERO_KINDS and spec.distributed.zero_math == "deepspeed_muon":
        return zero.deepspeed_muon(ctx, int(kind[-1]))
    if spec.builder is not None:
        builder = load_builder(spec)
        cls, kwargs = checked_result(spec, builder, builder(ctx))
    else:
        cls, kwargs = ctx.target(), ctx.with_groups(dict(ctx.kwargs))
    if ctx.rules and not is_factory(cls) and not any(k in kwargs for k in ("params", "model", "optimizer_dict")):
        # A builder that left the groups to the Trainer would drop the rules: hand it the composed ones.
        kwargs = {**kwargs, "params": ctx.groups}
    if spec.layerwise:
        from .layerwise import layerwise_factory

        return layerwise_factory(ctx, cls, kwargs)
    if fsdp2 and spec.distributed.fsdp2_math == "owner":
        cls = owner_stepped(spec, cls)
    elif fsdp2 and spec.protocol == "train_eval" and not is_factory(cls):
        from .sharded import train_mode_init_class

        cls = train_mode_init_class(cls)  # accelerate's FSDP2 resume steps a fresh one, still in eval mode
    if kind in ZERO_KINDS and zero.needs_stepping(spec, kind):
        cls = zero_stepped(spec, cls, kind)
    return cls, kwargs


def load_builder(spec: OptimizerSpec) -> Callable[..., Any]:
    """The record's builder, refused with a ``ValueError`` unless it can be called with one BuildContext."""
    builder = deps.import_object(spec.builder) if isinstance(spec.builder, str) else spec.builder
    problem = None
    if not callable(builder):
        problem = f"is {shorten(builder)}, which cannot be called"
    else:
        try:
            inspect.signature(builder).bind(None)
        except TypeError:
            problem = f"({_qualname(builder)}{_signature_text(builder)}) cannot be called with one argument"
        except ValueError:  # no signature (a builtin): let the call decide
            pass
    if problem:
        raise ValueError(
            f"optim={spec.name!r} (from {spec.source}): its builder {problem}. A builder is a function "
            "(ctx: BuildContext) -> (optimizer class or factory, kwargs dict); to register an optimizer class, "
            "pass a torch.optim.Optimizer subclass instead (docs/plugins.md)."
        )
    return builder  # type: ignore[return-value]


def _qualname(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def _signature_text(obj: Any) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def checked_result(spec: OptimizerSpec, builder: Any, result: Any) -> tuple[Any, dict[str, Any]]:
    """A builder's ``(cls_or_factory, kwargs)``, or a ``ValueError`` naming what it returned instead."""
    ok = (
        isinstance(result, tuple)
        and len(result) == 2
        and callable(result[0])
        and isinstance(result[1], dict)
        and all(isinstance(k, str) for k in result[1])
    )
    if not ok:
        raise ValueError(
            f"optim={spec.name!r} (from {spec.source}): its builder {_qualname(builder)} returned "
            f"{shorten(result)}; a builder must return (optimizer class or factory, kwargs dict), e.g. "
            "(torch.optim.AdamW, {'lr': ctx.hparams['lr']}). Fix the builder."
        )
    return result
FSDP2_TEXT = "FSDP2 (fully_shard, DTensor parameters)"


def check_fsdp2(spec: OptimizerSpec, model: Any) -> bool:
    """Whether ``model`` is sharded by FSDP2; ``ValueError`` naming FSDP2 if ``spec`` cannot train it.

    Decided from the record (``distributed.fsdp2``) and the parameters' layout, before anything is built.
    """
    if model is None or not hasattr(model, "named_parameters"):
        return False
    from .sharded import fsdp2_parameters, layout_of

    sharded = fsdp2_parameters(model)
    if not sharded:
        return False
    verdict = spec.distributed.fsdp2
    if verdict is not True:
        reason = f": {verdict}" if isinstance(verdict, str) else ""
        raise ValueError(
            f"optim={spec.name!r} does not support {FSDP2_TEXT}{reason}. See `optim-registry show "
            f"{spec.name}`, or choose a name whose record supports FSDP2 (docs/distributed.md)."
        )
    import torch.distributed as dist

    if not dist.is_initialized():
        raise ValueError(
            f"the model is sharded by {FSDP2_TEXT} but no process group is initialised; "
            "call torch.distributed.init_process_group (torchrun does the launching) before building optim="
            f"{spec.name!r}."
        )
    for name, param in sharded:
        try:
            layout_of(param, f"parameter {name!r}")
        except ValueError as exc:
            raise ValueError(f"optim={spec.name!r} under FSDP2: {exc}") from None
    if spec.distributed.fsdp2_math == "owner" and spec.protocol != "step":
        raise ValueError(
            f"optim={spec.name!r} follows the {spec.protocol!r} protocol, which changes the weights outside "
            f"step(); its whole-tensor copies under {FSDP2_TEXT} would miss that. Choose another optimizer."
        )
    return True


def zero_stepped(spec: OptimizerSpec, cls: Any, kind: str) -> Any:
    """``cls`` with ``optim_registry.zero.ZeroStepped`` in front, for ZeRO-3 steps and the train/eval protocol."""
    if is_factory(cls):
        raise ValueError(
            f"optim={spec.name!r} is built by a factory, which cannot be stepped under DeepSpeed ZeRO stage "
            f"{kind[-1]} (whose flat sub-groups need the class itself); use ZeRO-1/2, FSDP2 or DDP."
        )
    return zero.zero_stepped_class(cls, int(kind[-1]), spec.distributed.zero_math == "views")


def owner_stepped(spec: OptimizerSpec, cls: Any) -> Any:
    """``cls`` run on whole tensors, each on one owner rank (``optim_registry.sharded.OwnerStepped``)."""
    if is_factory(cls):
        raise ValueError(
            f"optim={spec.name!r} is built by a factory from the model, which cannot be given whole-tensor "
            f"copies under {FSDP2_TEXT}; train it unsharded or choose another optimizer."
        )
    from .sharded import owner_stepped_class

    return owner_stepped_class(cls)


def instantiate(
    cls: Any, kwargs: dict[str, Any], model: Any, default_groups: Callable[[], list[dict[str, Any]]]
) -> Any:
    """Build the optimizer exactly as the stock ``Trainer.create_optimizer`` would."""
    kwargs = dict(kwargs)
    if is_factory(cls):
        return cls()(model, **kwargs)
    params: Any = None
    for magic in ("params", "model", "optimizer_dict"):
        if magic in kwargs:
            params = kwargs.pop(magic)
    if params is None:
        params = default_groups()
    return cls(params, **kwargs)


def create_optimizer(args: Any, model: Any) -> Any:
    """The whole build: weight-decay groups, ``optim_target_modules``, layer-wise hooks, 8-bit overrides."""
    spec = spec_for(_name_of(args))
    check_device(spec, model, args)
    cls, kwargs = get_optimizer_cls_and_kwargs(args, model)
    weight_decay = float(args.weight_decay)
    optimizer = instantiate(cls, kwargs, model, lambda: build_groups(model, weight_decay=weight_decay))
    check_rules_applied(args, optimizer, model)
    finalize(optimizer, spec, model)
    return optimizer


def check_rules_applied(args: Any, optimizer: Any, model: Any) -> None:
    """``ValueError`` when ``optim_groups`` rules were given but the built optimizer's groups ignore them.

    A builder (a plugin's, or a factory) that builds its own groups from the model would drop the rules
    without a word; each parameter's starting rate and weight decay are compared with what the rules give.
    """
    if not getattr(args, "optim_groups", None) or model is None:
        return
    spec = spec_for(_name_of(args))
    ctx = make_context(args, model, spec)
    if not ctx.rules or ctx.groups is None:
        return
    planned = {id(p): g for g in ctx.groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in getattr(optimizer, "param_groups", None) or ():
        for p in group["params"]:
            want = planned.get(id(p))
            if want is None:
                continue
            # initial_lr too: a scheduler starts each group from it, so a wrong one undoes the rules at step 1.
            for key in ("lr", "initial_lr", "weight_decay"):
                have = group.get(key)
                wanted = want.get("lr" if key == "initial_lr" else key)
                if have is None or wanted is None:
                    continue
                if not _close(float(have), float(wanted)):
                    raise ValueError(
                        f"optim={spec.name!r}: the optimizer its builder made ignores optim_groups: parameter "
                        f"{names.get(id(p), '?')} has {key}={float(have):g}, the rules give {float(wanted):g}. "
                        "A builder must build on BuildContext.groups (docs/plugins.md), or drop optim_groups."
                    )


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12 + 1e-9 * max(abs(a), abs(b))


def check_device(spec: OptimizerSpec, model: Any = None, args: Any = None) -> None:
    """Refuse a GPU-only optimizer when no GPU is there, before anything is built."""
    if spec.needs_gpu is None:
        return
    import torch

    if on_cpu(model, args) or not torch.cuda.is_available():
        raise ValueError(
            f"optim={spec.name!r} needs a CUDA GPU ({spec.needs_gpu}) and none is in use here. "
            f"Train on a GPU, or choose a CPU-capable name (`optim-registry list --available`)."
        )


def adapter(spec: OptimizerSpec) -> Callable[[Any], None] | None:
    """The record's post-construction fix (``spec.adapt``), imported."""
    adapt = spec.adapt
    return deps.import_object(adapt) if isinstance(adapt, str) else adapt


def finalize(optimizer: Any, spec: OptimizerSpec, model: Any) -> None:
    """After construction, before the first step: the record's fix, 32-bit state for embeddings, provenance."""
    adapt = adapter(spec)
    if adapt is not None and not spec.layerwise:  # layer-wise: each inner optimizer is adapted when built
        adapt(optimizer)
    if spec.embedding_32bit and model is not None:
        keep_embeddings_32bit(model)
    try:
        optimizer.optim_registry_name = spec.name
    except AttributeError:  # pragma: no cover - optimizers with __slots__
        pass


def keep_embeddings_32bit(model: Any) -> int:
    """Tell bitsandbytes to keep ``nn.Embedding`` state in 32 bits; returns the parameters covered.

    Once per module: transformers' ``Trainer.create_optimizer`` registers the same override itself for any
    class whose name contains "bitsandbytes" built with ``optim_bits=8``, and bitsandbytes' list only grows.
    """
    import bitsandbytes
    from torch import nn

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    registered = {
        id(module)
        for module, param, config in manager.module_weight_config_triple
        if param == "weight" and config == {"optim_bits": 32}
    }
    covered = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            if id(module) not in registered:
                manager.register_module_override(module, "weight", {"optim_bits": 32})
            covered += module.weight.numel()
    return covered
