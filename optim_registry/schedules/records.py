"""Every built-in scheduler record: transformers' names, then one_cycle, cosine_with_warmup_restarts, rex,
step and multistep.

Data only: transformers' names point at transformers' functions, the others at a function in
``optim_registry.schedules.functions`` (imported when the name is used); each declares its
``lr_scheduler_kwargs`` with the function's signature defaults. The checks refuse what no single
option's range can, as soon as the arguments show it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ..spec import RunFacts, SchedulerSpec, opt


def _check_restarts(kwargs: dict[str, Any], run: RunFacts) -> None:
    from .functions import resolve_cycle_warmup

    name = "lr_scheduler_type='cosine_with_warmup_restarts'"
    steps, ratio = kwargs.get("cycle_warmup_steps"), kwargs.get("cycle_warmup_ratio")
    if steps is not None and ratio is not None:
        raise ValueError(
            f"{name}: lr_scheduler_kwargs sets both 'cycle_warmup_steps' and 'cycle_warmup_ratio'; keep one "
            "(a step count, or a fraction of each cycle)"
        )
    cycles = kwargs.get("num_cycles", 1)
    if run.warmup_steps is None and (steps is not None or ratio is not None):
        # A fractional warmup_steps and a per-cycle warm-up: two warm-ups, whatever the run's length.
        raise ValueError(
            f"{name} got two warm-ups: TrainingArguments.warmup_steps (a fraction of the run) and "
            f"lr_scheduler_kwargs {'cycle_warmup_steps' if steps is not None else 'cycle_warmup_ratio'}; set "
            "warmup_steps=0 or drop the cycle warm-up (without it, warmup_steps is each cycle's warm-up)"
        )
    if run.total_steps is None:
        if steps is not None and run.warmup_steps:  # two step counts: comparable without the run's length
            resolve_cycle_warmup(run.warmup_steps, 0, cycles, steps)
        return
    if cycles > run.total_steps:
        raise ValueError(
            f"{name}: lr_scheduler_kwargs key 'num_cycles' ({cycles}) is more than the {run.total_steps} training "
            f"steps; valid range [1, {run.total_steps}]"
        )
    if run.warmup_steps is None:
        return
    warm = resolve_cycle_warmup(run.warmup_steps, run.total_steps, cycles, steps, ratio)
    cycle = run.total_steps // cycles
    if warm >= cycle:
        raise ValueError(
            f"{name}: a warm-up of {warm} steps per cycle fills the whole cycle of {cycle} steps ({run.total_steps} "
            f"steps / {cycles} cycles), so the rate never decays; valid range [0, {cycle - 1}]. Shorten the warm-up "
            "(cycle_warmup_steps / cycle_warmup_ratio, or TrainingArguments.warmup_steps) or use fewer cycles."
        )


def _check_one_cycle(kwargs: dict[str, Any], run: RunFacts) -> None:
    pct = kwargs.get("pct_start")
    if pct is not None and run.warmup_steps != 0:
        raise ValueError(
            f"lr_scheduler_type='one_cycle' got two warm-ups: lr_scheduler_kwargs pct_start={pct} and "
            f"TrainingArguments.warmup_steps (its rising phase is one of them): set warmup_steps=0 or drop pct_start"
        )
    if run.total_steps is not None and run.total_steps < 2:
        raise ValueError(f"lr_scheduler_type='one_cycle' needs at least 2 training steps, got {run.total_steps}")
    low, high = kwargs.get("base_momentum", 0.85), kwargs.get("max_momentum", 0.95)
    if kwargs.get("cycle_momentum") and low > high:
        raise ValueError(
            f"lr_scheduler_type='one_cycle': lr_scheduler_kwargs key 'base_momentum' ({low:g}) is above "
            f"'max_momentum' ({high:g}); base_momentum must be in [0, max_momentum]"
        )


def _check_step(kwargs: dict[str, Any]) -> None:
    size = kwargs.get("step_size")
    if size is None:
        raise ValueError(
            f"lr_scheduler_type='step' needs lr_scheduler_kwargs step_size=<steps >= 1> (got {size}), "
            "e.g. lr_scheduler_kwargs='step_size=1000,gamma=0.5'"
        )


def _check_multistep(kwargs: dict[str, Any]) -> None:
    if not kwargs.get("milestones"):
        raise ValueError(
            "lr_scheduler_type='multistep' needs lr_scheduler_kwargs milestones=(<step>,<step>,...), "
            "e.g. lr_scheduler_kwargs='milestones=(1000,2000),gamma=0.1'"
        )


_GAMMA = opt("gamma", "float", 0.1, "multiplicative decay at each drop", low=0, low_open=True)


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
    from .. import deps

    kwargs = dict(kwargs)
    min_lr = kwargs.pop("min_lr", None)
    if min_lr is not None:  # transformers divides by optimizer.defaults["lr"]; so do we, when it exists
        kwargs["min_lr_rate"] = min_lr / reference_lr(optimizer, args)
    return deps.import_object(target)(optimizer, warmup, total, **kwargs)


def _check_polynomial(kwargs: dict[str, Any], run: RunFacts) -> None:
    # transformers refuses lr_end >= the rate only when the scheduler is built, after the optimizer.
    _not_above_rate({"lr_end": kwargs.get("lr_end", 1e-7)}, run, "lr_end", name="polynomial", strict=True)


def _build_polynomial(optimizer: Any, warmup: int, total: int, kwargs: dict[str, Any], args: Any) -> Any:
    from .functions import get_polynomial_schedule

    return get_polynomial_schedule(optimizer, warmup, total, lr_init=reference_lr(optimizer, args), **kwargs)


def _rates(kwargs: dict[str, Any], key: str, default: float, *, name: str) -> list[float]:
    """A bound of a metric-driven scheduler: one rate, or one per param group as torch / GreedyLR take it.

    Typed ``float_or_floats`` (its range checked by the parser); an empty tuple is refused here.
    """
    value = kwargs.get(key, default)
    numbers = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
    if not numbers:
        raise ValueError(
            f"lr_scheduler_type={name!r}: lr_scheduler_kwargs key {key!r}: {value!r} holds no rate; give a rate, or "
            "one per param group, e.g. 1e-5"
        )
    return numbers


def _check_plateau(kwargs: dict[str, Any], run: RunFacts) -> None:
    for value in _rates(kwargs, "min_lr", 0.0, name="reduce_lr_on_plateau"):
        _not_above_rate({"min_lr": value}, run, "min_lr", name="reduce_lr_on_plateau")


def _check_greedy(kwargs: dict[str, Any]) -> None:
    lows = _rates(kwargs, "min_lr", 1e-3, name="greedy")
    highs = _rates(kwargs, "max_lr", 1.0, name="greedy")
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
    from .functions import wsd_phase_steps

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

    from .functions import wsd_phase_steps

    kwargs = dict(kwargs)
    decay, stable = wsd_phase_steps(total, **{k: kwargs.pop(k) for k in _WSD_PHASES if k in kwargs})
    # transformers warns when both are given; with the stable phase known, the total is not needed.
    return get_wsd_schedule(optimizer, warmup, decay, num_training_steps=None if stable is not None else total,
                            num_stable_steps=stable, **kwargs)


_TF = "transformers.optimization"
_FN = "optim_registry.schedules.functions"
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
            opt("min_lr", "float_or_floats", 1e-3, "lowest learning rate (>= 0), or one per param group", low=0),
            opt("max_lr", "float_or_floats", 1.0, "highest learning rate (> 0), or one per param group", low=0,
                low_open=True),
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
            opt("min_lr", "float_or_floats", 0.0, "lowest learning rate (>= 0, at most the rate), or one per param "
                "group", low=0),
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


RECORDS = BUILTIN + (
    SchedulerSpec(
        "cosine_with_warmup_restarts", f"{_FN}:get_cosine_with_warmup_restarts_schedule",
        "Equal cycles, each a linear warm-up then a cosine decay to min_lr_ratio.",
        options=(
            opt("num_cycles", "int", 1, "number of cycles the run is split into", low=1),
            opt("min_lr_ratio", "float", 0.0, "lowest rate (and warm-up start) as a fraction of the initial one",
                **_FRACTION),
            opt("cycle_warmup_steps", "int", None, "warm-up steps of every cycle (default: warmup_steps)", low=0),
            opt("cycle_warmup_ratio", "float", None, "warm-up of every cycle as a fraction of a cycle", **_FRACTION),
            LAST_EPOCH,
        ),
        check=_check_restarts,
    ),
    SchedulerSpec(
        "multistep", f"{_FN}:get_multistep_schedule",
        "Linear warm-up, then the rate times gamma at each milestone step (torch MultiStepLR in steps).",
        options=(opt("milestones", "ints", None, "global steps at which the rate drops, e.g. (1000,2000)", low=0),
                 _GAMMA, LAST_EPOCH),
        check=_check_multistep,
    ),
    SchedulerSpec(
        "one_cycle", f"{_FN}:get_one_cycle_schedule",
        "torch OneCycleLR peaking at each group's learning rate over the whole run.",
        options=(
            opt("pct_start", "float", None, "rising phase as a fraction of the run (default: warmup_steps, else 0.3)",
                low=0, high=1, low_open=True, high_open=True),
            opt("anneal_strategy", "str", "cos", "cos or linear", choices=("cos", "linear")),
            opt("div_factor", "float", 25.0, "start rate = learning rate / div_factor", low=0, low_open=True),
            opt("final_div_factor", "float", 1e4, "final rate = start rate / final_div_factor", low=0, low_open=True),
            opt("three_phase", "bool", False, "a third phase annihilating the rate (fast.ai style)"),
            opt("cycle_momentum", "bool", False, "cycle momentum / beta1 inversely to the rate"),
            opt("base_momentum", "float", 0.85, "lowest momentum when cycling", **_FRACTION),
            opt("max_momentum", "float", 0.95, "highest momentum when cycling", **_FRACTION),
        ),
        check=_check_one_cycle,
    ),
    SchedulerSpec(
        "rex", f"{_FN}:get_rex_schedule",
        "Linear warm-up, then REX decay (1 - t) / (1 - t/2) (arXiv 2107.04197).",
        options=(opt("min_lr_ratio", "float", 0.0, "final rate as a fraction of the initial one", **_FRACTION),
                 LAST_EPOCH),
    ),
    SchedulerSpec(
        "step", f"{_FN}:get_step_schedule",
        "Linear warm-up, then the rate times gamma every step_size steps (torch StepLR in steps).",
        options=(opt("step_size", "int", None, "steps between drops", low=1), _GAMMA, LAST_EPOCH),
        check=_check_step,
    ),
)
