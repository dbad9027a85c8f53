"""Scheduler names beyond transformers' own: one_cycle, cosine_with_warmup_restarts, rex, step, multistep.

Data only: each record points at a function in ``optim_registry.schedule_functions`` (imported when the name
is used) and declares its ``lr_scheduler_kwargs`` with the function's signature defaults. The checks
refuse what no single option's range can, as soon as the arguments show it.
"""

from __future__ import annotations

from typing import Any

from .schedulers import LAST_EPOCH, RunFacts, SchedulerSpec
from .spec import opt

_FN = "optim_registry.schedule_functions"


def _check_restarts(kwargs: dict[str, Any], run: RunFacts) -> None:
    from .schedule_functions import resolve_cycle_warmup

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
_FRACTION = {"low": 0, "high": 1}

RECORDS = (
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
