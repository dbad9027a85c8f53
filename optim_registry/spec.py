"""The frozen records every optimizer (built-in or plugin) is declared with.

A record is data: where the class lives (imported only when used), what it needs installed, which
``optim_args`` it accepts and with what types, which TrainingArguments hyperparameters it takes and
which protocol the training loop must follow. One builder (``build.py``) interprets every record.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

#: Types an option may declare; ``optim_args.coerce`` knows how to read each from a string, or refuses a string:
#: ``callable`` and ``object`` (a function, a process group, a dict of settings) only come in a dict ``optim_args``.
#: ``float_or_floats`` is a number or a tuple of them (one per param group). ``any`` is for a plugin option whose
#: constructor says nothing about its type (no default, no annotation): the string is typed as it reads.
OPTION_TYPES = frozenset(
    {"int", "float", "bool", "str", "floats", "ints", "float_or_floats", "dtype", "callable", "object", "any"}
)
#: Types a string can never give.
OBJECT_TYPES = frozenset({"callable", "object"})

#: What an option is for, where a tool needs to know (``Option.role``): ``rate`` a learning rate (a resume with
#: another value is a changed setting, not another optimizer), ``rank`` a low-rank projection's rank (the
#: memory estimate of ``optim-registry memory``).
ROLES = frozenset({"rate", "rank"})

#: TrainingArguments hyperparameters a record may take, and where each comes from.
HPARAMS = frozenset({"lr", "betas", "eps", "weight_decay"})

#: Protocols the training loop must honour.
PROTOCOLS = frozenset({"step", "train_eval", "fused_backward"})

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def plain_name(value: Any) -> str:
    """The name an ``optim`` / ``lr_scheduler_type`` value stands for: an enum member's value, else ``str()``."""
    return str(getattr(value, "value", value))


@dataclass(frozen=True)
class Option:
    """One accepted ``optim_args`` key: its type, default and meaning.

    An option the constructor has no default for is ``required`` (a plugin class's argument without one).
    ``None`` as a default makes the option nullable (``none`` in a string means ``None``).
    """

    name: str
    type: str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    #: Always pass the default to the optimizer (ours differs from the library's, or the library has none);
    #: otherwise the option is passed only when ``optim_args`` gives it. Either way a builder reads the
    #: typed value, given or default, in ``ctx.options``.
    send: bool = False
    #: Valid range of a number (each number of a tuple): ``low`` / ``high`` bounds, open or closed.
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    #: How many numbers a tuple option takes (``betas`` of Adam: 2), or the accepted counts ``(2, 3)``.
    length: int | tuple[int, ...] | None = None
    #: Numbers must be finite (nan and inf refused); a record may opt out for a deliberate ``inf``. An
    #: option whose default is itself inf or nan opts out by that default.
    finite: bool = True
    #: The constructor has no default for it (plugins typed from a signature): ``optim_args`` must give it.
    required: bool = False
    #: A tuple's numbers may each be ``none`` (torch's Adafactor ``eps=(None, 1e-3)``).
    item_nullable: bool = False
    #: What the option is for, where a tool needs to know (one of ``ROLES``), else ``None``.
    role: str | None = None

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name!r}: unknown type {self.type!r}; use one of {sorted(OPTION_TYPES)}")
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"option {self.name!r}: unknown role {self.role!r}; use one of {sorted(ROLES)}")
        defaults = self.default if isinstance(self.default, (tuple, list)) else (self.default,)
        if any(isinstance(d, float) and not math.isfinite(d) for d in defaults):
            object.__setattr__(self, "finite", False)

    @property
    def lengths(self) -> tuple[int, ...] | None:
        """The accepted tuple lengths, or ``None`` when any length is fine."""
        if self.length is None:
            return None
        return (self.length,) if isinstance(self.length, int) else tuple(self.length)

    def range_text(self) -> str:
        """The valid range in interval notation (``[0, 1)``, ``> 0``), or ``""`` when unbounded."""
        if self.low is not None and self.high is not None:
            return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return ""

    def describe(self) -> str:
        """The declared constraints in words (range, tuple length), for listings and docs."""
        parts = []
        if self.lengths is not None:
            parts.append(" or ".join(str(n) for n in self.lengths) + " numbers")
        if self.range_text():
            parts.append(("each " if self.type in ("floats", "ints") else "") + self.range_text())
        return ", ".join(parts)

    def in_range(self, number: float) -> bool:
        """Whether one number lies in the declared range (finite-ness is checked separately)."""
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            return False
        return not (self.high is not None and (number > self.high or (self.high_open and number == self.high)))


class Values(dict):  # type: ignore[type-arg]
    """What a record's ``checks`` get: every value the optimizer is built with, and which keys
    ``optim_args`` gave (``given``)."""

    given: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Requirement:
    """A package an optimizer needs: pip name, import name, lowest version and our extra."""

    pip: str
    module: str
    min_version: str | None = None
    extra: str | None = None
    #: How to install it when no ``pip install`` line exists (a package not on PyPI).
    install: str | None = None

    @property
    def pip_line(self) -> str:
        if self.install:
            return self.install
        spec = f"{self.pip}>={self.min_version}" if self.min_version else self.pip
        return f"pip install '{spec}'" if ">" in spec else f"pip install {spec}"


#: How an update runs on FSDP2 (DTensor) shards; see ``Distributed.fsdp2_math``.
FSDP2_MATH = frozenset({"local", "owner", "native"})

#: How an update runs under DeepSpeed ZeRO; see ``Distributed.zero_math``.
ZERO_MATH = frozenset({"local", "views", "deepspeed_muon"})


@dataclass(frozen=True)
class Run:
    """A distributed run of a name done here: the evidence behind a record's claim (``Distributed.fsdp2_run`` /
    ``zero_run``).

    ``optim_args`` is what the run trained with (``None``: the defaults). For ZeRO, ``measured`` is the largest
    weight difference to one process on the same batches after 3 steps under ZeRO-1, 2 and 3, and ``note`` says
    what the figure means where the plain number would mislead.
    """

    optim_args: str | None = None
    measured: tuple[float, float, float] | None = None
    note: str = ""


@dataclass(frozen=True)
class Distributed:
    """Which distributed back-ends a record supports (``True``, ``False`` or a reason string).

    ``fsdp`` is FSDP1 (flattened parameters unless ``use_orig_params``); ``fsdp2`` is
    ``torch.distributed.fsdp.fully_shard`` with DTensor parameters, and ``fsdp2_math`` says how the
    update runs there: ``"local"`` on each rank's rows as they are (elementwise updates),
    ``"owner"`` the library's own step on whole tensors, each on one owner rank
    (``optim_registry.engines.fsdp2.OwnerStepped``; exact for any optimizer that updates each parameter from
    its own gradient and state), ``"native"`` the optimizer shards its whole-matrix math itself.

    ``fsdp2_checkpoint`` says whether its FSDP2 state goes through ``torch.distributed.checkpoint``'s
    ``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` (accelerate's FSDP2 checkpoints) without
    changing training and resumes exactly on any number of ranks (``True``), or why not (a resume on
    another rank count is then refused with a ``ValueError``).

    ``zero_math`` says how a supported ZeRO stage runs it (``optim_registry.engines.zero``): ``"local"`` the
    library's own step on ZeRO's flat fp32 partitions (elementwise updates), ``"views"`` the library's own step
    on per-tensor views of those partitions, each view with its whole tensor's decisions (state quantised in
    blocks of each tensor: bitsandbytes 8-bit, torchao, FlashOptim; ``engines.zero.ZeroViews``), ``"deepspeed_muon"``
    DeepSpeed's own Muon (``deepspeed.runtime.zero.muon``), given the registry's groups and routing.

    The evidence sits beside the claims: ``fsdp2_run`` / ``zero_run`` is the run done here (``tests/test_fsdp2.py``
    and ``tests/test_fsdp2_checkpoints.py`` train and checkpoint every ``fsdp2_run``, ``tests/test_zero.py`` every
    ``zero_run`` under each stage); a supported path without one is trusted by the reasoning of its path
    (``engines.evidence``), or by ``zero_reasoned`` where this record's reasoning differs from its path's.
    """

    ddp: bool | str = True
    fsdp: bool | str = True
    zero1: bool | str = True
    zero2: bool | str = True
    zero3: bool | str = True
    fsdp2: bool | str = True
    fsdp2_math: str = "owner"
    fsdp2_checkpoint: bool | str = True
    zero_math: str = "local"
    fsdp2_run: Run | None = None
    zero_run: Run | None = None
    zero_reasoned: str | None = None

    def __post_init__(self) -> None:
        if self.fsdp2_math not in FSDP2_MATH:
            raise ValueError(f"fsdp2_math={self.fsdp2_math!r} is not one of {sorted(FSDP2_MATH)}")
        if self.zero_math not in ZERO_MATH:
            raise ValueError(f"zero_math={self.zero_math!r} is not one of {sorted(ZERO_MATH)}")
        if self.fsdp2_run is not None and self.fsdp2 is not True:
            raise ValueError(f"an FSDP2 run is recorded, but FSDP2 is refused: {self.fsdp2!r}")
        if self.zero_run is not None:
            refused = [stage for stage in ("zero1", "zero2", "zero3") if getattr(self, stage) is not True]
            if refused or self.zero_run.measured is None or len(self.zero_run.measured) != 3:
                raise ValueError("a ZeRO run is recorded for every stage: all three supported, one figure each")


@dataclass(frozen=True)
class MatrixRouting:
    """Hybrid optimizers (Muon, Dion): hidden matrices get one algorithm, everything else AdamW.

    The interpreter splits the groups itself (``param_groups.split_matrix_groups``): matrix groups carry
    ``flag=True`` and start at the rate in option ``lr_option``; the rest carry ``flag=False`` and the
    learning rate. Each ``*_option`` names the record's option that steers one part of the routing (it must be
    declared); ``None`` leaves that part at its default.
    """

    flag: str
    #: Option holding the matrices' rate (``None``: the learning rate).
    lr_option: str | None
    weight_decay_option: str | None = None
    #: 3-D expert stacks (``experts.gate_up_proj``) count as one matrix per expert.
    experts: bool = False
    #: Options holding the AdamW side's rate / weight decay (``None``: the learning rate / weight decay).
    other_lr_option: str | None = None
    other_weight_decay_option: str | None = None
    #: Option holding the regex that sends matching matrices to AdamW (``None``: ``embed|lm_head|wte|wpe|output``).
    exclude_option: str | None = None
    #: Options saying whether LoRA factors / MoE routers go to AdamW (``None``: they always do).
    lora_option: str | None = None
    router_option: str | None = None
    #: Option saying whether 3-D expert stacks count as matrices, with ``experts`` (``None``: they do).
    experts_option: str | None = None

    def options(self) -> tuple[str, ...]:
        """The record options this routing reads."""
        named = (self.lr_option, self.weight_decay_option, self.other_lr_option, self.other_weight_decay_option,
                 self.exclude_option, self.lora_option, self.router_option, self.experts_option)
        return tuple(n for n in named if n is not None)


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything the registry knows about one ``optim=`` name.

    ``target`` is a ``"module:attr"`` path (imported when the name is resolved), or the object itself
    for plugins registered in code. ``builder`` optionally names a function ``(BuildContext) ->
    (cls_or_factory, kwargs)`` for optimizers the generic path cannot build; it gets the parsed
    options, the model and the parameter groups already computed.
    """

    name: str
    target: str | type | Callable[..., Any]
    family: str
    description: str
    requires: tuple[Requirement, ...] = ()
    options: tuple[Option, ...] = ()
    #: TrainingArguments hyperparameters passed to the constructor (and overridable in optim_args).
    hparams: frozenset[str] = frozenset({"lr"})
    #: How many numbers the ``betas`` hyperparameter takes (timm's ``num_betas``), or the accepted counts
    #: (AdEMAMix: ``(2, 3)``); checked from this data when the arguments are created.
    num_betas: int | tuple[int, ...] = 2
    #: Cross-field checks run when the arguments are created: each gets every value the optimizer will be
    #: built with (options with their defaults, ``fixed``, lr / betas / eps / weight_decay) and returns
    #: ``None``, or what is wrong and how to fix it (the message is prefixed with the name).
    checks: tuple[Callable[[Mapping[str, Any]], str | None], ...] = ()
    #: Pass ``weight_decay`` to the constructor as well as in the groups, so the library's own default
    #: (often 0.01) never applies to a plain parameter list. Off for transformers' own names, whose kwargs
    #: stay exactly what transformers returns.
    weight_decay_kwarg: bool = False
    #: The learning rate ``optim-registry compare`` trains the bundled tiny model with (``None``: the
    #: family's, else compare's default); checked by hand on that model.
    demo_lr: float | None = None
    #: ``optim_args`` ``optim-registry compare`` trains the bundled tiny model with (low-rank defaults are sized
    #: for hidden sizes in the thousands: rank 128 on a 64-wide model would project nothing away).
    demo_options: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    #: Keyword arguments always passed (e.g. ``optim_bits=8``); not settable by the user.
    fixed: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    builder: str | Callable[..., Any] | None = None
    #: ``"module:function"`` called with the built optimizer (and each layer-wise inner optimizer) before
    #: its first step: fixes carried as optimizer hooks, so ``target`` can stay the library's own class.
    adapt: str | Callable[[Any], None] | None = None
    #: ``"module:function"`` called once with ``(optimizer, model)`` after the build, before the first step: what
    #: a library keeps per model rather than in the optimizer (bitsandbytes' 32-bit state for ``nn.Embedding``
    #: weights, which ``embedding_32bit`` declares).
    adapt_model: str | Callable[[Any, Any], None] | None = None
    needs_model: bool = False
    #: Uses ``optim_target_modules``: the matched Linear weights get ``target_options`` in their group.
    target_modules: bool = False
    target_options: frozenset[str] = frozenset()
    #: This name steps each parameter in backward (``<base>_layerwise``).
    layerwise: bool = False
    #: A ``<name>_layerwise`` variant makes sense for this optimizer.
    supports_layerwise: bool = True
    protocol: str = "step"
    #: ``None`` when it runs on CPU; otherwise why it needs a GPU.
    needs_gpu: str | None = None
    #: ``None``, or why this optimizer cannot train under the Trainer's step protocol at all (it is
    #: listed, and refused with this reason when the arguments are created).
    unsupported: str | None = None
    #: The optimizer warms the rate up itself (schedule-free): the Trainer's schedule gets no warm-up.
    owns_warmup: bool = False
    #: ``nn.Embedding`` state is kept in 32 bits (8-bit bitsandbytes optimizers; their ``adapt_model`` does it).
    embedding_32bit: bool = False
    #: Optimizer-state bytes per fp32 parameter, measured (see benchmarks/state_memory.py).
    state_bytes: float | None = None
    paper: str = ""
    distributed: Distributed = field(default_factory=Distributed)
    #: How the full state is saved: "state_dict" (torch's), or a note on what the registry adds.
    resume: str = "state_dict"
    #: "builtin" or the distribution that provides the name.
    source: str = "builtin"
    #: The record this layer-wise / preset name derives from.
    base: str | None = None
    #: Options the optimizer reads per param group, which ``optim_groups`` rules may set (``None``: every
    #: option of a ``torch.optim`` class, else ``betas`` / ``eps`` when taken from TrainingArguments).
    group_options: frozenset[str] | None = None
    #: Hidden-matrix routing of a hybrid optimizer (Muon, Dion); ``None`` for every other optimizer.
    routing: MatrixRouting | None = None
    #: ``"module:function"`` (or the function) given the record when its name is resolved; returns the record
    #: to use. pytorch_optimizer's records re-read their options from the installed class when the library is
    #: not the version their shipped catalogue was generated from.
    refresh: str | Callable[[OptimizerSpec], OptimizerSpec] | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"{self.name}: protocol {self.protocol!r} is not one of {sorted(PROTOCOLS)}")
        unknown = set(self.hparams) - HPARAMS
        if unknown:
            raise ValueError(f"{self.name}: unknown hparams {sorted(unknown)}; use {sorted(HPARAMS)}")
        undeclared = [o for o in (self.routing.options() if self.routing else ()) if o not in self.option_map]
        if undeclared:
            raise ValueError(f"{self.name}: its routing reads options {undeclared}, which it does not declare")
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))
        object.__setattr__(self, "demo_options", MappingProxyType(dict(self.demo_options)))

    @property
    def option_map(self) -> dict[str, Option]:
        return {o.name: o for o in self.options}

    def variant(self, **changes: Any) -> OptimizerSpec:
        """A new record that differs from this one in ``changes`` (a preset, a layer-wise twin)."""
        return replace(self, **changes)


def opt(name: str, type_: str, default: Any = None, help: str = "", **kw: Any) -> Option:
    """Shorthand used by the built-in tables."""
    return Option(name, type_, default, help, **kw)


#: Shorthands for the usual ranges: ``opt("momentum", "float", 0.9, "...", **UNIT)``.
NONNEG: Mapping[str, Any] = MappingProxyType({"low": 0.0})
POSITIVE: Mapping[str, Any] = MappingProxyType({"low": 0.0, "low_open": True})
UNIT: Mapping[str, Any] = MappingProxyType({"low": 0.0, "high": 1.0, "high_open": True})
AT_LEAST_ONE: Mapping[str, Any] = MappingProxyType({"low": 1})

#: Types and ranges of the TrainingArguments hyperparameters when overridden in ``optim_args``.
HPARAM_OPTIONS = {
    "lr": Option("lr", "float", None, "learning rate (default: TrainingArguments.learning_rate)", role="rate",
                 **NONNEG),
    "betas": Option("betas", "floats", None, "(beta1, beta2) (default: adam_beta1, adam_beta2)", **UNIT),
    "eps": Option("eps", "float", None, "epsilon (default: TrainingArguments.adam_epsilon)", **NONNEG),
    "weight_decay": Option(
        "weight_decay", "float", None, "weight decay (default: TrainingArguments.weight_decay)", **NONNEG
    ),
}

#: The TrainingArguments fields behind each hyperparameter, with the same ranges.
HPARAM_FIELDS = {
    "lr": (Option("learning_rate", "float", **NONNEG),),
    "betas": (Option("adam_beta1", "float", **UNIT), Option("adam_beta2", "float", **UNIT)),
    "eps": (Option("adam_epsilon", "float", **NONNEG),),
    "weight_decay": (Option("weight_decay", "float", **NONNEG),),
}


def hparam_option(spec: OptimizerSpec, key: str) -> Option:
    """The ``optim_args`` override of one hyperparameter for ``spec`` (``betas`` with the record's count)."""
    option = HPARAM_OPTIONS[key]
    if key == "betas":
        counts = (spec.num_betas,) if isinstance(spec.num_betas, int) else tuple(spec.num_betas)
        help_text = f"({', '.join(f'beta{i + 1}' for i in range(max(counts)))}) (default: adam_beta1, adam_beta2"
        help_text += (", then the record's own" if max(counts) > 2 else "") + ")"
        option = replace(option, length=spec.num_betas, help=help_text)
    return option


def option_table(spec: OptimizerSpec) -> list[Option]:
    """The record's options followed by the hyperparameters it lets ``optim_args`` override."""
    table = list(spec.options)
    declared = {o.name for o in table}
    table += [hparam_option(spec, h) for h in ("lr", "betas", "eps", "weight_decay") if h in spec.hparams and h not in declared]
    return table


def group_option_table(spec: OptimizerSpec) -> dict[str, Option]:
    """Per-group options ``optim_groups`` rules may set for ``spec``, typed (lr / weight_decay excluded)."""
    table = {o.name: o for o in option_table(spec)}
    if "betas" in table and "betas" not in spec.option_map:
        # The TrainingArguments pair (adam_beta1, adam_beta2): in a group it must be a valid pair too.
        table["betas"] = dataclasses.replace(table["betas"], length=2, low=0.0, high=1.0, high_open=True)
    names = spec.group_options
    if names is None:
        target = spec.target if isinstance(spec.target, str) else ""
        # torch.optim classes put every constructor option into their defaults: all are per group.
        names = frozenset(table) if target.startswith("torch.optim:") else frozenset({"betas", "eps"}) & spec.hparams
    return {n: table[n] for n in sorted(names) if n in table and n not in ("lr", "weight_decay")}


def is_factory(obj: Any) -> bool:
    """transformers' rule: anything that is not an Optimizer subclass is a factory."""
    import torch

    return not (isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer))


#: The step counts a scheduler function may take, passed by the Trainer.
STEP_ARGS = ("num_warmup_steps", "num_training_steps")


@dataclass(frozen=True)
class SchedulerSpec:
    """Everything the registry knows about one ``lr_scheduler_type`` name."""

    name: str
    target: str | Callable[..., Any] | type
    description: str
    options: tuple[Option, ...] = ()
    #: Which of num_warmup_steps / num_training_steps the target takes.
    takes: frozenset[str] = frozenset(STEP_ARGS)
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
