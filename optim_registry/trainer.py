"""TrainingArguments, OptimRegistryMixin and OptimTrainer: thin layers over transformers calling super().

The arguments class accepts every registered ``optim`` / ``lr_scheduler_type`` and refuses, when it
is created, any combination the registry knows cannot work. The mixin resolves names through the
registry and honours each optimizer's protocol (layer-wise stepping, train/eval mode around saving,
fused backward) while leaving the rest of the Trainer as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import transformers
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames as HFOptimizerNames

from . import build
from .checkpoints import CheckpointMixin, unwrap_optimizer
from .context import BuildContext, TrainerFacts
from .distributed import check_distributed
from .engines import zero
from .engines.layerwise import trainer as layerwise
from .plan import check_scheduler_args
from .registry import optimizers
from .runnable import check_training_args
from .schedulers import check_kwargs_json, schedulers
from .spec import plain_name

_HF_OPTIMS = {m.value for m in HFOptimizerNames}
_HF_SCHEDULERS = {m.value for m in SchedulerType}

_OPTIM_GROUPS_HELP = (
    "Per-parameter rates, weight decay and optimizer options by rule: a list of rules (or its JSON string), "
    'e.g. [{"loraplus_lr_ratio": 16}, {"params": "@embeddings", "lr": 1e-5}]. See docs/param_groups.md.'
)


# A dataclass that only declares the field (no __init__/__repr__/__eq__ of its own): a subclass decorated with
# @dataclass gets ``optim_groups`` as a real field (constructor keyword, to_dict(), JSON, HfArgumentParser),
# and an undecorated subclass keeps its parent's constructor and still reads the class default.
if TYPE_CHECKING:
    # Type checkers see the mixin as the arguments class it is mixed into; at run time it adds no base.
    _ArgumentsBase = transformers.TrainingArguments
else:
    _ArgumentsBase = object


@dataclass(init=False, repr=False, eq=False)
class RegistryArgumentsMixin(_ArgumentsBase):
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
        optim = plain_name(self.optim)
        sched = plain_name(self.lr_scheduler_type)
        optimizers.check_name(optim)
        schedulers.check_name(sched)
        # Before the parent's set-up, which imports deepspeed when configured: refuse early.
        check_distributed(optimizers.get(optim), self)
        check_kwargs_json(self)
        # The parent validates against transformers' closed enums: show it a name it knows, then
        # put ours back.
        self.optim = optim if optim in _HF_OPTIMS else HFOptimizerNames.ADAMW_TORCH.value
        self.lr_scheduler_type = sched if sched in _HF_SCHEDULERS else SchedulerType.LINEAR.value
        super().__post_init__()
        self.optim = _optimizer_value(optim)
        self.lr_scheduler_type = SchedulerType(sched) if sched in _HF_SCHEDULERS else sched
        self._eval_defaults(check_training_args(self))

    def set_optimizer(self, name: str = "adamw_torch", *args: Any, **kwargs: Any) -> Any:
        optimizers.check_name(plain_name(name))
        before = dict(vars(self))
        try:
            super().set_optimizer("adamw_torch", *args, **kwargs)
            self.optim = _optimizer_value(plain_name(name))
            check_training_args(self)
        except BaseException:
            # a refused choice leaves the arguments exactly as they were
            vars(self).clear()
            vars(self).update(before)
            raise
        return self

    def set_lr_scheduler(self, name: str = "linear", *args: Any, **kwargs: Any) -> Any:
        sched = plain_name(name)
        schedulers.check_name(sched)
        before = dict(vars(self))
        try:
            super().set_lr_scheduler("linear", *args, **kwargs)
            self.lr_scheduler_type = SchedulerType(sched) if sched in _HF_SCHEDULERS else sched
            self._eval_defaults(check_scheduler_args(self))
        except BaseException:
            # a refused choice leaves the arguments exactly as they were
            vars(self).clear()
            vars(self).update(before)
            raise
        return self

    def _eval_defaults(self, plan: Any) -> None:
        """A metric-driven schedule gets the default transformers gives its own (``reduce_lr_on_plateau``,
        ``greedy``): ``metric_for_best_model="loss"``, lower is better, which the Trainer steps it with. Set here,
        where the arguments are made, never by a check."""
        if plan.schedule.needs_eval and getattr(self, "metric_for_best_model", None) is None:
            self.metric_for_best_model = "loss"
            if getattr(self, "greater_is_better", None) is None:
                self.greater_is_better = False


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


class _TrainerBuild:
    """``get_optimizer_cls_and_kwargs`` of the mixin: ``build.get_optimizer_cls_and_kwargs`` when read from the
    class (transformers' static contract), the Trainer's own ``_registry_cls_and_kwargs`` when read from a
    Trainer, so the stock ``create_optimizer`` (which calls ``self.get_optimizer_cls_and_kwargs``) passes the
    Trainer's facts without any hidden state."""

    def __get__(self, trainer: Any, owner: Any = None) -> Any:
        if trainer is None:
            return build.get_optimizer_cls_and_kwargs
        return trainer._registry_cls_and_kwargs


class OptimRegistryMixin(CheckpointMixin):
    """Registry-backed optimizer and scheduler creation for any ``transformers.Trainer`` subclass.

    ``class MySFT(OptimRegistryMixin, trl.SFTTrainer): ...``
    """

    #: As transformers has it, a static method of the class (``OptimTrainer.get_optimizer_cls_and_kwargs(args)``);
    #: called on a Trainer, the same build with that Trainer's facts passed explicitly (see ``_TrainerBuild``).
    get_optimizer_cls_and_kwargs = _TrainerBuild()

    def registry_facts(self, model: Any = None) -> TrainerFacts:
        """What this Trainer knows beyond the arguments: its decay names (``get_decay_parameter_names``, which
        a subclass may override) and the run's length, when it is building inside ``create_optimizer_and_scheduler``."""
        decay = None if model is None else frozenset(self.get_decay_parameter_names(model))
        return TrainerFacts(decay_names=decay, training_steps=self._registry_training_steps)

    def _registry_cls_and_kwargs(self, args: Any, model: Any = None) -> tuple[Any, Any]:
        cls, kwargs, ctx = build.resolve(args, model, facts=self.registry_facts(model))
        self._registry_build = ctx  # the planned groups, for the check after the stock build
        return cls, kwargs

    def get_decay_parameter_names(self, model: Any) -> set[str]:
        # transformers' own choice (so an upgrade's new patterns apply), as a set: the stock create_optimizer
        # tests every parameter name against it, O(1) each instead of a list scan.
        return set(super().get_decay_parameter_names(model))

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
        # The run's length, for the facts the build is given (registry_facts).
        self._registry_training_steps = num_training_steps
        try:
            super().create_optimizer_and_scheduler(num_training_steps)
        finally:
            self._registry_training_steps = None

    def create_optimizer(self, model: Any = None) -> Any:
        fresh = self.optimizer is None and self.optimizer_cls_and_kwargs is None
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            self._check_scheduler_before_build()
        if fresh:
            plan = check_training_args(self.args, building=True, model=opt_model)
        if getattr(self, "is_deepspeed_enabled", False):
            zero.configure(self, plan.spec if fresh else None)  # before deepspeed.initialize reads the config
        if fresh:
            self._registry_build = None
            optimizer = super().create_optimizer(model)
            ctx = self._registry_build
            if ctx is None and plan.rules:
                # get_optimizer_cls_and_kwargs was overridden without calling ours: plan the groups to compare.
                ctx = build.make_context(self.args, opt_model, facts=self.registry_facts(opt_model))
            if ctx is not None:
                build.check_rules_applied(ctx, unwrap_optimizer(optimizer))
            build.finalize(unwrap_optimizer(optimizer), plan.spec, opt_model)
        else:
            if self.optimizer is None and getattr(self.args, "optim_groups", None):
                # optimizer_cls_and_kwargs= replaces the registry's build, rules included: say so.
                raise ValueError(
                    "optim_groups rules apply to the optimizer the registry builds, but optimizer_cls_and_kwargs= "
                    "was passed to the Trainer and replaces it. Drop optimizer_cls_and_kwargs (choose the "
                    "optimizer with optim=...), or drop optim_groups and give the groups in its kwargs['params']."
                )
            optimizer = super().create_optimizer(model)
        self._install_protocols(unwrap_optimizer(self.optimizer))
        return self.optimizer

    def train(self, *args: Any, **kwargs: Any) -> Any:
        zero.check_given(self)  # an optimizer instance DeepSpeed would replace: refused, not dropped
        return super().train(*args, **kwargs)

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
                self.lr_scheduler = build.create_scheduler(
                    self.args, optimizer, num_training_steps, warmup=0 if owns_warmup else None
                )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def _get_learning_rate(self) -> Any:
        # The loop calls this after optimizer.step() and before the scheduler steps: these are the rates
        # the step just used. Read later, in ``log``, they would already be the next step's.
        inner = unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
        self._group_rates = [_as_float(g.get("lr")) for g in inner.param_groups] if inner is not None else None
        return super()._get_learning_rate()

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds every param group's learning rate when they differ (the stock Trainer logs only the first)."""
        rates = getattr(self, "_group_rates", None)
        if "learning_rate" in logs and rates and _groups_differ(unwrap_optimizer(self.optimizer)):
            for i, rate in enumerate(rates):
                logs[f"learning_rate/group_{i}"] = rate
        super().log(logs, *args, **kwargs)

    # -- protocols --------------------------------------------------------------------------------
    def _install_protocols(self, optimizer: Any) -> None:
        layerwise.gate_to_trainer(optimizer, self)

    _registry_in_step = False
    _registry_training_steps: int | None = None
    _registry_build: BuildContext | None = None

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        self._registry_in_step = True
        try:
            inner = unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
            # accelerate wraps the model in DDP after the optimizer exists: hook the layer-wise stepping into
            # DDP's all-reduce before the first backward.
            layerwise.attach_ddp(inner, args[0] if args else kwargs.get("model"))
            zero.attach(self.optimizer)  # under ZeRO: train()/eval() then reach the model's weights
            with layerwise.backward_through(inner, self.accelerator):
                return super().training_step(*args, **kwargs)
        finally:
            self._registry_in_step = False

    def _clip_grad_norm(self, model: Any) -> Any:
        # Layer-wise gradients are gone by now (stepped in backward, clipped there if asked): report the
        # norm instead of clipping what is left.
        norm = layerwise.grad_norm(unwrap_optimizer(self.optimizer))
        return super()._clip_grad_norm(model) if norm is None else norm

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        inner = unwrap_optimizer(self.optimizer)
        # Optimizers that update inside backward leave no .grad behind: they report the norm.
        norm = layerwise.grad_norm(inner)
        if norm is None:
            if not callable(getattr(inner, "logged_grad_norm", None)):
                return super()._get_grad_norm(model, grad_norm=grad_norm)
            norm = inner.logged_grad_norm()
        return norm.item() if hasattr(norm, "item") else norm

    @contextlib.contextmanager
    def _optimizer_eval_mode(self) -> Iterator[None]:
        """Schedule-free optimizers hold train-mode weights; save the evaluation weights."""
        zero.attach(self.optimizer)
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
            super()._save_checkpoint(model, trial)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        with self._optimizer_eval_mode():
            super().save_model(output_dir, _internal_call)


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
