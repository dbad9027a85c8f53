"""The only place the parts meet: a plan + a model -> ``(cls_or_factory, kwargs)`` -> optimizer (and scheduler).

``get_optimizer_cls_and_kwargs`` keeps transformers' contract (magic keys ``params``, ``model``,
``optimizer_dict``; factories called ``factory()(model, **kwargs)``), so the stock
``Trainer.create_optimizer`` can consume what it returns. What the arguments mean comes from their
``plan.Plan`` (resolved once); what a Trainer knows beyond them (its decay names, the run's length) comes in
as ``TrainerFacts``, explicitly. Everything that can go wrong is checked before the model is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import deps
from .context import NO_FACTS, BuildContext, TrainerFacts
from .distributed import FSDP2, check_support, fsdp2_verdict
from .engines import zero
from .engines.zero import ZERO_KINDS
from .labels import label_parameters
from .optim_args import shorten
from .param_groups import DEFAULT_MATRIX_EXCLUDE, build_groups, routes, split_matrix_groups
from .plan import plan_of
from .registry import load_builder, optimizers, qualname
from .runnable import check_here, on_cpu
from .spec import OptimizerSpec, is_factory, plain_name


def make_context(args: Any, model: Any = None, *, facts: TrainerFacts | None = None) -> BuildContext:
    """Everything for ``args.optim`` typed and checked (from its plan), and the groups when a model is given.

    Touches nothing in the model.
    """
    plan = plan_of(args)
    spec = plan.spec
    ctx = BuildContext(
        spec=spec, args=args, model=model, options=dict(plan.options), hparams=dict(plan.hparams),
        kwargs=dict(plan.kwargs), given=dict(plan.given), rules=plan.rules, plan=plan, facts=facts or NO_FACTS,
    )
    if (spec.needs_model or spec.target_modules or spec.layerwise or spec.routing or plan.rules) and model is None:
        ctx.require_model()
    if model is not None:
        ctx.labels = label_parameters(
            model, decay_names=ctx.facts.decay_names, target_patterns=plan.target_patterns,
            subject=f"optim={spec.name!r}", rules=plan.rules,
            exclude=routing_policy(spec, ctx.options)["exclude"] if spec.routing else None,
        )
        ctx.groups = compose_groups(ctx)
    return ctx


def compose_groups(ctx: BuildContext) -> list[dict[str, Any]]:
    """The one place groups are made, from the labels: weight-decay split x target modules, matrix routing, then
    the rules.

    Pure over the model (nothing in it changes); every mistake is raised before anything is built.
    """
    table = ctx.labels
    groups = build_groups(table, weight_decay=ctx.hparams["weight_decay"], target_options=ctx.plan.target_options)
    if ctx.spec.routing is not None:
        groups = _route(ctx, groups)
    if ctx.rules:
        from .group_rules import compose

        groups = compose(table, groups, ctx.rules, default_lr=ctx.hparams["lr"])
    return groups


def routing_policy(spec: OptimizerSpec, options: dict[str, Any]) -> dict[str, Any]:
    """How ``spec.routing`` sends parameters, from the options its routing names (the defaults where it names none)."""
    routing = spec.routing

    def option(name: str | None, default: Any) -> Any:
        return default if name is None else options[name]

    return {
        "exclude": option(routing.exclude_option, DEFAULT_MATRIX_EXCLUDE),
        "lora_to_adamw": bool(option(routing.lora_option, True)),
        "experts": routing.experts and bool(option(routing.experts_option, True)),
        "router_to_adamw": bool(option(routing.router_option, True)),
    }


def matrix_routes(ctx: BuildContext) -> dict[str, str]:
    """Each trainable parameter's route under the record's routing (see ``param_groups.ROUTES``)."""
    policy = routing_policy(ctx.spec, ctx.options)
    policy.pop("exclude")  # a label already (``excluded``)
    return routes(ctx.labels, **policy)


def _route(ctx: BuildContext, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    routing = ctx.spec.routing
    options = ctx.options

    def option(name: str | None) -> Any:
        return None if name is None else options.get(name)  # every declared option is there, defaulted

    matrix_lr = option(routing.lr_option)
    other_lr = option(routing.other_lr_option)
    return split_matrix_groups(
        groups, ctx.labels, matrix_routes(ctx), flag=routing.flag,
        matrix_lr=float(ctx.hparams["lr"] if matrix_lr is None else matrix_lr),
        other_lr=float(ctx.hparams["lr"] if other_lr is None else other_lr),
        matrix_weight_decay=option(routing.weight_decay_option),
        other_weight_decay=option(routing.other_weight_decay_option),
    )


def get_optimizer_cls_and_kwargs(
    args: Any, model: Any = None, *, facts: TrainerFacts | None = None
) -> tuple[Any, dict[str, Any]]:
    """``(optimizer class or factory, kwargs)`` for ``args.optim``, as ``Trainer.get_optimizer_cls_and_kwargs``.

    ``facts`` is what a Trainer knows beyond the arguments (``OptimRegistryMixin`` passes its own).

    Example::

        cls, kwargs = get_optimizer_cls_and_kwargs(TrainingArguments("out", optim="sgd"))
        # (torch.optim.SGD, {"lr": 5e-05})
    """
    cls, kwargs, _ = resolve(args, model, facts=facts)
    return cls, kwargs


def resolve(
    args: Any, model: Any = None, *, facts: TrainerFacts | None = None
) -> tuple[Any, dict[str, Any], BuildContext]:
    """``get_optimizer_cls_and_kwargs`` and the ``BuildContext`` it was made from (its planned groups)."""
    # Installed, trainable through a Trainer and able to train the model as it is sharded, before what the
    # arguments mean (the device is judged where the model is known: create_optimizer, the Trainer).
    spec = optimizers.get(plain_name(args.optim))
    check_here(spec)
    fsdp2 = check_fsdp2(spec, model)
    ctx = make_context(args, model, facts=facts)
    spec = ctx.spec
    kind = ctx.plan.backend.kind
    if kind in ZERO_KINDS and spec.distributed.zero_math == "deepspeed_muon":
        cls, kwargs = zero.deepspeed_muon(ctx, int(kind[-1]))
        return cls, kwargs, ctx
    if spec.builder is not None:
        builder = load_builder(spec)
        cls, kwargs = checked_result(spec, builder, builder(ctx))
    else:
        cls, kwargs = ctx.target(), ctx.with_groups(dict(ctx.kwargs))
    if ctx.rules and not is_factory(cls) and not any(k in kwargs for k in ("params", "model", "optimizer_dict")):
        # A builder that left the groups to the Trainer would drop the rules: hand it the composed ones.
        kwargs = {**kwargs, "params": ctx.groups}
    if spec.layerwise:
        from .engines.layerwise.factory import layerwise_factory

        cls, kwargs = layerwise_factory(ctx, cls, kwargs)
    elif fsdp2 and spec.distributed.fsdp2_math == "owner":
        cls = owner_stepped(spec, cls)
    elif fsdp2 and spec.protocol == "train_eval" and not is_factory(cls):
        from .engines.fsdp2 import train_mode_init_class

        cls = train_mode_init_class(cls)  # accelerate's FSDP2 resume steps a fresh one, still in eval mode
    if kind in ZERO_KINDS and zero.needs_stepping(spec, kind):
        cls = zero_stepped(spec, cls, kind)
    return cls, kwargs, ctx


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
            f"optim={spec.name!r} (from {spec.source}): its builder {qualname(builder)} returned "
            f"{shorten(result)}; a builder must return (optimizer class or factory, kwargs dict), e.g. "
            "(torch.optim.AdamW, {'lr': ctx.hparams['lr']}). Fix the builder."
        )
    return result


def check_fsdp2(spec: OptimizerSpec, model: Any) -> bool:
    """Whether ``model`` is sharded by FSDP2; ``ValueError`` naming FSDP2 if ``spec`` cannot train it.

    Decided from the record (``distributed.fsdp2_verdict``: its ``distributed.fsdp2``, and whether the owner-rank
    path reaches its math) and the parameters' layout, before anything is built.
    """
    if model is None or not hasattr(model, "named_parameters"):
        return False
    from .engines.fsdp2 import fsdp2_parameters, layout_of

    sharded = fsdp2_parameters(model)
    if not sharded:
        return False
    check_support(fsdp2_verdict(spec), FSDP2)
    import torch.distributed as dist

    if not dist.is_initialized():
        raise ValueError(
            f"the model is sharded by {FSDP2.detail} but no process group is initialised; "
            "call torch.distributed.init_process_group (torchrun does the launching) before building optim="
            f"{spec.name!r}."
        )
    for name, param in sharded:
        try:
            layout_of(param, f"parameter {name!r}")
        except ValueError as exc:
            raise ValueError(f"optim={spec.name!r} under FSDP2: {exc}") from None
    return True


def zero_stepped(spec: OptimizerSpec, cls: Any, kind: str) -> Any:
    """``cls`` with ``engines.zero.ZeroStepped`` in front, for ZeRO-3 steps and the train/eval protocol."""
    if is_factory(cls):
        raise ValueError(
            f"optim={spec.name!r} is built by a factory, which cannot be stepped under DeepSpeed ZeRO stage "
            f"{kind[-1]} (whose flat sub-groups need the class itself); use ZeRO-1/2, FSDP2 or DDP."
        )
    return zero.zero_stepped_class(cls, int(kind[-1]), spec.distributed.zero_math == "views")


def owner_stepped(spec: OptimizerSpec, cls: Any) -> Any:
    """``cls`` run on whole tensors, each on one owner rank (``optim_registry.engines.fsdp2.OwnerStepped``)."""
    if is_factory(cls):
        raise ValueError(
            f"optim={spec.name!r} is built by a factory from the model, which cannot be given whole-tensor "
            f"copies under {FSDP2.detail}; train it unsharded or choose another optimizer."
        )
    from .engines.fsdp2 import owner_stepped_class

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


def create_optimizer(args: Any, model: Any, *, facts: TrainerFacts | None = None) -> Any:
    """The whole build: weight-decay groups, ``optim_target_modules``, layer-wise hooks, 8-bit overrides."""
    check_here(optimizers.get(plain_name(args.optim)), on_cpu=on_cpu(model, args))
    cls, kwargs, ctx = resolve(args, model, facts=facts)
    optimizer = instantiate(
        cls, kwargs, model, lambda: build_groups(label_parameters(model), weight_decay=ctx.plan.weight_decay)
    )
    check_rules_applied(ctx, optimizer)
    finalize(optimizer, ctx.spec, model)
    return optimizer


def check_rules_applied(ctx: BuildContext, optimizer: Any) -> None:
    """``ValueError`` when ``optim_groups`` rules were given but the built optimizer's groups ignore them.

    A builder (a plugin's, or a factory) that builds its own groups from the model would drop the rules
    without a word; each parameter's starting rate and weight decay are compared with what the rules give
    (``ctx.groups``, the groups the build planned).
    """
    model = ctx.model
    if not ctx.rules or ctx.groups is None or model is None:
        return
    planned = {id(p): g for g in ctx.groups for p in g["params"]}
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
                        f"optim={ctx.spec.name!r}: the optimizer its builder made ignores optim_groups: parameter "
                        f"{ctx.labels.name_of(p)} has {key}={float(have):g}, the rules give {float(wanted):g}. "
                        "A builder must build on BuildContext.groups (docs/plugins.md), or drop optim_groups."
                    )


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12 + 1e-9 * max(abs(a), abs(b))


def _hook(hook: Any) -> Callable[..., None] | None:
    """A record's hook (``adapt`` / ``adapt_model``), imported when it is a dotted path."""
    return deps.import_object(hook) if isinstance(hook, str) else hook


def finalize(optimizer: Any, spec: OptimizerSpec, model: Any) -> None:
    """After construction, before the first step: the record's hooks, then provenance.

    ``adapt`` gets the optimizer (a layer-wise one's inner optimizers got it when they were built); ``adapt_model``
    gets the optimizer and the model, once (bitsandbytes' 32-bit state for ``nn.Embedding`` weights).
    """
    adapt = _hook(spec.adapt)
    if adapt is not None and not spec.layerwise:
        adapt(optimizer)
    adapt_model = _hook(spec.adapt_model)
    if adapt_model is not None and model is not None:
        adapt_model(optimizer, model)
    try:
        optimizer.optim_registry_name = spec.name
    except AttributeError:  # pragma: no cover - optimizers with __slots__
        pass


# ------------------------------------------------------------------------------------------ the scheduler


def create_scheduler(args: Any, optimizer: Any, num_training_steps: int, *, warmup: int | None = None) -> Any:
    """The scheduler ``args.lr_scheduler_type`` names, driving every param group of ``optimizer``.

    ``warmup`` overrides the warm-up steps taken from the arguments (0 for optimizers that warm up
    themselves). The kwargs were typed once, with the arguments' plan; here they are checked against the
    run (its length, the optimizer's rate) and the scheduler is built.
    """
    from .schedulers import _metric_driven_types, _start_from, check_scheduler_kwargs
    from .schedules.records import reference_lr
    from .spec import RunFacts

    plan = plan_of(args)
    spec = plan.schedule
    if warmup is None:
        warmup = args.get_warmup_steps(num_training_steps) if hasattr(args, "get_warmup_steps") else 0
    run = RunFacts(learning_rate=reference_lr(optimizer, args), total_steps=num_training_steps, warmup_steps=warmup)
    kwargs = dict(plan.schedule_kwargs)
    check_scheduler_kwargs(spec, kwargs, dict(plan.schedule_unknown), run=run, strict=True)
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
