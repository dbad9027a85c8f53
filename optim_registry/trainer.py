"""TrainingArguments, OptimRegistryMixin and OptimTrainer: thin layers over transformers calling super().

The arguments class accepts every registered ``optim`` / ``lr_scheduler_type`` and refuses, when it
is created, any combination the registry knows cannot work. The mixin resolves names through the
registry and honours each optimizer's protocol (layer-wise stepping, train/eval mode around saving,
fused backward) while leaving the rest of the Trainer as it is.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import transformers
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames as HFOptimizerNames

from . import build
from .build import decay_names_override
from .checkpoints import CheckpointMixin, unwrap_optimizer
from .distributed import check_distributed
from .registry import optimizers
from .schedulers import check_kwargs_json, check_scheduler_args, create_scheduler, schedulers

_HF_OPTIMS = {m.value for m in HFOptimizerNames}
_HF_SCHEDULERS = {m.value for m in SchedulerType}


def _plain(value: Any) -> str:
    return str(getattr(value, "value", value))


def validate_training_args(args: Any, *, building: bool = False) -> None:
    """Every check that can be made from the arguments alone, raised before a model exists.

    A missing optimizer package is an environment fact, not a mistake in the arguments: the stock class
    accepts such arguments (they may be written on one machine and trained on another), so creating them
    only warns, and ``building=True`` (when training starts) refuses.
    """
    from . import deps

    name = _plain(args.optim)
    spec = optimizers.get(name)
    if building:
        deps.check(spec.name, spec.requires)
    else:
        deps.warn_missing(spec.name, spec.requires)
    if spec.unsupported:
        raise ValueError(f"optim={name!r} cannot train through the Trainer: {spec.unsupported}")
    if spec.builder is not None and spec.source != "builtin":
        build.load_builder(spec)  # a plugin's "builder" that cannot be one is refused by name, now
    given, _ = build.check_values(spec, args)
    build.parse_group_rules(spec, getattr(args, "optim_groups", None))
    _check_target_modules(spec, getattr(args, "optim_target_modules", None))
    check_scheduler_args(args)
    ga = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
    if spec.needs_gpu is not None:
        import torch

        if not torch.cuda.is_available() or getattr(args, "use_cpu", False):
            raise ValueError(
                f"optim={name!r} needs a CUDA GPU ({spec.needs_gpu}); none is available here. "
                "Train on a GPU, or choose a CPU-capable name (`optim-registry list --available`)."
            )
    if spec.protocol == "fused_backward" and ga > 1:
        raise ValueError(
            f"optim={name!r} updates the weights inside backward, so gradient accumulation cannot work: "
            f"set gradient_accumulation_steps=1 (got {ga}), or choose another optimizer."
        )
    if spec.protocol == "fused_backward" and getattr(args, "fp16", False):
        raise ValueError(
            f"optim={name!r} needs its own backward (fused_backward), but with fp16=True accelerate runs the "
            "GradScaler's backward instead and never calls it. Use bf16=True or full precision."
        )
    if spec.layerwise and getattr(args, "fp16", False):
        raise ValueError(
            f"optim={name!r} steps each parameter inside backward, before fp16 loss scaling can unscale or "
            "check the gradients. Use bf16=True, or the whole-model name " + repr(spec.base) + "."
        )
    if spec.layerwise:
        from .layerwise import check_layerwise_clipping

        # transformers' default max_grad_norm passes (warned about when the optimizer is built); another
        # value needs a clipping option.
        check_layerwise_clipping(spec, args, given)
    check_distributed(spec, args)


#: (optim, target patterns) already warned about: the warning is said once, not at every validation.
_WARNED_UNUSED_TARGETS: set[tuple[str, str]] = set()


def _check_target_modules(spec: Any, patterns: Any) -> None:
    """Target patterns well formed for a record that uses them; a warning for one that does not."""
    from .param_groups import check_target_patterns

    if spec.target_modules:
        if patterns is None:
            raise ValueError(
                f"optim={spec.name!r} needs `optim_target_modules` (e.g. ['self_attn', 'mlp'] or 'all-linear'): "
                "the modules whose weights it projects"
            )
        check_target_patterns(patterns)
        return
    if patterns is None or (spec.builder is not None and spec.source != "builtin"):
        return  # a plugin's own builder may read the patterns itself
    key = (spec.name, repr(patterns))
    if key not in _WARNED_UNUSED_TARGETS:
        _WARNED_UNUSED_TARGETS.add(key)
        import warnings

        from .optim_args import shorten

        warnings.warn(
            f"optim_target_modules={shorten(patterns)} is ignored: optim={spec.name!r} does not use target modules "
            "(GaLore, APOLLO and Q-GaLore names do). Drop optim_target_modules, or choose such an optimizer.",
            UserWarning,
            stacklevel=3,
        )


_OPTIM_GROUPS_HELP = (
    "Per-parameter rates, weight decay and optimizer options by rule: a list of rules (or its JSON string), "
    'e.g. [{"loraplus_lr_ratio": 16}, {"params": "@embeddings", "lr": 1e-5}]. See docs/param_groups.md.'
)


# A dataclass that only declares the field (no __init__/__repr__/__eq__ of its own): a subclass decorated with
# @dataclass gets ``optim_groups`` as a real field (constructor keyword, to_dict(), JSON, HfArgumentParser),
# and an undecorated subclass keeps its parent's constructor and still reads the class default.
@dataclass(init=False, repr=False, eq=False)
class RegistryArgumentsMixin:
    """Makes any ``transformers.TrainingArguments`` subclass accept registry names and ``optim_groups``.

    Decorate the subclass with ``@dataclass`` so ``optim_groups`` becomes one of its fields.

    Example (TRL)::

        @dataclass
        class SFTConfig(RegistryArgumentsMixin, trl.SFTConfig):
            pass

        SFTConfig("out", optim="muon", optim_groups=[{"params": "@embeddings", "lr": 1e-5}])
    """

    optim_groups: list[dict[str, Any]] | str | None = field(default=None, metadata={"help": _OPTIM_GROUPS_HELP})

    def __post_init__(self) -> None:
        optim = _plain(self.optim)
        sched = _plain(self.lr_scheduler_type)
        optimizers.check_name(optim)
        schedulers.check_name(sched)
        # Before the parent's set-up, which imports deepspeed when configured: refuse early.
        check_distributed(optimizers.get(optim), self)
        check_kwargs_json(self)
        # The parent validates against transformers' closed enums: show it a name it knows, then
        # put ours back.
        self.optim = optim if optim in _HF_OPTIMS else HFOptimizerNames.ADAMW_TORCH.value
        self.lr_scheduler_type = sched if sched in _HF_SCHEDULERS else SchedulerType.LINEAR.value
        super().__post_init__()  # type: ignore[misc]
        self.optim = _optimizer_value(optim)
        self.lr_scheduler_type = SchedulerType(sched) if sched in _HF_SCHEDULERS else sched
        validate_training_args(self)

    def set_optimizer(self, name: str = "adamw_torch", *args: Any, **kwargs: Any) -> Any:
        optimizers.check_name(_plain(name))
        before = dict(vars(self))
        try:
            super().set_optimizer("adamw_torch", *args, **kwargs)  # type: ignore[misc]
            self.optim = _optimizer_value(_plain(name))
            validate_training_args(self)
        except BaseException:
            # a refused choice leaves the arguments exactly as they were
            vars(self).clear()
            vars(self).update(before)
            raise
        return self

    def set_lr_scheduler(self, name: str = "linear", *args: Any, **kwargs: Any) -> Any:
        sched = _plain(name)
        schedulers.check_name(sched)
        super().set_lr_scheduler("linear", *args, **kwargs)  # type: ignore[misc]
        self.lr_scheduler_type = SchedulerType(sched) if sched in _HF_SCHEDULERS else sched
        check_scheduler_args(self)
        return self


def _optimizer_value(name: str) -> Any:
    from . import OptimizerNames

    try:
        return OptimizerNames(name)
    except ValueError:  # a plugin or registered name
        return name


@dataclass
class TrainingArguments(RegistryArgumentsMixin, transformers.TrainingArguments):
    """``transformers.TrainingArguments`` whose ``optim`` / ``lr_scheduler_type`` take every registered name.

    ``optim_args`` accepts the ``"k=v,k=v"`` string and a dict.
    """


class OptimRegistryMixin(CheckpointMixin):
    """Registry-backed optimizer and scheduler creation for any ``transformers.Trainer`` subclass.

    ``class MySFT(OptimRegistryMixin, trl.SFTTrainer): ...``
    """

    @staticmethod
    def get_optimizer_cls_and_kwargs(args: Any, model: Any = None) -> tuple[Any, Any]:
        return build.get_optimizer_cls_and_kwargs(args, model)

    def get_decay_parameter_names(self, model: Any) -> set[str]:  # a set: membership tests stay O(1)
        from .param_groups import decay_parameter_names

        return decay_parameter_names(model)

    def get_optimizer_group(self, param: Any = None) -> Any:
        """As the stock method, but finds ``param`` by identity (``in`` on tensors compares values)."""
        if self.optimizer is None:
            raise ValueError("Trainer optimizer is None, please make sure you have setup the optimizer before.")
        if param is not None:
            for group in self.optimizer.param_groups:
                if any(p is param for p in group["params"]):
                    return group
            return None
        return [group["params"] for group in self.optimizer.param_groups]

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self._check_scheduler_before_build(num_training_steps)
        with build.training_steps(num_training_steps):
            super().create_optimizer_and_scheduler(num_training_steps)  # type: ignore[misc]

    def create_optimizer(self, model: Any = None) -> Any:
        fresh = self.optimizer is None and self.optimizer_cls_and_kwargs is None
        opt_model = self.model if model is None else model
        spec = None
        if self.optimizer is None:
            self._check_scheduler_before_build()
        if fresh:
            validate_training_args(self.args, building=True)
            spec = build.spec_for(_plain(self.args.optim))
            build.check_device(spec, opt_model, self.args)
            with decay_names_override(self.get_decay_parameter_names(opt_model)):
                optimizer = super().create_optimizer(model)  # type: ignore[misc]
                build.check_rules_applied(self.args, unwrap_optimizer(optimizer), opt_model)
            build.finalize(unwrap_optimizer(optimizer), spec, opt_model)
        else:
            if self.optimizer is None and getattr(self.args, "optim_groups", None):
                # optimizer_cls_and_kwargs= replaces the registry's build, rules included: say so.
                raise ValueError(
                    "optim_groups rules apply to the optimizer the registry builds, but optimizer_cls_and_kwargs= "
                    "was passed to the Trainer and replaces it. Drop optimizer_cls_and_kwargs (choose the "
                    "optimizer with optim=...), or drop optim_groups and give the groups in its kwargs['params']."
                )
            optimizer = super().create_optimizer(model)  # type: ignore[misc]
        self._install_protocols(unwrap_optimizer(self.optimizer))
        return self.optimizer

    def _check_scheduler_before_build(self, num_training_steps: int | None = None) -> None:
        """The scheduler's whole check (keys it does not take, phases longer than the run), before any
        optimizer exists: one refused afterwards would leave the optimizer's hooks on the model."""
        if self.lr_scheduler is None:
            state_steps = int(getattr(getattr(self, "state", None), "max_steps", 0) or 0)
            total = num_training_steps or (state_steps if state_steps > 0 else None)
            check_scheduler_args(self.args, total, strict=True)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.lr_scheduler is None:
            optimizer = self.optimizer if optimizer is None else optimizer
            inner = unwrap_optimizer(optimizer)
            if getattr(inner, "defaults", {}).get("relative_step") and _is_hf_adafactor(inner):
                from transformers.optimization import AdafactorSchedule

                # Adafactor with relative_step computes its own rate; this proxy reports it.
                self.lr_scheduler = AdafactorSchedule(inner)
            else:
                spec = _spec_of(inner)
                owns_warmup = spec is not None and spec.owns_warmup
                self.lr_scheduler = create_scheduler(
                    self.args, optimizer, num_training_steps, warmup=0 if owns_warmup else None
                )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)  # type: ignore[misc]

    def _get_learning_rate(self) -> Any:
        # The loop calls this after optimizer.step() and before the scheduler steps: these are the rates
        # the step just used. Read later, in ``log``, they would already be the next step's.
        inner = unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
        self._group_rates = [_as_float(g.get("lr")) for g in inner.param_groups] if inner is not None else None
        return super()._get_learning_rate()  # type: ignore[misc]

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds every param group's learning rate when they differ (the stock Trainer logs only the first)."""
        rates = getattr(self, "_group_rates", None)
        if "learning_rate" in logs and rates and _groups_differ(unwrap_optimizer(self.optimizer)):
            for i, rate in enumerate(rates):
                logs[f"learning_rate/group_{i}"] = rate
        super().log(logs, *args, **kwargs)  # type: ignore[misc]

    # -- protocols --------------------------------------------------------------------------------
    def _install_protocols(self, optimizer: Any) -> None:
        from .layerwise import LayerwiseOptimizer

        if isinstance(optimizer, LayerwiseOptimizer):
            owner = weakref.ref(self)

            def should_step() -> bool:
                # Only inside this Trainer's own training steps (a bare backward() afterwards, or another
                # Trainer on the same model, must not move the weights), and only on the last
                # micro-batch of an accumulation window.
                trainer = owner()
                return trainer is not None and trainer._registry_in_step and trainer.accelerator.sync_gradients

            optimizer.should_step = should_step

    _registry_in_step = False

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        self._registry_in_step = True
        routed = False
        try:
            # accelerate wraps the model in DDP after the optimizer exists: hook the layer-wise stepping into
            # DDP's all-reduce before the first backward.
            attach_layerwise_ddp(self.optimizer, args[0] if args else kwargs.get("model"))
            routed = self._route_backward()
            return super().training_step(*args, **kwargs)  # type: ignore[misc]
        finally:
            self._registry_in_step = False
            if routed:
                # Drop the instance attribute: the accelerator's own method shows through again.
                vars(self.accelerator).pop("backward", None)

    def _route_backward(self) -> bool:
        """Sends this step's backward through a globally clipping layer-wise optimizer, if there is one.

        Exact global clipping needs two backward passes (measure, then step), and the only seam between
        the stock training step's loss and its backward is ``accelerator.backward``; it is wrapped for the
        duration of this one training step.
        """
        from .layerwise import LayerwiseOptimizer

        inner = unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
        if not (isinstance(inner, LayerwiseOptimizer) and inner.clips_globally):
            return False
        accelerator_backward = self.accelerator.backward

        def backward(loss: Any, **kwargs: Any) -> None:
            inner.backward(loss, accelerator_backward, **kwargs)

        self.accelerator.backward = backward
        return True

    def _clip_grad_norm(self, model: Any) -> Any:
        from .layerwise import LayerwiseOptimizer

        inner = unwrap_optimizer(self.optimizer)
        # Layer-wise gradients are gone by now (stepped in backward, clipped there if asked): report the
        # norm instead of clipping what is left.
        if isinstance(inner, LayerwiseOptimizer):
            return inner.grad_norm()
        return super()._clip_grad_norm(model)  # type: ignore[misc]

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        from .layerwise import LayerwiseOptimizer

        inner = unwrap_optimizer(self.optimizer)
        # Optimizers that update inside backward leave no .grad behind: they report the norm.
        if isinstance(inner, LayerwiseOptimizer):
            norm = inner.grad_norm()
        elif callable(getattr(inner, "logged_grad_norm", None)):
            norm = inner.logged_grad_norm()
        else:
            return super()._get_grad_norm(model, grad_norm=grad_norm)  # type: ignore[misc]
        return norm.item() if hasattr(norm, "item") else norm

    @contextlib.contextmanager
    def _optimizer_eval_mode(self) -> Iterator[None]:
        """Schedule-free optimizers hold train-mode weights; save the evaluation weights."""
        inner = unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
        switch = (
            inner is not None
            and callable(getattr(inner, "eval", None))
            and callable(getattr(inner, "train", None))
            and _in_train_mode(inner)
        )
        if switch:
            inner.eval()
        try:
            yield
        finally:
            if switch:
                inner.train()

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        with self._optimizer_eval_mode():
            super()._save_checkpoint(model, trial)  # type: ignore[misc]

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        with self._optimizer_eval_mode():
            super().save_model(output_dir, _internal_call)  # type: ignore[misc]


def attach_layerwise_ddp(optimizer: Any, model: Any) -> bool:
    """If ``model`` is DDP-wrapped and the optimizer layer-wise, step it from DDP's communication hook.

    Returns whether the optimizer is now attached; a no-op for every other combination.
    """
    from torch.nn.parallel import DistributedDataParallel

    from .layerwise import LayerwiseOptimizer

    inner = unwrap_optimizer(optimizer) if optimizer is not None else None
    if not isinstance(inner, LayerwiseOptimizer) or not isinstance(model, DistributedDataParallel):
        return False
    inner.attach_ddp(model)
    return True


def _groups_differ(optimizer: Any) -> bool:
    """Whether the groups were given different rates, judged on the schedule's starting rates so the
    columns do not come and go when the schedule makes every rate equal (0 in warm-up or at the end)."""
    starts = {_as_float(g.get("initial_lr", g.get("lr"))) for g in getattr(optimizer, "param_groups", None) or []}
    return len(starts - {None}) > 1


def _as_float(value: Any) -> float | None:
    # torchao keeps lr as a tensor
    return None if value is None else float(value)


def _spec_of(optimizer: Any) -> Any:
    name = getattr(optimizer, "optim_registry_name", None)
    return optimizers.get(name) if name is not None and name in optimizers else None


def _in_train_mode(optimizer: Any) -> bool:
    groups = getattr(optimizer, "param_groups", None) or [{}]
    return bool(groups[0].get("train_mode", False))


def _is_hf_adafactor(optimizer: Any) -> bool:
    from transformers.optimization import Adafactor

    return isinstance(optimizer, Adafactor)


class OptimTrainer(OptimRegistryMixin, transformers.Trainer):
    """``transformers.Trainer`` whose optimizer and scheduler come from the registry."""
