"""DeepSpeed ZeRO (stages 1, 2 and 3) through the Trainer: each name trains as in one process, or is refused.

Under ZeRO the torch optimizer never sees the model's tensors. ZeRO-1/2 give it one flat fp32 partition per
param group and step one group at a time (the other groups hidden); ZeRO-3 gives it flat fp32 sub-groups and
calls ``step()`` once per sub-group, every other group's ``params`` emptied; the model's weights are copied
from those fp32 partitions only after a step. A record's ``distributed.zero1/2/3`` says whether a stage can
work; ``distributed.zero_math`` how it runs:

- ``"local"``: the library's own step on the flat partitions, exact for elementwise updates. Under ZeRO-3 a
  step sees only the group it updates, and a group split into several sub-groups keeps the group-level
  counters it had before its first sub-group (schedule-free's ``k`` / ``weight_sum`` were advanced once per
  sub-group of every group: 1e-2 off in 3 steps); ``train()`` / ``eval()`` (schedule-free) reach the model's
  weights (``ZeroStepped``).
- ``"deepspeed_muon"``: DeepSpeed's own Muon (``deepspeed.runtime.zero.muon``), which orthogonalises whole
  gradients inside ZeRO's partitioning, handed the registry's groups, rates and routing: each parameter's
  ``use_muon`` tag is the registry's route (the labels table's, ``build.matrix_routes``), never DeepSpeed's name test; the AdamW
  side is ``torch.optim.AdamW``, as the registry's own. What it cannot follow is refused by name (``check``).

Everything the arguments alone show is refused when they are created (``check``, from
``distributed.check_distributed``); the DeepSpeed config is settled when the optimizer is built
(``configure``), before ``deepspeed.initialize`` reads it.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Mapping
from typing import Any

from .spec import OptimizerSpec

ZERO_KINDS = ("zero1", "zero2", "zero3")
#: Newton-Schulz iterations DeepSpeed's Muon runs (its ZeRO paths never pass another count).
DEEPSPEED_NS_STEPS = 5
#: DeepSpeed's "standard" Newton-Schulz: the registry's quintic coefficients in bfloat16 ("gram", DeepSpeed's
#: default, is another iteration in float16).
NS_METHOD = "standard"
FSDP2_WAY = "fsdp='full_shard', fsdp_config={'fsdp_version': 2}"
BLOCKWISE_WARNING = (
    "optim={name!r} under DeepSpeed ZeRO stage {stage}: its state is quantised in blocks, which ZeRO lays over "
    "its flat partitions, across tensors (and tensors under 4096 elements and the embeddings, kept in 32 bits in "
    "one process, are quantised too): it trains, but not as one process does (docs/distributed.md: 1.8e-2 apart "
    "after 3 steps on the test model, where 8-bit and 32-bit state end 8.8e-4 apart and SGD 3e-2). For the "
    "one-process update train it with FSDP2 ({fsdp2}), or use a 32-bit name (adamw_torch, paged_adamw_32bit, "
    "lion_32bit)."
)


def stage_of(kind: str) -> int | None:
    """``zero2`` -> 2; ``None`` for a back-end that is not ZeRO."""
    return int(kind[-1]) if kind in ZERO_KINDS else None


def _clipping(args: Any, config: dict[str, Any]) -> tuple[float, bool]:
    """The gradient-clipping norm DeepSpeed will use and whether the user asked for it explicitly.

    ``"auto"`` (or no key: ``configure`` fills it the same way) takes ``max_grad_norm``; transformers' default
    for that counts as not asked.
    """
    import transformers

    value = config.get("gradient_clipping", "auto")
    if value in ("auto", None):
        norm = float(getattr(args, "max_grad_norm", 0.0) or 0.0)
        # transformers' own default (layerwise.default_max_grad_norm reads the same field; importing it here
        # would close an import cycle through build)
        default = float(transformers.TrainingArguments.__dataclass_fields__["max_grad_norm"].default)
        return norm, norm > 0 and norm != default
    return float(value), float(value) > 0


def check(spec: OptimizerSpec, args: Any, kind: str, config: dict[str, Any], options: Mapping[str, Any]) -> None:
    """Refuse, with one ``ValueError``, what the arguments show a supported ZeRO stage cannot do for ``spec``.

    ``options``: every declared option, typed (the plan's); ``config``: the DeepSpeed config.
    """
    stage = stage_of(kind)
    if stage is None:
        return
    zero = config.get("zero_optimization") or {}
    offload = (zero.get("offload_optimizer") or {}).get("device")
    if spec.protocol == "train_eval" and offload == "nvme":
        raise ValueError(
            f"optim={spec.name!r} switches between train and eval weights (train()/eval()), which needs the "
            f"fp32 weights in memory; DeepSpeed ZeRO stage {stage} with offload_optimizer device 'nvme' swaps them "
            "out. Offload to 'cpu' instead, or drop the optimizer offload."
        )
    if spec.distributed.zero_math == "deepspeed_muon":
        _check_muon(spec, args, stage, config, options)


def _check_muon(spec: OptimizerSpec, args: Any, stage: int, config: dict[str, Any], options: Mapping[str, Any]) -> None:
    problems = muon_conflicts(dict(options))
    where = f"optim={spec.name!r} under DeepSpeed ZeRO stage {stage} runs DeepSpeed's own Muon"
    way_out = f"or train with FSDP2 ({FSDP2_WAY}) or DDP, where the registry's own Muon runs"
    if problems:
        raise ValueError(f"{where}, which cannot follow {'; '.join(problems)}. Drop these optim_args, {way_out}.")
    norm, explicit = _clipping(args, config)
    if norm > 0 and explicit:
        raise ValueError(
            f"{where}, which replaces each matrix's gradient by its orthogonalised update before ZeRO measures the "
            f"gradient norm: clipping to {norm:g} (max_grad_norm / the DeepSpeed config's gradient_clipping) would "
            "clip that update (norm about sqrt(rows) per matrix), not the gradient, and shrink every step. Set "
            f"max_grad_norm=0 and gradient_clipping 0 or 'auto' in the DeepSpeed config, {way_out} with clipping."
        )
    zero = config.get("zero_optimization") or {}
    if stage == 3 and zero.get("reduce_scatter") is True:
        raise ValueError(
            f"{where}, which needs whole gradients: DeepSpeed refuses it with 'reduce_scatter': true. Set "
            "zero_optimization.reduce_scatter to false (or leave it out: the registry then sets it false)."
        )


def muon_conflicts(values: dict[str, Any]) -> list[str]:
    """What in ``values`` (Muon options or a group's settings) DeepSpeed's Muon cannot do, as phrases."""
    problems = []
    if "nesterov" in values and not values["nesterov"]:
        problems.append("nesterov=false (it always uses Nesterov momentum)")
    if "ns_steps" in values and int(values["ns_steps"]) != DEEPSPEED_NS_STEPS:
        problems.append(f"ns_steps={values['ns_steps']} (it runs {DEEPSPEED_NS_STEPS} Newton-Schulz iterations)")
    if values.get("adjust_lr_fn") not in (None, "original"):
        problems.append(f"adjust_lr_fn={values['adjust_lr_fn']!r} (it scales each matrix's rate by "
                        "sqrt(max(1, rows/cols)), adjust_lr_fn='original')")
    return problems


# ----------------------------------------------------------------------------------------- the Trainer


def configure(trainer: Any, spec: OptimizerSpec | None) -> None:
    """Settle the DeepSpeed config ``deepspeed.initialize`` will read, when the optimizer is built.

    ``spec``: the record the registry builds from (``None``: the optimizer comes from elsewhere).

    - no ``gradient_clipping`` key: DeepSpeed would not clip while ``max_grad_norm`` says to (and one process
      clips): it is filled from ``max_grad_norm``, as ``"auto"`` is;
    - Muon: clipping off (only transformers' default ``max_grad_norm`` gets here: ``check`` refuses any other),
      with one warning; ZeRO-3: ``reduce_scatter`` false, which DeepSpeed's Muon needs.
    """
    plugin = getattr(getattr(trainer.accelerator, "state", None), "deepspeed_plugin", None)
    config = getattr(plugin, "deepspeed_config", None)
    if not isinstance(config, dict):
        return
    zero = config.setdefault("zero_optimization", {})
    stage = int(zero.get("stage", 0) or 0)
    norm = float(getattr(trainer.args, "max_grad_norm", 0.0) or 0.0)
    if "gradient_clipping" not in config and norm > 0:
        config["gradient_clipping"] = norm
    if spec is None or stage not in (1, 2, 3):
        return
    if spec.distributed.zero_math == "blockwise":
        warnings.warn(BLOCKWISE_WARNING.format(name=spec.name, stage=stage, fsdp2=FSDP2_WAY), UserWarning,
                      stacklevel=3)
    if spec.distributed.zero_math != "deepspeed_muon":
        return
    if float(config.get("gradient_clipping") or 0.0) > 0:
        warnings.warn(
            f"optim={spec.name!r} under DeepSpeed ZeRO stage {stage}: no gradient clipping is applied (max_grad_norm="
            f"{norm:g} is transformers' default). DeepSpeed's Muon measures the norm after orthogonalising, so "
            "clipping would shrink the update itself. Set max_grad_norm=0 to say no clipping is wanted, or train "
            "with FSDP2 or DDP to clip the gradients.",
            UserWarning,
            stacklevel=3,
        )
        config["gradient_clipping"] = 0.0
    if stage == 3:
        zero["reduce_scatter"] = False


def check_given(trainer: Any) -> None:
    """Refuse an optimizer or scheduler instance given to a Trainer under DeepSpeed: it would be replaced.

    transformers' ``deepspeed_init`` sets ``trainer.optimizer = None`` and builds one from the arguments (and
    a scheduler from them), so ``optimizers=(opt, sched)`` would train something else without a word.
    """
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return
    from accelerate.utils import DeepSpeedOptimizerWrapper

    given = []
    optimizer = getattr(trainer, "optimizer", None)
    if optimizer is not None and not isinstance(optimizer, DeepSpeedOptimizerWrapper):
        given.append(f"the optimizer {type(optimizer).__name__}")
    scheduler = getattr(trainer, "lr_scheduler", None)
    if scheduler is not None and not getattr(trainer, "_created_lr_scheduler", False):
        given.append(f"the scheduler {type(scheduler).__name__}")
    if not given:
        return
    stage = getattr(trainer.accelerator.state.deepspeed_plugin, "zero_stage", "?")
    cls = type(optimizer) if optimizer is not None and not isinstance(optimizer, DeepSpeedOptimizerWrapper) else None
    example = f"{cls.__module__}.{cls.__qualname__}" if cls is not None else "torch.optim.SGD"
    raise ValueError(
        f"{' and '.join(given)} given to the Trainer (optimizers=(...)) would not be used under DeepSpeed ZeRO "
        f"stage {stage}: transformers' deepspeed_init builds a new optimizer and scheduler from the arguments "
        "instead, without a word. Choose the optimizer by name (optim='sgd', optim_args='momentum=0.9'), or pass "
        f"its class and keyword arguments: optimizer_cls_and_kwargs=({example}, {{'lr': ...}}); choose the "
        "scheduler with lr_scheduler_type / lr_scheduler_kwargs."
    )


def attach(optimizer: Any) -> None:
    """Give a ``ZeroStepped`` optimizer inside DeepSpeed's wrappers the ZeRO optimizer that holds it."""
    holder, inner = None, optimizer
    while inner is not None and not isinstance(inner, ZeroStepped):
        holder, inner = inner, getattr(inner, "optimizer", None)
    if inner is not None and holder is not None and inner._registry_zero is None:
        inner._registry_zero = holder


# ----------------------------------------------------------------------------------------- "local"


class ZeroStepped:
    """Put in front of a library optimizer's class under ZeRO-3 or for the train/eval protocol.

    ``step``, ZeRO-3: the groups without parameters are hidden (as ZeRO-1/2 do themselves), and a group that
    ZeRO-3 split into several flat sub-groups starts each of them from the group-level values (counters such as
    schedule-free's ``k``, ``weight_sum``, ``lr_max``) it had before the first one of this step, so they
    advance once per step, as in one process.

    ``train()`` / ``eval()``: they move ZeRO's fp32 partitions; the model's weights are then copied from them,
    as after a step (ZeRO-1/2 ``update_lp_params``, ZeRO-3 each sub-group's partition), so evaluation and saving
    see the weights one process would.
    """

    _registry_zero: Any = None  # the engine's ZeRO optimizer (``attach``)
    _registry_zero_stage: int = 0

    def step(self, closure: Any = None) -> Any:
        if self._registry_zero_stage != 3:
            return super().step(closure)  # type: ignore[misc]
        groups = self.param_groups  # type: ignore[attr-defined]
        live = [g for g in groups if g["params"]]
        self._registry_one_count_per_step(live)
        self.param_groups = live
        try:
            return super().step(closure)  # type: ignore[misc]
        finally:
            self.param_groups = groups

    def _registry_one_count_per_step(self, live: list[dict[str, Any]]) -> None:
        # Within one ZeRO-3 step each sub-group of a group comes once, in order: a sub-group seen before starts
        # a new step; any other restores the values the group had before the step's first sub-group.
        marks = self.__dict__.setdefault("_registry_subgroups", {})
        for group in live:
            first = id(group["params"][0])
            seen, before = marks.get(id(group), (set(), None))
            if before is None or first in seen:
                before = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
                seen = {first}
            else:
                group.update(copy.deepcopy(before))
                seen.add(first)
            marks[id(group)] = (seen, before)

    def _registry_switch(self, mode: str) -> Any:
        zero = self._registry_zero
        switch = getattr(super(), mode)
        if zero is None:  # before DeepSpeed wrapped it: nothing to reach yet
            return switch()
        groups = self.param_groups  # type: ignore[attr-defined]
        before = [g.get("train_mode") for g in groups]
        saved = None
        if self._registry_zero_stage == 3:
            # Outside step() the groups hold no parameters: give them their fp32 sub-groups for the switch.
            saved = [g["params"] for g in groups]
            flats: dict[int, list[Any]] = {}
            for sub, gid in sorted(zero.sub_group_to_group_id.items()):
                flats.setdefault(gid, []).append(zero.fp32_partitioned_groups_flat[sub])
            for gid, group in enumerate(groups):
                group["params"] = flats.get(gid, [])
        try:
            result = switch()
        finally:
            if saved is not None:
                for group, params in zip(groups, saved, strict=True):
                    group["params"] = params
        if [g.get("train_mode") for g in groups] != before:
            _copy_to_model(zero, self._registry_zero_stage)
        return result


def _copy_to_model(zero: Any, stage: int) -> None:
    """The model's weights from ZeRO's fp32 partitions, as DeepSpeed does after a step (every rank calls it)."""
    import torch

    with torch.no_grad():
        if stage == 3:
            # As around DeepSpeed's own checkpointing: release every gathered copy first (small "persistent"
            # parameters stay gathered between steps, and gathering skips a parameter that is), write the new
            # partitions, then gather the persistent ones again.
            zero.checkpoint_event_prologue()
            for sub in range(len(zero.fp16_groups)):
                zero._reassign_or_swap_out_partitioned_parameters(sub)
            zero.checkpoint_event_epilogue()
        else:
            zero.update_lp_params()


def _train(self: Any) -> Any:
    return self._registry_switch("train")


def _eval(self: Any) -> Any:
    return self._registry_switch("eval")


def needs_stepping(spec: OptimizerSpec, kind: str) -> bool:
    """Whether ``spec`` under ``kind`` needs ``ZeroStepped`` in front of its class."""
    return spec.distributed.zero_math in ("local", "blockwise") and (kind == "zero3" or spec.protocol == "train_eval")


@functools.cache
def zero_stepped_class(cls: type, stage: int) -> type:
    """``cls`` with ``ZeroStepped`` in front; built with ``cls(params, **kwargs)`` as the Trainer does."""
    body: dict[str, Any] = {"__module__": __name__, "_registry_zero_stage": stage}
    if callable(getattr(cls, "train", None)) and callable(getattr(cls, "eval", None)):
        body.update(train=_train, eval=_eval)
    return type(f"ZeRO{stage}{cls.__name__}", (ZeroStepped, cls), body)


# ----------------------------------------------------------------------------------------- Muon


def deepspeed_muon(ctx: Any, stage: int) -> tuple[type, dict[str, Any]]:
    """DeepSpeed's Muon over the registry's routed groups (``build.compose_groups``) under ZeRO ``stage``.

    Muon groups get ``momentum`` (unless a rule set it) and DeepSpeed's ``"standard"`` Newton-Schulz; AdamW
    groups ``betas`` / ``eps``; rates and weight decay are already in every group.
    """
    spec, opts, hp = ctx.spec, ctx.options, ctx.hparams
    flag = spec.routing.flag
    ctx.require_model()
    groups = []
    for group in ctx.groups or ():
        group = dict(group)
        if group[flag]:
            group.setdefault("momentum", float(opts["momentum"]))
            problems = muon_conflicts(group)
            if problems:
                raise ValueError(
                    f"optim={spec.name!r} under DeepSpeed ZeRO stage {stage} runs DeepSpeed's own Muon, which cannot "
                    f"follow the optim_groups setting {'; '.join(problems)}. Drop it from the rules, or train with "
                    f"FSDP2 ({FSDP2_WAY}) or DDP."
                )
            group["ns_method"] = NS_METHOD
        else:
            group.setdefault("betas", tuple(hp["betas"]))
            group.setdefault("eps", float(hp["eps"]))
        groups.append(group)
    momenta = sorted({float(g["momentum"]) for g in groups if g[flag]})
    if stage == 3 and len(momenta) > 1:
        raise ValueError(
            f"optim={spec.name!r} under DeepSpeed ZeRO stage 3: DeepSpeed's Muon takes one momentum for every "
            f"matrix, the optim_groups rules give {momenta}. Use one momentum, or ZeRO-1/2."
        )
    return deepspeed_muon_class(), {"params": groups}


@functools.cache
def deepspeed_muon_class() -> type:
    """A subclass of DeepSpeed's ``MuonWithAuxAdam`` (ZeRO recognises its class) built from the groups alone."""
    import torch
    from deepspeed.runtime.zero.muon.muon_optimizer import MuonWithAuxAdam

    class ZeROMuonWithAdamW(MuonWithAuxAdam):
        """DeepSpeed's Muon on the ``use_muon`` groups, ``torch.optim.AdamW`` on the others.

        Each parameter's ``use_muon`` attribute (what ZeRO reads) is set from its group: the registry's route.
        """

        def __init__(self, params: Any) -> None:
            groups = [dict(g, params=list(g["params"])) for g in params]
            for group in groups:
                for p in group["params"]:
                    p.use_muon = bool(group["use_muon"])
            super().__init__(groups, adam_optimizer=torch.optim.AdamW, adam_w_mode=True)

    ZeROMuonWithAdamW.__module__ = __name__
    return ZeROMuonWithAdamW
